"""What ordered delivery costs: the dispatch benchmark with ordering on and
off, in the same run.

    python bench/ordering.py                   # SQLite, 100,000 pending over 10 endpoints and 1,000 conversations
    python bench/ordering.py --db postgresql://postgres@127.0.0.1:5432/test

Runs without ordering and with it, alternating (``--rounds`` runs with it,
each between two without: five runs by default), each write the same
deliveries over 1,000 conversations (100 per endpoint) to a fresh database
and deliver them all with one dispatcher, to the same local sink
(``bench/dispatch.py`` has the machinery). With ordering (``"conversation"``)
a conversation's deliveries go one at a time, the next promoted when the one
before it finishes; without (``"none"``) all are due at once. The last line
is JSON: ``rate`` the mean rate with ordering, ``baseline_rate`` the mean of
the runs without, and the dispatcher's CPU time per delivery of each. The
machine's speed drifts by 10 to 25 % from one minute to the next (the same
run without ordering, 140 to 185 us of CPU per delivery within one
benchmark): alternating several runs weighs that drift on both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dispatch  # noqa: E402  (the dispatch benchmark's sink, seeding and child runs)


def main() -> None:
    parser = argparse.ArgumentParser(description="Dispatcher throughput with ordering on and off.")
    parser.add_argument("--db", help="postgresql://... (a fresh database is created there); SQLite by default")
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=1_000, help="a multiple of --endpoints")
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--per-endpoint", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--attempt-timeout", type=float, default=10.0)
    parser.add_argument("--duration", type=float, help="stop each dispatcher run after this many seconds")
    parser.add_argument("--rounds", type=int, default=2, help="runs with ordering, each between two without")
    args = parser.parse_args()
    if args.conversations % args.endpoints:
        parser.error("--conversations must be a multiple of --endpoints (each conversation has one endpoint)")

    from tidings.contract.signing import generate_private_key, private_key_whsk

    key = private_key_whsk(generate_private_key())
    runs = []  # (ordering, result)
    load_before = dispatch._load_average()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as scratch_name:
        sink = dispatch.Sink(args.endpoints, None)
        try:
            # Without, with, without, ...: so that a change of the machine's speed weighs on both.
            for ordering in ["none"] + ["conversation", "none"] * max(1, args.rounds):
                args.ordering = ordering
                result, _, store = dispatch.dispatcher_run(args, sink.urls(), key, Path(scratch_name), sink)
                result["cpu_us"] = result["cpu_share"] * result["seconds"] / max(1, result["attempts"]) * 1e6
                runs.append((ordering, result))
                print(f"ordering {ordering}: {result['rate']:,.0f}/s ({result['delivered']:,} delivered, "
                      f"{result['cpu_us']:.0f} us of dispatcher CPU per delivery, "
                      f"{result['delivered'] / max(1, result['cycles']):.0f} per write cycle)", file=sys.stderr)
        finally:
            sink.stop()
    ordered = [result for ordering, result in runs if ordering == "conversation"]
    unordered = [result for ordering, result in runs if ordering == "none"]
    rate = sum(result["rate"] for result in ordered) / len(ordered)
    baseline = sum(result["rate"] for result in unordered) / len(unordered)
    cpu = sum(result["cpu_us"] for result in ordered) / len(ordered)
    baseline_cpu = sum(result["cpu_us"] for result in unordered) / len(unordered)
    print(json.dumps({
        "bench": "ordering", "store": store, "rate": round(rate, 1), "baseline_rate": round(baseline, 1),
        "ratio": round(rate / baseline, 3),
        "rates": [round(result["rate"], 1) for result in ordered],
        "baseline_rates": [round(result["rate"], 1) for result in unordered],
        "cpu_us_per_delivery": round(cpu, 1), "baseline_cpu_us_per_delivery": round(baseline_cpu, 1),
        "pending": args.pending, "conversations": args.conversations, "endpoints": args.endpoints,
        "delivered": min(result["delivered"] for result in ordered),
        "client": dispatch.client_names()["client"],
        "load_average": {"before": load_before, "after": dispatch._load_average()}}))


if __name__ == "__main__":
    main()
