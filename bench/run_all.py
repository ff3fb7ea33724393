"""``make bench``: every benchmark, one after the other, then their last lines.

Each benchmark prints its own figures and a baseline measured in the same
run; this only runs them and gathers the closing JSON line of each, which
must name the client that made the load (``"client"``). ``make bench``
installs the tools they drive first (``scripts/install-bench-tools.sh``).
``--db postgresql://...`` runs the ones that take a database on PostgreSQL.
Each benchmark gets at most ``--timeout`` seconds (20 minutes by default: on
two cores the longest, ordering, takes about 8); one that runs over is stopped
with the processes it started, and counts as failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
    ("e2e", ["e2e.py", "--duration", "5"]),  # short: 100 messages at 20/s (the figures: --rate 500)
]


def last_json_line(output: str) -> dict | None:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def run_bounded(command: list[str], timeout: float) -> tuple[int | None, str, str]:
    """(exit code or None when stopped, stdout, stderr) of a benchmark given at most ``timeout`` seconds."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its servers and sinks share its process group
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return None, stdout, stderr + f"\nstopped after {timeout:.0f} s (--timeout)\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", help="a PostgreSQL URL for the benchmarks that take --db")
    parser.add_argument("--only", nargs="*", help="names of the benchmarks to run")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds each benchmark may take at most")
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
        returncode, stdout, stderr = run_bounded(full, args.timeout)
        print(stdout[-3000:], end="", flush=True)
        print(f"({name} took {time.monotonic() - started:.0f} s)", flush=True)
        result = last_json_line(stdout)
        if returncode != 0 or result is None or not result.get("client"):
            failed.append(name)
            print(stderr[-3000:], file=sys.stderr)
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
