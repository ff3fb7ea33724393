"""Packaging as a Python user expects: ``python -m build`` makes a wheel and an sdist
holding the templates, static files and migrations; one version number, shown by
``tidings --version``; and the wheel, installed into a fresh virtual environment
outside the repository, runs ``tidings demo --duration 10`` to its end while its
pages answer."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import zipfile
from importlib.metadata import version as installed_version
from pathlib import Path

import httpx
import pytest

import tidings

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "tidings"
TIDINGS = str(Path(sys.executable).with_name("tidings"))

pytestmark = pytest.mark.timeout(600)


def package_data_files() -> list[str]:
    """What the package reads at run time besides its modules, as paths inside the package."""
    names = []
    for pattern in ["web/templates/*.html", "web/static/*", "store/migrations/*.py", "store/migrations/*.mako",
                    "store/migrations/versions/*.py"]:
        names += [path.relative_to(PACKAGE.parent).as_posix() for path in PACKAGE.glob(pattern) if path.is_file()]
    return sorted(names)


def without_package_environment() -> dict[str, str]:
    """This process's environment, without what would let another Python find this checkout's packages."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """``python -m build``: the sdist, and the wheel built from it; (wheel, sdist)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=300, env=without_package_environment())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels, sdists = list(out.glob("tidings-*.whl")), list(out.glob("tidings-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return wheels[0], sdists[0]


# ---------------------------------------------------------------- one version number


def test_one_version_number_read_from_the_package_shown_by_the_command_and_in_the_changelog():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tidings.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", tidings.__version__)
    assert installed_version("tidings") == tidings.__version__
    shown = subprocess.run([TIDINGS, "--version"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"tidings {tidings.__version__}\n"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.MULTILINE)
    assert headings[:2] == ["Unreleased", tidings.__version__], headings


# ---------------------------------------------------------------- the wheel and the sdist


def test_the_wheel_and_the_sdist_hold_the_templates_static_files_and_migrations(built):
    wheel, sdist = built
    expected = package_data_files()
    assert any(name.startswith("tidings/web/templates/") for name in expected)
    assert any(name.startswith("tidings/web/static/") for name in expected)
    assert any(name.startswith("tidings/store/migrations/versions/") for name in expected)
    assert wheel.name == f"tidings-{tidings.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        metadata = archive.read(f"tidings-{tidings.__version__}.dist-info/METADATA").decode()
    assert [name for name in expected if name not in in_wheel] == []
    assert f"\nVersion: {tidings.__version__}\n" in metadata
    prefix = f"tidings-{tidings.__version__}/"
    with tarfile.open(sdist) as archive:
        in_sdist = {name.removeprefix(prefix) for name in archive.getnames()}
    assert [name for name in expected if f"src/{name}" not in in_sdist] == []
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "tests/fixtures/message_created.example.json"} <= in_sdist


def _lines_of(process: subprocess.Popen) -> queue.Queue:
    """The process's output lines, as they come, in a queue (None at its end)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_the_wheel_in_a_fresh_virtual_environment_runs_the_demo_to_its_end_and_its_pages_answer(built, tmp_path):
    wheel, _ = built
    env = without_package_environment()
    venv = tmp_path / "venv"
    assert not venv.resolve().is_relative_to(ROOT)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # This environment's pip installs into the new one (``--python``): quicker than bootstrapping a pip there.
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "--quiet", str(wheel)], capture_output=True, text=True, timeout=480,
                               env=env)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import tidings; print(tidings.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    shown = subprocess.run([str(venv / "bin" / "tidings"), "--version"], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env=env)
    assert shown.stdout == f"tidings {tidings.__version__}\n", shown.stdout + shown.stderr

    demo = subprocess.Popen([str(venv / "bin" / "tidings"), "demo", "--duration", "10", "--port", "0",
                             "--data-dir", str(tmp_path / "demo")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    output: list[str] = []
    try:
        lines = _lines_of(demo)
        dashboard = inbox = key = None
        deadline = time.monotonic() + 120
        while not (dashboard and inbox):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "the demo stopped before printing its URLs:\n" + "".join(output)
            output.append(line)
            if found := re.search(r"dashboard:\s+(\S+)\s+\(sign in with the API key (\S+)\)", line):
                dashboard, key = found.groups()
            if found := re.search(r"inbox:\s+(\S+)", line):
                inbox = found.group(1)
        # While it runs: the platform's dashboard (templates, static files, a database the migrations built)
        # and the receiver's inbox answer.
        origin = dashboard.rsplit("/dashboard", 1)[0]
        with httpx.Client(timeout=10) as client:
            form = client.get(f"{dashboard}/sign-in")
            assert form.status_code == 200 and 'name="api_key"' in form.text, form.text[:500]
            stylesheet = re.search(r'<link rel="stylesheet" href="([^"]+)"', form.text).group(1)
            css = client.get(origin + stylesheet)
            assert css.status_code == 200 and css.text == (PACKAGE / "web" / "static" / "tidings.css").read_text()
            configurations = client.post(f"{dashboard}/sign-in", data={"api_key": key}, headers={"Origin": origin},
                                         follow_redirects=True)
            assert configurations.status_code == 200, configurations.text[:500]
            assert str(configurations.url).endswith("/dashboard/configurations")
            assert "message_created" in configurations.text and "message_updated" in configurations.text
            listing = client.get(inbox, follow_redirects=True)  # the token URL signs in, then drops the token
            assert listing.status_code == 200 and "<html" in listing.text.lower(), listing.text[:500]
        # Then it runs to its end on its own and prints its summary.
        demo.wait(timeout=120)
        while (line := lines.get(timeout=10)) is not None:
            output.append(line)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(30)
    assert demo.returncode == 0, "".join(output)
    # Its closing summary line (how much traffic fits depends on how long its servers took to start).
    assert re.search(r"messages sent \d+\s+deliveries: delivered \d+",
                     [line for line in output if line.strip()][-1]), "".join(output)
