"""Free TCP ports for servers whose address must be known before they bind it (a demo's
gateways that name each other as peers, test and benchmark processes)."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

__all__ = ["free_port"]

_LOW = 10_000
_GIVEN: set[int] = set()
_LOCK = threading.Lock()


def _ephemeral_floor() -> int:
    """The first port of the kernel's ephemeral range (Linux's default 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing on ``host`` listens on, and that this process has not handed out before.

    Taken below the kernel's ephemeral range: a port picked by binding port 0 comes from that
    range, and between its release and the server's bind the kernel may give it to an outgoing
    connection (a database client, a gRPC channel), which made a bind fail now and then."""
    rng = random.SystemRandom()
    high = max(_ephemeral_floor(), _LOW + 1_000)
    with _LOCK:
        for _ in range(200):
            port = rng.randrange(_LOW, high)
            if port in _GIVEN:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _GIVEN.add(port)
            return port
    raise OSError(f"no free port on {host} between {_LOW} and {high}")
