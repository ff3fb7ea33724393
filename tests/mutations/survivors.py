"""The mutants of a cosmic-ray session that no test killed (docs/MUTATION.md).

    python tests/mutations/survivors.py SESSION.sqlite
        one line each, ``file:line: old -> new (operator)``, sorted by line

    python tests/mutations/survivors.py SESSION.sqlite --rerun CONFIG.toml
        applies each survivor again (``cosmic-ray apply``) in the current directory, a
        scratch copy, runs CONFIG's test command, undoes it, and says which
        survive the tests as they are now (after tests were added to kill them)
"""

from __future__ import annotations

import argparse
import shlex
import sqlite3
import subprocess
import tomllib

from skip_annotations import annotation_spans  # this script's folder is on sys.path


def changed_lines(diff: str) -> tuple[str, str]:
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(removed), " / ".join(added)


def survivors(session_path: str) -> list[tuple[str, int, str, str]]:
    """The survivors, without those inside annotations (equivalent: see skip_annotations.py)."""
    session = sqlite3.connect(session_path)
    rows = session.execute(
        "SELECT s.module_path, s.start_pos_row, s.start_pos_col, s.end_pos_row, s.end_pos_col, s.operator_name, "
        "s.occurrence, r.diff FROM mutation_specs s JOIN work_results r ON r.job_id = s.job_id "
        "WHERE (r.test_outcome = 'SURVIVED' OR r.worker_outcome NOT IN ('NORMAL', 'SKIPPED')) "
        "ORDER BY s.module_path, s.start_pos_row")
    found, spans = [], {}
    for path, row, col, end_row, end_col, operator, occurrence, diff in rows:
        if path not in spans:
            with open(path) as module:
                spans[path] = annotation_spans(module.read())
        if not any(low <= (row, col) and (end_row, end_col) <= high for low, high in spans[path]):
            found.append((path, row, operator, diff, occurrence))
    return found


def describe(path: str, row: int, operator: str, diff: str, _occurrence: int = 0) -> str:
    old, new = changed_lines(diff or "")
    return f"{path}:{row}: {old}  ->  {new}  ({operator.rsplit('/', 1)[-1]})"


def rerun(found: list[tuple[str, int, str, str]], config_path: str) -> int:
    with open(config_path, "rb") as config:
        command = shlex.split(tomllib.load(config)["cosmic-ray"]["test-command"])
    surviving = 0
    for path, row, operator, diff, occurrence in found:
        with open(path, "rb") as module:
            original = module.read()
        # cosmic-ray's own ``apply`` makes the mutant (its stored diffs do not always apply with patch).
        subprocess.run(["cosmic-ray", "apply", path, operator, str(occurrence)], check=True)
        try:
            code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        finally:
            with open(path, "wb") as module:
                module.write(original)
        verdict = {0: "SURVIVED", 1: "killed"}.get(code, f"error {code}")
        surviving += verdict != "killed"
        print(f"{verdict:9} {describe(path, row, operator, diff)}", flush=True)
    print(f"# {surviving} of {len(found)} earlier survivors survive the tests as they are now")
    return surviving


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("session")
    parser.add_argument("--rerun", metavar="CONFIG", help="the session's cosmic-ray configuration")
    options = parser.parse_args()
    found = survivors(options.session)
    if options.rerun:
        rerun(found, options.rerun)
        return
    for mutant in found:
        print(describe(*mutant))
    print(f"# {len(found)} survivors")


if __name__ == "__main__":
    main()
