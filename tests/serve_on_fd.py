"""``python -m tests.serve_on_fd FD ARGUMENTS...``: runs ``tidings ARGUMENTS``
with every uvicorn server it starts serving on the inherited listening
socket ``FD`` rather than binding ``--host``/``--port`` itself (see
``tests.loopback.command_on_socket``); multi-worker uvicorn shares it the same way."""

from __future__ import annotations

import sys

import uvicorn


def main() -> None:
    descriptor = int(sys.argv[1])
    original = uvicorn.Config.__init__

    def on_descriptor(self, app, *args, **kwargs):
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        original(self, app, *args, fd=descriptor, **kwargs)

    uvicorn.Config.__init__ = on_descriptor
    sys.argv = ["tidings", *sys.argv[2:]]
    from tidings.cli import main as tidings

    tidings()


if __name__ == "__main__":
    main()
