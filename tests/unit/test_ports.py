"""Free ports are taken below the kernel's ephemeral range, bindable, never handed out twice."""

from __future__ import annotations

import socket

from gateway.ports import _ephemeral_floor, free_port


def test_free_ports_are_below_the_ephemeral_range_bindable_and_distinct() -> None:
    floor = _ephemeral_floor()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(10_000 <= p < max(floor, 11_000) for p in ports)
    for port in ports[-5:]:  # free: a server binds it
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()
