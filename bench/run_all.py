"""``make bench``: every benchmark, one after the other, then their last lines.

Each benchmark prints its own figures and a baseline measured in the same
run; this only runs them and gathers the closing JSON line of each, which
must name the client that made the load (``"client"``). ``make bench``
installs the tools they drive first (``scripts/install-bench-tools.sh``).
``--db postgresql://...`` runs the ones that take a database on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = [
    ("dispatch", ["dispatch.py"]),
    ("dispatch-isolation", ["dispatch.py", "--isolation"]),
    ("ordering", ["ordering.py"]),
    ("ingest", ["ingest.py"]),
    ("receive", ["receive.py"]),
]


def last_json_line(output: str) -> dict | None:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", help="a PostgreSQL URL for the benchmarks that take --db")
    parser.add_argument("--only", nargs="*", help="names of the benchmarks to run")
    args = parser.parse_args()
    results, failed = [], []
    for name, command in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        if not (HERE / command[0]).exists():
            continue
        full = [sys.executable, str(HERE / command[0]), *command[1:], *(["--db", args.db] if args.db else [])]
        print(f"== {name}: {' '.join(full[1:])}", flush=True)
        started = time.monotonic()
        run = subprocess.run(full, capture_output=True, text=True)
        print(run.stdout[-3000:], end="", flush=True)
        print(f"({name} took {time.monotonic() - started:.0f} s)", flush=True)
        result = last_json_line(run.stdout)
        if run.returncode != 0 or result is None or not result.get("client"):
            failed.append(name)
            print(run.stderr[-3000:], file=sys.stderr)
            if result is not None and not result.get("client"):
                print(f"{name}: its JSON line names no client", file=sys.stderr)
        else:
            results.append(result)
    print("\n== results")
    for result in results:
        print(json.dumps(result))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
