"""bench/ingest.py runs and reports what it measured (a short run; the figures themselves are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "ingest.py"


def test_the_ingest_benchmark_reports_one_json_line():
    result = subprocess.run([sys.executable, str(BENCH), "--duration", "0.5", "--concurrency", "8"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bench"] == "ingest" and report["store"] == "sqlite"
    assert report["rate"] > 0 and report["baseline_rate"] > 0
    assert report["ratio"] == round(report["rate"] / report["baseline_rate"], 3)
    assert report["errors"] == {}
    stored = report["stored"]
    # Warm-up and measured messages: each stored once, with its event and one delivery.
    assert stored["messages"] == stored["events"] == stored["deliveries"] >= report["requests"] > 0
