"""The repository stands on its own: no tracked file reads or links a path outside it,
every relative link of its Markdown resolves to one of its files, and the data the
tests read is in it."""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Each pattern is written so that it does not match its own source line.
OUTSIDE_PATTERNS = [
    (re.compile(r"\.\./+shared\b"), "a path into shared/ beside the repository"),
    (re.compile(r"\bshared/+(?:contract|seeds|hooks|DESIGN\.md)\b"), "a path into shared/ beside the repository"),
    (re.compile(r"""parent\s*/\s*["']shared\b"""), "a path into shared/ beside the repository"),
    (re.compile(r"(?<![\w.~-])/wor[k]/"), "an absolute path under /work"),
]
PARENT_STEPS = re.compile(r"(?<![\w.])(?:\.\./)+[\w.\-/]*")
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SKIPPED_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis", "tidings-demo"}


def escapes_root(relative_dir: str, reference: str) -> bool:
    """Whether ``reference``, read from the folder ``relative_dir`` of the repository, leads out of it."""
    joined = posixpath.normpath(posixpath.join(relative_dir or ".", reference))
    return joined == ".." or joined.startswith("../")


def with_folders(files: set[str]) -> set[str]:
    """The files and every folder that holds one."""
    paths = set(files)
    for name in files:
        while name := posixpath.dirname(name):
            paths.add(name)
    return paths


def outside_references(relative_path: str, text: str, paths: set[str]) -> list[tuple[int, str]]:
    """(line number, reason) for each line of a file that names a path outside the repository:
    a known outside place, or a ``../`` path that leads out of it or to none of its ``paths``."""
    folder = posixpath.dirname(relative_path)
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, reason in OUTSIDE_PATTERNS:
            if pattern.search(line):
                found.append((number, f"{reason}: {line.strip()}"))
        for step in PARENT_STEPS.finditer(line):
            reference = step.group(0).rstrip(".,:;")
            if escapes_root(folder, reference):
                found.append((number, f"'{reference}' leads out of the repository: {line.strip()}"))
            elif posixpath.normpath(posixpath.join(folder or ".", reference)) not in paths | {"."}:
                found.append((number, f"'{reference}' names no file of the repository: {line.strip()}"))
    return list(dict.fromkeys(found))  # two patterns may name one line for one reason


def broken_markdown_links(relative_path: str, text: str, files: set[str]) -> list[tuple[int, str]]:
    """(line number, target) for each relative link of a Markdown file that is not a file or folder of the repository."""
    folder = posixpath.dirname(relative_path)
    paths = with_folders(files)
    broken = []
    for number, line in enumerate(text.splitlines(), start=1):
        for link in MARKDOWN_LINK.finditer(line):
            target = link.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue  # a URL, or an anchor of the same page
            path = target.split("#", 1)[0]
            joined = posixpath.normpath(posixpath.join(folder or ".", path))
            if escapes_root(folder, path) or joined not in paths:
                broken.append((number, target))
    return broken


def repository_files() -> list[str]:
    """The files git tracks or would (``git ls-files``: ignored ones left out), or every file of
    the tree when it is not a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True, timeout=60)
        names = [name for name in listed.stdout.decode().split("\0") if name]
        if names:
            return sorted({name for name in names if (ROOT / name).is_file()})  # deleted, not yet staged: gone
    except (OSError, subprocess.SubprocessError):
        pass
    names = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        names += [os.path.relpath(os.path.join(folder, f), ROOT).replace(os.sep, "/") for f in files]
    return names


def read_text(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # images and other binary files name no path


# ---------------------------------------------------------------- the detectors themselves

PATHS_OF_AN_EXAMPLE = with_folders({"README.md", "docs/CONTRACT.md", "docs/CONTRACT-MAP.md",
                                    "tests/fixtures/message_created.seed.txt", "tests/conftest.py"})
# The examples below are put together so that this file's own lines hold none of them.
UP, WORK, SHARED = "." + "./", "/wo" + "rk/", "sha" + "red"


@pytest.mark.parametrize("path, line", [
    ("tests/conftest.py", f'SHARED = ROOT.parent / "{SHARED}"'),
    ("README.md", f"The wire contract is [CONTRACT.md]({UP}{SHARED}/contract/CONTRACT.md)"),
    ("docs/CONTRACT-MAP.md", f"The wire contract (`CONTRACT.md`, beside this repository in `{SHARED}/contract/`)"),
    ("docs/CONTRACT.md", f"The system in `{UP}seeds/message_created.txt` is"),
    ("bench/run.py", f'DATA = "{WORK}{SHARED}/seeds"'),
    ("bench/run.py", f"open('{WORK}main/bench/sink.py')"),
    ("Makefile", f"\tpython {UP}tools/lint.py"),
    ("tests/deep/x.py", f'path = "{UP}{UP}{UP}outside.json"'),
])
def test_a_path_outside_the_repository_is_found(path, line):
    found = outside_references(path, "first line\n" + line + "\nlast line\n", PATHS_OF_AN_EXAMPLE)
    assert found and all(number == 2 for number, _ in found), found


@pytest.mark.parametrize("path, line", [
    ("docs/CONTRACT-MAP.md", "The wire contract ([CONTRACT.md](CONTRACT.md)) is"),
    ("docs/CONTRACT.md", f"[the seed]({UP}tests/fixtures/message_created.seed.txt), see {UP}README.md."),
    ("tests/browser/conftest.py", 'CHROMIUM = Path("/usr/bin/chromium")'),
    (".ci/run", 'cd "$(dirname "$0")/.."'),
    ("src/tidings/x.py", "# the lease is shared by the workers"),
    ("README.md", "see https://example.com/work/guide and the ... / ... of it"),
])
def test_a_path_inside_the_repository_or_of_the_system_is_not_reported(path, line):
    assert outside_references(path, line, PATHS_OF_AN_EXAMPLE) == []


def test_a_markdown_link_to_a_missing_or_outside_file_is_found():
    files = {"README.md", "docs/CONTRACT.md", "docs/screenshots/inbox.png"}
    outside = f"{UP}{SHARED}/contract/CONTRACT.md"
    text = ("[ok](docs/CONTRACT.md) ![ok](docs/screenshots/inbox.png) [ok](docs/CONTRACT.md#signature)\n"
            "[web](https://example.com/x) [anchor](#quick-start) [folder](docs/screenshots)\n"
            "[gone](docs/GONE.md)\n"
            f"[out]({outside})\n")
    assert broken_markdown_links("README.md", text, files) == [(3, "docs/GONE.md"), (4, outside)]
    assert broken_markdown_links("docs/CONTRACT.md", f"[up]({UP}README.md) [here](CONTRACT.md)", files) == []


# ---------------------------------------------------------------- the repository


def test_no_file_of_the_repository_reads_or_links_a_path_outside_it():
    names = repository_files()
    assert "tests/conftest.py" in names and "README.md" in names, names[:20]
    paths = with_folders(set(names))
    found = []
    for name in names:
        text = read_text(name)
        if text is not None:
            found += [f"{name}:{number}: {reason}" for number, reason in outside_references(name, text, paths)]
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_every_relative_link_of_the_markdown_files_resolves_to_a_file_of_the_repository():
    names = repository_files()
    files = set(names)
    markdown = [name for name in names if name.endswith(".md")]
    assert "docs/CONTRACT.md" in markdown and "README.md" in markdown
    broken = []
    for name in markdown:
        broken += [f"{name}:{number}: {target}" for number, target in broken_markdown_links(name, read_text(name), files)]
    assert not broken, "links to no file of the repository:\n" + "\n".join(broken)


def test_the_seeds_example_fixture_is_the_json_the_seed_page_shows():
    page = (FIXTURES / "message_created.seed.txt").read_text()
    shown, _ = json.JSONDecoder().raw_decode(page[page.index("{"):])
    assert json.loads((FIXTURES / "message_created.example.json").read_bytes()) == shown
    assert shown["type"] == "message_created"
