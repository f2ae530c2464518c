"""cloud-init seed rendering: valid YAML, the right keys, and a real ISO image."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from guest_agent.protocol import AgentConfig, Subsystem
from orchestrator.credentials import generate_keypair
from orchestrator.domain_xml import GUEST_NIC_NAME
from orchestrator.seed import SeedContext, merge, render_seed, write_seed_image

TOKEN = "ab" * 32


def context(subsystem: Subsystem = Subsystem.CHAT, hostname: str = "chat") -> SeedContext:
    host_private, host_public = generate_keypair("host")
    _user_private, user_public = generate_keypair("somnus")
    return SeedContext(
        instance_id=f"{hostname}-1234",
        hostname=hostname,
        user="somnus",
        ssh_authorized_key=user_public,
        host_key_private=host_private.decode(),
        host_key_public=host_public,
        agent=AgentConfig(vm_name=hostname, subsystem=subsystem, token=TOKEN),
    )


def user_data(files: dict[str, str]) -> dict:  # type: ignore[type-arg]
    assert files["user-data"].startswith("#cloud-config\n")
    return yaml.safe_load(files["user-data"])  # type: ignore[no-any-return]


def test_user_has_only_the_orchestrator_key_and_no_password() -> None:
    ctx = context()
    data = user_data(render_seed(ctx))
    (user,) = data["users"]
    assert user["name"] == "somnus"
    assert user["ssh_authorized_keys"] == [ctx.ssh_authorized_key]
    assert user["lock_passwd"] is True
    assert "passwd" not in user and "chpasswd" not in data


def test_host_key_is_the_one_the_orchestrator_made() -> None:
    ctx = context()
    data = user_data(render_seed(ctx))
    assert data["ssh_keys"]["ed25519_public"] == ctx.host_key_public
    assert data["ssh_keys"]["ed25519_private"] == ctx.host_key_private
    assert data["ssh_genkeytypes"] == []


def test_agent_config_is_written_private_with_the_token() -> None:
    data = user_data(render_seed(context(Subsystem.RESEARCH, "deep")))
    entry = next(f for f in data["write_files"] if f["path"] == "/etc/somnus/agent.json")
    assert entry["permissions"] == "0600"
    config = AgentConfig.model_validate(json.loads(entry["content"]))
    assert config.token == TOKEN and config.vm_name == "deep"
    assert config.subsystem is Subsystem.RESEARCH


@pytest.mark.parametrize("subsystem", list(Subsystem))
def test_every_subsystem_has_a_template_merged_in(subsystem: Subsystem) -> None:
    data = user_data(render_seed(context(subsystem)))
    paths = [f["path"] for f in data["write_files"]]
    assert "/etc/somnus/agent.json" in paths and "/etc/motd" in paths


def test_meta_and_network_config() -> None:
    files = render_seed(context(hostname="proj-1"))
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "proj-1-1234", "local-hostname": "proj-1"}
    net = yaml.safe_load(files["network-config"])
    assert net["version"] == 2
    assert list(net["ethernets"]) == [GUEST_NIC_NAME]  # cloud-init 22.4 ignores match globs
    assert net["ethernets"][GUEST_NIC_NAME]["addresses"] == ["10.0.2.15/24"]


def test_merge_appends_lists_and_merges_dicts() -> None:
    assert merge({"a": [1], "b": {"x": 1}, "c": 1}, {"a": [2], "b": {"y": 2}, "c": 3}) == {
        "a": [1, 2],
        "b": {"x": 1, "y": 2},
        "c": 3,
    }


def test_seed_image_is_a_cidata_iso_readable_only_by_owner(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    write_seed_image(render_seed(context()), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    label = subprocess.run(["isoinfo", "-d", "-i", str(path)], capture_output=True, text=True)
    assert "Volume id: cidata" in label.stdout
    listing = subprocess.run(
        ["isoinfo", "-R", "-f", "-i", str(path)], capture_output=True, text=True
    ).stdout.split()
    assert sorted(listing) == ["/meta-data", "/network-config", "/user-data"]
