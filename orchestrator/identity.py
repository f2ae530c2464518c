"""A VM's own identity, and how a VM started from a template takes it.

The host makes each VM's identity before the guest ever runs: its agent token and SSH
host key (so ``known_hosts`` is written before first contact), and its hostname, which is
its name. A cold-booted VM gets it from its cloud-init seed. A VM started from a template
(:mod:`orchestrator.templates`) wakes up as the template's first VM, so the host tells it
who it is, through the agent (still holding the template's token): a root unit in the
image (``somnus-take-identity``, see ``guest_agent.identity``) installs the new host key,
a new machine-id and hostname and reseeds the kernel's random generator, then the agent
takes its new name and token. From then on only the new key and token are accepted.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from core.errors import GuestError
from orchestrator import credentials
from orchestrator.agent_client import AgentClient


@dataclass(frozen=True)
class Identity:
    """What makes one VM itself."""

    vm_name: str
    token: str
    host_private: str  # OpenSSH PEM
    host_public: str  # "ssh-ed25519 AAAA... comment"


def new_identity(vm_name: str) -> Identity:
    private, public = credentials.generate_keypair(f"host-{vm_name}")
    return Identity(vm_name=vm_name, token=credentials.new_token(),
                    host_private=private.decode(), host_public=public)


def take_identity(agent: AgentClient, new: Identity, timeout_s: float = 40.0) -> None:
    """Make the guest behind ``agent`` (which holds the template's token) ``new``.

    Raises GuestError when a step fails; the caller falls back to a cold boot.
    """
    answer = agent.take_identity(new.vm_name, new.token, seed=secrets.token_hex(32),
                                 host_public=new.host_public, host_private=new.host_private,
                                 timeout_s=timeout_s)
    if not answer.applied:
        raise GuestError(f"VM '{new.vm_name}': somnus-take-identity did not apply its "
                         "identity (guest journal: journalctl -u somnus-identity)")
    if answer.vm_name != new.vm_name:
        raise GuestError(f"VM '{new.vm_name}': its agent answers as '{answer.vm_name}'")
