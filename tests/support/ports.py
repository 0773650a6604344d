"""Free TCP ports on 127.0.0.1 for the servers a test or benchmark starts."""

from __future__ import annotations

import random
import socket
from pathlib import Path

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A port no one listens on now: the OS picks it (bind to port 0). Another process could take it before
    the caller's server binds it; the servers started with it fail loudly then, never silently."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to bind(0) and to a connect() (``ip_local_port_range``)."""
    try:
        low, high = (int(x) for x in PORT_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def bindable(port: int) -> bool:
    # No SO_REUSEADDR, as a check: a port an outgoing connection left in TIME_WAIT is not free to a server either.
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(tries: int = 200) -> int:
    """A port P with P and P + 1 both free, for a blue/green deploy (``DKT_SERVE_PORT``: blue on P, green on P + 1).

    Not ``free_port() + 1``: Linux gives bind(0) odd ports and connect() even ones, so P + 1 of an OS-picked P sits
    in the pool of every outgoing connection, and each one the client side closes holds its port in TIME_WAIT for a
    minute, where no server can bind it. A busy suite holds thousands (stop 21's CI failed a green start on it). P
    is therefore drawn below the kernel's ephemeral range, where neither bind(0) nor connect() ever lands."""
    low, _ = ephemeral_range()
    floor = max(1024, low - 12_000)
    if low - 2 <= floor:
        raise RuntimeError(f"no room below the ephemeral ports ({PORT_RANGE}: starts at {low}) for a port pair")
    rng = random.SystemRandom()  # xdist workers draw independently: no shared seed
    for _ in range(tries):
        port = rng.randrange(floor, low - 2)
        if bindable(port) and bindable(port + 1):
            return port
    raise RuntimeError(f"no free port pair in {floor}-{low - 1} after {tries} tries")
