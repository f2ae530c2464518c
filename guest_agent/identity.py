"""Handing a new identity to the guest's root unit (a VM started from a template).

The agent runs unprivileged; the SSH host key, machine-id, hostname and the kernel's
random state belong to root. So the agent writes the host's request into its runtime
folder and ``somnus-identity.path`` (a systemd path unit in the image) starts
``somnus-take-identity`` as root, which applies it, deletes the request and writes the
name it applied. No SSH round trip: right after a restore, a TCG guest's first SSH
handshake costs seconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REQUEST = "identity.pending"
ANSWER = "identity.done"


def request_text(vm_name: str, seed_hex: str, host_public: str, host_private: str) -> str:
    """The request file's lines, in the order ``somnus-take-identity`` reads them."""
    return f"{vm_name}\n{seed_hex}\n{host_public.strip()}\n{host_private.strip()}\n"


def hand_over(folder: Path, text: str, vm_name: str, timeout_s: float = 30.0,
              poll_s: float = 0.05) -> bool:
    """Write the request, wait for the root unit; True once it applied ``vm_name``."""
    (folder / ANSWER).unlink(missing_ok=True)
    part = folder / (REQUEST + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    # The path unit fires on the final name only, so it never reads half a request.
    part.replace(folder / REQUEST)
    deadline = time.monotonic() + timeout_s
    while (folder / REQUEST).exists():
        if time.monotonic() >= deadline:
            (folder / REQUEST).unlink(missing_ok=True)
            return False
        time.sleep(poll_s)
    try:
        return (folder / ANSWER).read_text().strip() == vm_name
    except OSError:  # the unit failed: it removes the request but writes no answer
        return False
