"""SSH keys and agent tokens, generated here and written with 0600 permissions."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA... comment"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` so that it is never readable by anyone but the owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def generate_keypair(comment: str) -> tuple[bytes, str]:
    """A new ed25519 key: (OpenSSH private key PEM, public key line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, f"{public.decode()} {comment}"


def ensure_keypair(path: Path, comment: str) -> KeyPair:
    """Load the key at ``path`` or create it (private 0600, ``.pub`` beside it)."""
    pub_path = path.with_suffix(".pub")
    if not path.exists() or not pub_path.exists():
        private, public = generate_keypair(comment)
        write_private(path, private)
        pub_path.write_text(public + "\n")
    return KeyPair(private_path=path, public_line=pub_path.read_text().strip())


def new_token() -> str:
    """A per-VM agent token (256 bits, hex)."""
    return secrets.token_hex(32)
