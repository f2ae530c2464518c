"""Render the cloud-init NoCloud seed of a VM and pack it into a disk image.

The seed is attached as a read-only virtio disk labelled ``cidata`` (the cloud
kernel's initramfs cannot see a SATA CD-ROM).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from core.errors import HypervisorUnavailable
from guest_agent.protocol import AgentConfig
from orchestrator.credentials import write_private
from orchestrator.domain_xml import GUEST_NIC_NAME

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "cloud-init"


@dataclass(frozen=True)
class SeedContext:
    """Everything that differs between two VMs' seeds."""

    instance_id: str
    hostname: str
    user: str
    ssh_authorized_key: str
    host_key_private: str
    host_key_public: str
    agent: AgentConfig


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """cloud-config merge: dicts recursively, lists appended, scalars replaced."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            merged[key] = old + value
        else:
            merged[key] = value
    return merged


def render_seed(ctx: SeedContext, templates_dir: Path = TEMPLATES_DIR) -> dict[str, str]:
    """The seed's files (user-data, meta-data, network-config) as text."""
    env = Environment(
        loader=FileSystemLoader(templates_dir), undefined=StrictUndefined, autoescape=False
    )
    values = {
        "instance_id": ctx.instance_id,
        "hostname": ctx.hostname,
        "user": ctx.user,
        "ssh_authorized_key": ctx.ssh_authorized_key,
        "host_key_private": ctx.host_key_private,
        "host_key_public": ctx.host_key_public,
        "agent_config_json": ctx.agent.model_dump_json(),
        "nic_name": GUEST_NIC_NAME,
    }
    user_data = yaml.safe_load(env.get_template("user-data.yaml.j2").render(values))
    overlay_path = templates_dir / "subsystems" / f"{ctx.agent.subsystem.value}.yaml"
    user_data = merge(user_data, yaml.safe_load(overlay_path.read_text()) or {})
    return {
        "user-data": "#cloud-config\n" + yaml.safe_dump(user_data, sort_keys=False),
        "meta-data": env.get_template("meta-data.yaml.j2").render(values) + "\n",
        "network-config": env.get_template("network-config.yaml.j2").render(values) + "\n",
    }


def write_seed_image(files: dict[str, str], path: Path) -> None:
    """Pack the seed files into an ISO 9660 image labelled ``cidata`` (mode 0600).

    The seed holds the VM's host key and agent token, so only root (and the
    QEMU user libvirt hands it to) may read it.
    """
    tool = shutil.which("genisoimage") or shutil.which("mkisofs")
    if tool is None:
        raise HypervisorUnavailable("genisoimage is not installed (apt-get install genisoimage)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        out = Path(tmp) / "seed.iso"
        result = subprocess.run(
            [tool, "-quiet", "-output", str(out), "-volid", "cidata", "-joliet", "-rock",
             *sorted(files)],
            cwd=tmp, capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise HypervisorUnavailable(f"{tool} failed: {result.stderr.strip()[:200]}")
        write_private(path, out.read_bytes())
