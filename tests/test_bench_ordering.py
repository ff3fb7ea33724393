"""bench/ordering.py runs both modes and reports what it measured (a short
run on SQLite; the figures themselves are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "ordering.py"


def test_the_ordering_benchmark_delivers_everything_in_both_modes():
    result = subprocess.run([sys.executable, str(BENCH), "--pending", "600", "--conversations", "20",
                             "--endpoints", "2", "--rounds", "1"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bench"] == "ordering" and report["store"] == "sqlite"
    assert report["delivered"] == report["pending"] == 600
    assert len(report["rates"]) == 1 and len(report["baseline_rates"]) == 2
    assert all(rate > 0 for rate in report["rates"] + report["baseline_rates"])
    assert report["ratio"] == round(report["rate"] / report["baseline_rate"], 3)
    # every run, with ordering or without, delivered all it was given
    assert result.stderr.count("(600 delivered") == 3, result.stderr[-2000:]
