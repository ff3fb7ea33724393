"""One process per database runs the background work (projection, handlers).

Several receiver processes may share a database (``--workers``, or several
machines on PostgreSQL); each of them takes requests, but only the holder of
this lease reads the log after the acknowledgement, so that handlers are not
run twice by design. The lease is a lock the operating system or the
database drops when its holder dies: a ``flock`` on a file beside the SQLite
database, a session-level advisory lock on PostgreSQL. Another process takes
it over at its next try.
"""

from __future__ import annotations

import fcntl
import os

from sqlalchemy.engine import make_url

from tidings.store.engine import is_sqlite, sync_url

_LEASE_KEY = 0x7469_6469_6E68


class BackgroundLease:
    def __init__(self, url: str) -> None:
        self.url = url
        self._file: int | None = None
        self._connection = None

    @property
    def held(self) -> bool:
        return self._file is not None or self._connection is not None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        if is_sqlite(self.url):
            return self._try_file_lock()
        return self._try_advisory_lock()

    def _try_file_lock(self) -> bool:
        database = make_url(self.url).database or ""
        if not database or database == ":memory:":
            self._file = -1  # one process only: nobody to share with
            return True
        descriptor = os.open(f"{database}.background-lease", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._file = descriptor
        return True

    def _try_advisory_lock(self) -> bool:
        import psycopg

        url = make_url(sync_url(self.url)).set(drivername="postgresql").render_as_string(hide_password=False)
        connection = psycopg.connect(url, autocommit=True)
        acquired = connection.execute("SELECT pg_try_advisory_lock(%s)", (_LEASE_KEY,)).fetchone()[0]
        if not acquired:
            connection.close()
            return False
        self._connection = connection
        return True

    def release(self) -> None:
        if self._file is not None:
            if self._file >= 0:
                os.close(self._file)  # closing drops the flock
            self._file = None
        if self._connection is not None:
            self._connection.close()  # ending the session drops the advisory lock
            self._connection = None
