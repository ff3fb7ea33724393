"""Running the real ``tidings`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TIDINGS = [str(Path(sys.executable).with_name("tidings"))]


def run_tidings(*args: str, input: bytes | None = None, timeout: float = 60, env: dict | None = None,
                cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TIDINGS, *args], input=input, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)
