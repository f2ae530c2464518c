"""Keys and tokens: generated here, stored 0600, usable by paramiko."""

from __future__ import annotations

import stat
from pathlib import Path

import paramiko

from orchestrator.credentials import ensure_keypair, new_token


def test_keypair_is_private_and_stable(tmp_path: Path) -> None:
    pair = ensure_keypair(tmp_path / "keys" / "id_ed25519", "somnus")
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert pair.public_line.startswith("ssh-ed25519 ")
    again = ensure_keypair(tmp_path / "keys" / "id_ed25519", "somnus")
    assert again.public_line == pair.public_line
    loaded = paramiko.Ed25519Key.from_private_key_file(str(pair.private_path))
    assert pair.public_line.split()[1] == loaded.get_base64()


def test_tokens_are_long_and_distinct() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50 and all(len(t) == 64 for t in tokens)
