"""SSH failures reach callers as GuestError, including paramiko's bare EOFError."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import GuestError
from orchestrator.ssh import SSHTarget, run, try_run


@pytest.fixture
def closes_during_kex() -> Iterator[int]:
    """A port whose 'sshd' sends its banner, reads the client's, and hangs up (a restart)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                conn.recv(65536)

    threading.Thread(target=serve, daemon=True).start()
    yield port
    server.close()


def target(port: int, tmp_path: Path) -> SSHTarget:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    return SSHTarget(port=port, user="somnus", key_path=tmp_path / "id_ed25519",
                     known_hosts=known_hosts)


def test_a_connection_closed_during_key_exchange_is_a_guest_error(
        closes_during_kex: int, tmp_path: Path) -> None:
    with pytest.raises(GuestError, match=r"SSH to 127\.0\.0\.1"):
        run(target(closes_during_kex, tmp_path), "true", timeout_s=5)


def test_try_run_reads_it_as_not_reachable_yet(closes_during_kex: int, tmp_path: Path) -> None:
    assert try_run(target(closes_during_kex, tmp_path), "true", timeout_s=5) is None
