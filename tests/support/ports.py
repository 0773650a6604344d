"""A free TCP port on 127.0.0.1 for a server a test or benchmark starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port no one listens on now: the OS picks it (bind to port 0). Another process could take it before
    the caller's server binds it; the servers started with it fail loudly then, never silently."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
