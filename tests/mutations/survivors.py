"""``python tests/mutations/survivors.py SESSION.sqlite``: the mutants of a
cosmic-ray session that no test killed, one line each (``file:line: old -> new``),
sorted by line, for docs/MUTATION.md."""

from __future__ import annotations

import sqlite3
import sys


def changed_lines(diff: str) -> tuple[str, str]:
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(removed), " / ".join(added)


def main() -> None:
    session = sqlite3.connect(sys.argv[1])
    rows = session.execute(
        "SELECT s.module_path, s.start_pos_row, s.operator_name, r.diff, r.test_outcome, r.worker_outcome "
        "FROM mutation_specs s JOIN work_results r ON r.job_id = s.job_id "
        "WHERE r.test_outcome = 'SURVIVED' OR r.worker_outcome != 'NORMAL' ORDER BY s.module_path, s.start_pos_row")
    total = session.execute("SELECT count(*) FROM work_items").fetchone()[0]
    done = session.execute("SELECT count(*) FROM work_results").fetchone()[0]
    survivors = 0
    for path, row, operator, diff, test_outcome, worker_outcome in rows:
        old, new = changed_lines(diff or "")
        outcome = "" if worker_outcome == "NORMAL" else f" [{worker_outcome}]"
        print(f"{path}:{row}: {old}  ->  {new}  ({operator.rsplit('/', 1)[-1]}){outcome}")
        survivors += 1
    print(f"# {survivors} survivors of {done} mutants run ({total} in the session)")


if __name__ == "__main__":
    main()
