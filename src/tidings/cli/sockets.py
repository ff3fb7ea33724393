"""Listening sockets handed to a command by the process that started it."""

from __future__ import annotations

import socket

from tidings.cli.errors import CliError


def inherited_socket(fd: int) -> socket.socket:
    """The TCP socket open on file descriptor ``fd`` (``--fd``: a supervisor, systemd
    socket activation or a test binds it, and the server serves on it as given)."""
    try:
        sock = socket.socket(fileno=fd)  # family and type read from the descriptor
    except OSError as exc:
        raise CliError(f"--fd {fd} is not an open socket: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise CliError(f"--fd {fd} is not a TCP socket")
    return sock
