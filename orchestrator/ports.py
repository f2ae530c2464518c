"""Allocate loopback ports for the SSH and agent forwards, without collisions."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from core.errors import InsufficientResources


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing on this machine listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def allocate_ports(count: int, start: int, end: int, taken: Iterable[int]) -> list[int]:
    """``count`` ports from [start, end] that no VM record holds and nothing listens on.

    The caller holds the orchestrator lock, so two creates never race for a port.
    """
    reserved = set(taken)
    chosen: list[int] = []
    for port in range(start, end + 1):
        if port not in reserved and port_is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise InsufficientResources(
        f"no {count} free loopback ports left in {start}-{end} (set SOMNUS_PORT_RANGE_START/END)"
    )
