"""``python -m tests.serve_on_fd FD ARGUMENTS...``: runs ``tidings ARGUMENTS``
with every uvicorn server it starts serving on the inherited listening
socket ``FD`` rather than binding ``--host``/``--port`` itself (see
``tests.loopback.command_on_socket``); uvicorn's worker processes get that
socket as they would get one it bound."""

from __future__ import annotations

import socket
import sys

import uvicorn


def main() -> None:
    listening = socket.socket(fileno=int(sys.argv[1]))  # family and type read from the descriptor
    serve = uvicorn.Server.serve

    async def serve_on_inherited_socket(self, sockets=None):
        await serve(self, sockets=sockets or [listening])

    uvicorn.Server.serve = serve_on_inherited_socket  # one process
    uvicorn.Config.bind_socket = lambda self: listening  # a supervisor of worker processes
    sys.argv = ["tidings", *sys.argv[2:]]
    from tidings.cli import main as tidings

    tidings()


if __name__ == "__main__":
    main()
