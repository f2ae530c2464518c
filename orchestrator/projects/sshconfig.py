"""``~/.ssh/config`` entries, so plain ``ssh somnus-NAME`` reaches a project VM."""

from __future__ import annotations

from orchestrator.ssh import SSHTarget


def _value(text: str) -> str:
    # ssh_config splits on whitespace; quoted values may contain it.
    return f'"{text}"' if any(c.isspace() for c in text) else text


def host_alias(project: str) -> str:
    return f"somnus-{project}"


def render_entry(project: str, target: SSHTarget) -> str:
    """One ``Host`` block that pins the VM's own host key (no trust on first use)."""
    options = [
        ("HostName", target.host),
        ("Port", str(target.port)),
        ("User", target.user),
        ("IdentityFile", _value(str(target.key_path))),
        ("IdentitiesOnly", "yes"),
        ("UserKnownHostsFile", _value(str(target.known_hosts))),
        ("StrictHostKeyChecking", "yes"),
    ]
    return f"Host {host_alias(project)}\n" + "".join(f"    {k} {v}\n" for k, v in options)
