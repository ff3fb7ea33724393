"""``python -m tests.lease_holder DB_URL``: a process that tries for the
receiver's background lease until it holds it, saying ``refused`` after each
try that failed and ``held`` once it holds it; it then holds it until its
standard input closes (and releases it) or it is killed."""

from __future__ import annotations

import sys
import time

from tidings.receiver.lease import BackgroundLease

TRY_EVERY = 0.02  # seconds


def main() -> None:
    lease = BackgroundLease(sys.argv[1])
    while not lease.try_acquire():
        print("refused", flush=True)
        time.sleep(TRY_EVERY)
    print("held", flush=True)
    sys.stdin.read()
    lease.release()
    print("released", flush=True)


if __name__ == "__main__":
    main()
