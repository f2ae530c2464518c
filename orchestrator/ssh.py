"""SSH into a guest: paramiko for commands the orchestrator runs, OpenSSH for people.

The orchestrator generated each guest's host key, so the known_hosts entry is
written before first boot and host keys are always verified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from core.errors import GuestError

LOOPBACK = "127.0.0.1"
# While a guest boots, every probe fails; paramiko would log each failure with a
# traceback. Failures reach the caller as GuestError instead.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
# What a connection can fail with. paramiko raises a bare EOFError when sshd closes
# the socket during key exchange (it does while cloud-init restarts it); uncaught,
# click turned that into a silent "Aborted." in the middle of a boot.
SSH_FAILURES = (paramiko.SSHException, OSError, EOFError)


@dataclass(frozen=True)
class SSHTarget:
    port: int
    user: str
    key_path: Path
    known_hosts: Path
    host: str = LOOPBACK


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


def known_hosts_line(port: int, host_public_key: str) -> str:
    """The known_hosts entry for a forwarded port (``[127.0.0.1]:PORT key``)."""
    key_type, key_b64 = host_public_key.split()[:2]
    return f"[{LOOPBACK}]:{port} {key_type} {key_b64}\n"


def _connect(target: SSHTarget, timeout_s: float) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(target.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        target.host,
        port=target.port,
        username=target.user,
        key_filename=str(target.key_path),
        timeout=timeout_s,
        banner_timeout=timeout_s,
        auth_timeout=timeout_s,
        allow_agent=False,
        look_for_keys=False,
    )
    return client


def run(target: SSHTarget, command: str, timeout_s: float = 120.0) -> CommandResult:
    """Run ``command`` in the guest and collect its output and exit code."""
    try:
        client = _connect(target, timeout_s=min(timeout_s, 20.0))
    except SSH_FAILURES as exc:
        raise GuestError(f"SSH to {target.host}:{target.port} failed: {exc}") from exc
    try:
        _stdin, stdout, stderr = client.exec_command(command, timeout=timeout_s)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        code = stdout.channel.recv_exit_status()
        return CommandResult(code, out, err)
    except SSH_FAILURES as exc:  # TimeoutError is an OSError
        raise GuestError(f"SSH command failed: {exc}") from exc
    finally:
        client.close()


@contextmanager
def _sftp(target: SSHTarget, timeout_s: float) -> Iterator[paramiko.SFTPClient]:
    try:
        client = _connect(target, timeout_s=min(timeout_s, 20.0))
    except SSH_FAILURES as exc:
        raise GuestError(f"SSH to {target.host}:{target.port} failed: {exc}") from exc
    try:
        sftp = client.open_sftp()
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(timeout_s)
        yield sftp
    except SSH_FAILURES as exc:  # TimeoutError is an OSError
        raise GuestError(f"SFTP transfer failed: {exc}") from exc
    finally:
        client.close()


def put_file(target: SSHTarget, local: Path, remote: str, timeout_s: float = 300.0) -> None:
    """Copy a host file into the guest (SFTP)."""
    with _sftp(target, timeout_s) as sftp:
        sftp.put(str(local), remote)


def get_file(target: SSHTarget, remote: str, local: Path, timeout_s: float = 300.0) -> None:
    """Copy a guest file to the host (SFTP)."""
    with _sftp(target, timeout_s) as sftp:
        sftp.get(remote, str(local))


def try_run(target: SSHTarget, command: str, timeout_s: float) -> CommandResult | None:
    """Like :func:`run`, but ``None`` while the guest is not reachable yet."""
    try:
        return run(target, command, timeout_s)
    except GuestError:
        return None


def openssh_argv(target: SSHTarget, command: list[str] | None = None) -> list[str]:
    """The ``ssh`` command line a person (or editor) uses to reach the guest."""
    argv = [
        "ssh",
        "-i", str(target.key_path),
        "-p", str(target.port),
        "-o", f"UserKnownHostsFile={target.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "LogLevel=ERROR",
        f"{target.user}@{target.host}",
    ]
    return argv + (command or [])
