"""Port allocation: skips records and listening sockets; fails clearly when full."""

from __future__ import annotations

import socket

import pytest

from core.errors import InsufficientResources
from orchestrator.ports import allocate_ports, port_is_free


def test_skips_ports_held_by_records() -> None:
    ports = allocate_ports(2, 43100, 43120, taken={43100, 43101})
    assert ports[0] >= 43102 and len(set(ports)) == 2


def test_skips_ports_something_listens_on() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        assert not port_is_free(busy)
        ports = allocate_ports(1, busy, busy + 5, taken=set())
        assert busy not in ports


def test_exhausted_range_is_a_clear_error() -> None:
    with pytest.raises(InsufficientResources, match="no 2 free loopback ports"):
        allocate_ports(2, 43200, 43201, taken={43200})
