"""Hand-written mutations of the delivery engine, each with the tests that must catch it.

    python scripts/mutations.py                  # every mutation
    python scripts/mutations.py claim-id-order   # some of them, by name
    python scripts/mutations.py --list           # names, what each breaks, and its tests

For each mutation: copy ``src/`` to a temporary directory, apply the
mutation there (never to the working tree), run its tests against the copy
(``PYTHONPATH`` puts the copy before the editable install), and report
``killed`` only if pytest ran and a test failed. A mutation whose pattern is
found nowhere is an error, not a survivor: update its pattern.

Patterns are searched in every ``.py`` file under ``src/tidings``, not at a
fixed path, so that they keep working when a module moves; each names how
many times it must match in all. PostgreSQL must be reachable for the
mutations of PostgreSQL-only statements (``TIDINGS_REQUIRE_POSTGRES=1`` is set).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600  # seconds for one mutation's tests


@dataclass(frozen=True)
class Edit:
    """Replace ``pattern`` (a regular expression) by ``replacement``; it must match ``count`` times in all."""

    pattern: str
    replacement: str
    count: int = 1


@dataclass(frozen=True)
class Mutation:
    name: str
    breaks: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


CLAIM_TESTS = ("tests/test_claim.py::test_a_claim_takes_the_oldest_due_first_not_the_lowest_id",
               "tests/test_claim.py::test_a_claim_fills_its_limit_with_the_oldest_due")
LOCK_TESTS = ("tests/test_claim.py::test_postgresql_claim_skips_a_row_another_transaction_holds_locked",
              "tests/test_claim.py::test_postgresql_concurrent_claimers_take_disjoint_sets_without_waiting")
CIRCUIT_TESTS = ("tests/test_dispatcher_circuit.py",)
ISOLATION_TESTS = ("tests/test_dispatcher_isolation.py",)
LEASE_TESTS = ("tests/test_receiver_lease.py",)
WAKE_UP_TESTS = ("tests/test_wakeup.py",)
IDLE_PACE_TESTS = ("tests/test_dispatcher_isolation.py::test_a_burst_after_an_idle_spell_is_sent_not_handed_back",)
HAND_OFF_TESTS = ("tests/test_hand_off.py",)
SQLITE_WRITER_TESTS = ("tests/test_ingestion_sqlite.py",)

MUTATIONS = (
    Mutation(
        "claim-id-order", "the claim takes the lowest ids first instead of the oldest due",
        (Edit(r"ORDER BY next_attempt_at LIMIT :limit", "ORDER BY id LIMIT :limit"),
         Edit(r"ORDER BY next_attempt_at LIMIT \?", "ORDER BY id LIMIT ?")),
        CLAIM_TESTS),
    Mutation(
        "claim-no-skip-locked", "PostgreSQL's claim locks its rows but waits for rows others hold (no SKIP LOCKED)",
        (Edit(r"(\n\s*)FOR UPDATE SKIP LOCKED\)", r"\1FOR UPDATE)"),),
        LOCK_TESTS),
    Mutation(
        "claim-no-for-update", "PostgreSQL's claim neither locks nor skips (no FOR UPDATE SKIP LOCKED)",
        (Edit(r"(\n\s*)FOR UPDATE SKIP LOCKED\)", r"\1)"),),
        LOCK_TESTS),
    Mutation(
        "circuit-never-consulted", "the dispatcher posts whatever the circuit breaker says",
        (Edit(r"if \(breaker\.state is _CLOSED and not breaker\.failures\) or breaker\.allows\(now\):", "if True:"),),
        CIRCUIT_TESTS),
    Mutation(
        "circuit-failures-not-recorded", "the dispatcher never tells the breaker about a failure",
        (Edit(r"breaker\.record_failure\(time\.time\(\)\)", "pass"),),
        CIRCUIT_TESTS),
    Mutation(
        "circuit-never-opens", "the breaker counts failures and never opens",
        (Edit(r"self\.failures >= self\.policy\.failure_threshold", "False"),),
        CIRCUIT_TESTS + ("tests/test_circuit.py",)),
    Mutation(
        "circuit-no-trial", "an open circuit stays open after its cooldown (no half-open trial)",
        (Edit(r"if now < self\.opened_until:", "if True:"),),
        CIRCUIT_TESTS + ("tests/test_circuit.py",)),
    Mutation(
        "endpoint-no-limit", "no per-endpoint limit: one endpoint may take every connection",
        (Edit(r"self\.per_endpoint = max\(1, min\(self\.settings\.max_per_endpoint, self\.concurrency\)\)",
              "self.per_endpoint = self.concurrency"),),
        ISOLATION_TESTS),
    Mutation(
        "endpoint-no-queue-budget", "no queue budget: one endpoint's queue may hold everything claimed",
        (Edit(r"(def _queue_limit\(self[^\n]*\n)", "\\1        return 1_000_000_000\n"),),
        ISOLATION_TESTS),
    Mutation(
        "lease-two-holders", "the lease is granted whether or not another process holds it",
        (Edit(r"if not acquired:", "if False:"),
         Edit(r"fcntl\.flock\(descriptor, fcntl\.LOCK_EX \| fcntl\.LOCK_NB\)", "pass")),
        LEASE_TESTS),
    Mutation(
        "lease-never-released", "a holder that releases the lease keeps it all the same",
        (Edit(r"self\._connection\.close\(\)(\s*# ending the session)", r"type(self).kept = self._connection\1"),
         Edit(r"os\.close\(self\._file\)(\s*# closing drops the flock)", r"type(self).kept_file = self._file\1")),
        LEASE_TESTS),
    Mutation(
        "wake-up-mark-kept", "a pooled connection's 'deliveries written' mark outlives its transaction",
        (Edit(r"\n\s*watch\(conn\.engine\)  # so that the transaction's end clears the mark", "\n    pass  #"),),
        WAKE_UP_TESTS),
    Mutation(
        "endpoint-pace-kept-when-idle", "an endpoint keeps the pace it measured before an idle spell",
        (Edit(r"endpoint\.went_idle\(\)", "pass"),),
        IDLE_PACE_TESTS),
    Mutation(
        "hand-off-never-wakes", "what the ingestion had no room to claim waits for the dispatcher's poll",
        (Edit(r"if len\(claim\.claimed\) < room:", "if True:"),),
        HAND_OFF_TESTS),
    Mutation(
        "hand-off-none", "the ingestion never claims for the dispatcher of its process",
        (Edit(r"room = hand_off\.room_to_hand_off\(\) if hand_off is not None else 0", "room = 0"),),
        HAND_OFF_TESTS),
    Mutation(
        "sqlite-writer-first-chunk-only", "the SQLite writer inserts the first statement's rows of a batch and drops the rest",
        (Edit(r"for start in range\(0, len\(rows\), per_statement\):",
              "for start in range(0, min(len(rows), per_statement), per_statement):"),),
        SQLITE_WRITER_TESTS),
    Mutation(
        "sqlite-writer-unfinished-wrong", "the SQLite writer sees a conversation's ordered deliveries as finished",
        (Edit(r"AND deliveries\.status IN \(\{', '\.join\(repr\(status\) for status in UNFINISHED\)\}\)",
              "AND deliveries.status IN ('delivered')"),),
        SQLITE_WRITER_TESTS),
    Mutation(
        "sqlite-writer-date-unconverted", "the SQLite writer binds a conversation's first message date as sqlite3 would",
        (Edit(r'"new_first_date": sqlite_datetime\(\s*changes\[key\]\["new_first_date"\]\)',
              '"new_first_date": changes[key]["new_first_date"]'),),
        SQLITE_WRITER_TESTS),
    Mutation(
        "sqlite-writer-pair-scan", "the SQLite writer looks pairs up by scanning the table, not through its index",
        (Edit(r"\"ON \{table\}\.custom_channel_id = json_extract", "\"ON {table}.custom_channel_id || '' = json_extract"),
         Edit(r"\"AND \{table\}\.\{second\} = json_extract", "\"AND {table}.{second} || '' = json_extract")),
        ("tests/test_query_plans.py",)),
    Mutation(
        "event-document-field-swapped", "message_created written from rows carries is_solved as is_read",
        (Edit(r'"is_read": conversation\["is_read"\],', '"is_read": conversation["is_solved"],'),),
        ("tests/test_event_documents.py",)),
    Mutation(
        "replies-settle-wrong-channel-on-sqlite", "on SQLite a delivered reply settles only on read-only channels",
        (Edit(r"AND c\.is_readonly = 0\"\)", "AND c.is_readonly = 1\")"),),
        ("tests/test_platform_api_replies.py::test_settling_a_custom_channel_reply_happens_exactly_once",)),
    Mutation(
        "no-claim-after-retries", "a cycle that wrote retries or hand-backs is never followed by a claim",
        (Edit(r"return bool\(releases or retries or unapplied or wrote_deliveries\)", "return False"),),
        ("tests/test_dispatcher_transports.py",)),
)


def apply(mutation: Mutation, src: Path) -> list[str]:
    """Apply ``mutation`` to the copy under ``src``; returns the files it changed."""
    files = sorted((src / "tidings").rglob("*.py"))
    texts = {path: path.read_text() for path in files}
    changed = set()
    for edit in mutation.edits:
        found = sum(len(re.findall(edit.pattern, text)) for text in texts.values())
        if found != edit.count:
            raise LookupError(f"{mutation.name}: {edit.pattern!r} matches {found} times in src/tidings, "
                              f"not {edit.count}: update the pattern")
        for path, text in texts.items():
            new = re.sub(edit.pattern, edit.replacement, text)
            if new != text:
                texts[path] = new
                changed.add(path)
    for path in changed:
        path.write_text(texts[path])
    return [str(path.relative_to(src)) for path in sorted(changed)]


def environment(src: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(src), str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TIDINGS_REQUIRE_POSTGRES": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def copy_source(into: Path) -> Path:
    src = into / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return src


def check_imports_from(src: Path) -> None:
    """The tests must import the copy, or a survivor would mean nothing."""
    found = subprocess.run([sys.executable, "-c", "import tidings; print(tidings.__file__)"], cwd=ROOT,
                           env=environment(src), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).is_relative_to(src):
        raise RuntimeError(f"the tests would import {found}, not the mutated copy under {src}")


def run_tests(tests: tuple[str, ...], src: Path, *, every_test: bool = False) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *([] if every_test else ["-x"]), *tests]
    try:
        done = subprocess.run(command, cwd=ROOT, env=environment(src), capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return -1, f"no result within {TIMEOUT} s"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-300:]


def verdict(returncode: int) -> str:
    # pytest: 0 all passed, 1 some test failed; anything else (errors, no tests, usage) proves nothing.
    return {0: "SURVIVED", 1: "killed"}.get(returncode, "error")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unmutated copy")
    parser.add_argument("--every-test", action="store_true",
                        help="run every test of a mutation rather than stop at the first failure (shows which kill it)")
    options = parser.parse_args()
    known = {mutation.name: mutation for mutation in MUTATIONS}
    if options.list:
        for mutation in MUTATIONS:
            print(f"{mutation.name}: {mutation.breaks}\n    " + "\n    ".join(mutation.tests))
        return 0
    unknown = [name for name in options.names if name not in known]
    if unknown:
        parser.error(f"no mutation {', '.join(unknown)}; one of: {', '.join(known)}")
    chosen = [known[name] for name in options.names] or list(MUTATIONS)

    failures = 0
    with tempfile.TemporaryDirectory(prefix="tidings-mutations-") as scratch:
        if not options.no_baseline:
            src = copy_source(Path(scratch) / "baseline")
            check_imports_from(src)
            tests = tuple(dict.fromkeys(test for mutation in chosen for test in mutation.tests))
            code, summary = run_tests(tests, src)
            print(f"baseline (no mutation): {summary}", flush=True)
            if code != 0:
                print("the tests fail without a mutation: fix them first")
                return 2
        for mutation in chosen:
            src = copy_source(Path(scratch) / mutation.name)
            try:
                changed = apply(mutation, src)
            except LookupError as exc:
                print(f"{mutation.name:30} error   {exc}", flush=True)
                failures += 1
                continue
            check_imports_from(src)
            started = time.monotonic()
            code, summary = run_tests(mutation.tests, src, every_test=options.every_test)
            result = verdict(code)
            failures += result != "killed"
            print(f"{mutation.name:30} {result:8} {time.monotonic() - started:5.1f} s  {', '.join(changed)}: "
                  f"{summary}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
