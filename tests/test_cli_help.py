"""Every command says what it does in one line; a wrong argument or an
unreachable database gives one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
from typer.main import get_command

from tests.cli_support import run_tidings
from tidings.cli import app

UNREACHABLE = "postgresql://nobody@127.0.0.1:9/nothing"


def leaf_commands():
    def walk(command, path):
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                yield from walk(child, [*path, name])
        else:
            yield path, command
    return list(walk(get_command(app), []))


COMMANDS = leaf_commands()
WITH_DB = [path for path, command in COMMANDS if any("--db" in p.opts for p in command.params)]
# the arguments each database command needs besides --db
REQUIRED = {
    "org create": ["Acme"], "provider create": ["Agency", "--orgs", "1"], "business create": ["--org", "1", "--name", "B"],
    "channel create": ["--org", "1", "--name", "C"], "worker": ["--signing-key", "whsk_" + "A" * 43 + "="],
    "receive": ["--public-key", "whpk_" + "A" * 43 + "=", "--org-id", "1", "--port", "9"],
    "receiver quarantine reprocess": ["--all"],
    "receiver dead replay": ["--all"],
}


def test_the_top_level_help_lists_every_command_with_a_line():
    result = run_tidings("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for path, _ in COMMANDS:
        assert path[0] in text


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_each_command_has_a_one_line_description(path):
    command = dict((tuple(p), c) for p, c in COMMANDS)[tuple(path)]
    assert command.help and command.help.strip().splitlines()[0].endswith(".")
    result = run_tidings(*path, "--help")
    assert result.returncode == 0
    assert command.help.strip().splitlines()[0][:40] in " ".join(result.stdout.decode().split())


@pytest.mark.parametrize("path", WITH_DB, ids=[" ".join(p) for p in WITH_DB])
def test_an_unreachable_database_is_one_line_and_a_non_zero_exit(path):
    extra = REQUIRED.get(" ".join(path), [])
    result = run_tidings(*path, "--db", UNREACHABLE, *extra, timeout=60)
    err = result.stderr.decode()
    assert result.returncode != 0, (result.stdout, err)
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err


@pytest.mark.parametrize("args", [["serve", "--port", "notaport"], ["event", "sample", "--count", "-3"],
                                  ["org", "create"], ["nonsense"], ["simulate", "--api", "x"]])
def test_a_wrong_argument_is_one_line_and_a_non_zero_exit(args):
    result = run_tidings(*args)
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err
