"""Loopback ports for the processes the quick start and the tests start."""

import socket


def free_port() -> int:
    """A port free right now; a process binding it later may still lose a race, so callers retry."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
