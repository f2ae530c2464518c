"""A real VM, end to end: boot, SSH, agent auth, isolation, stop/start, errors, delete.

Tests run in file order on the shared VM; the last one deletes it.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from core.errors import AlreadyExists, InvalidInput, NotFound
from guest_agent.protocol import AgentStatus, HealthResponse, InfoResponse, Subsystem
from images.catalog import ImageManifest
from orchestrator.host import Host
from orchestrator.models import VMState
from orchestrator.vms import VMService
from tests.vm.cli import somnus
from tests.vm.sampling import running_vms, sampling

pytestmark = pytest.mark.vm


def test_vm_is_running_and_listed(booted_vm: str, vm_env: dict[str, str]) -> None:
    result = somnus(vm_env, "vm", "list", "--json")
    assert result.returncode == 0, result.stderr
    (vm,) = json.loads(result.stdout)["vms"]  # the same document as GET /vms
    assert vm["name"] == booted_vm and vm["state"] == "running" and vm["subsystem"] == "chat"
    assert vm["accel"] in ("tcg", "kvm")


def test_ssh_runs_a_command_in_the_guest(booted_vm: str, service: VMService,
                                         image: ImageManifest) -> None:
    result = service.run(booted_vm, "hostname; uname -r; id -un; cat /etc/os-release")
    assert result.exit_code == 0, result.stderr
    hostname, kernel, user = result.stdout.splitlines()[:3]
    assert hostname == booted_vm and user == "somnus"
    assert kernel in image.kernel.name  # vmlinuz-<release>
    assert 'VERSION_ID="12"' in result.stdout


def test_sshd_takes_keys_only_and_the_boot_ran_only_the_init_stages(
        booted_vm: str, service: VMService) -> None:
    """The image's sshd drop-in stands in for cloud-init's set-passwords (config stage)."""
    sshd = service.run(booted_vm, "sudo sshd -T").stdout.splitlines()
    assert "passwordauthentication no" in sshd and "kbdinteractiveauthentication no" in sshd
    units = service.run(booted_vm, "systemctl is-enabled cloud-config.service "
                                   "cloud-final.service; systemctl is-active cloud-init.service")
    assert units.stdout.split() == ["masked", "masked", "active"], units.stdout


def test_cli_ssh_passes_command_and_exit_code(booted_vm: str, vm_env: dict[str, str]) -> None:
    ok = somnus(vm_env, "vm", "ssh", booted_vm, "--", "cat", "/etc/hostname")
    assert ok.returncode == 0 and ok.stdout.strip() == booted_vm, ok.stderr
    failing = somnus(vm_env, "vm", "ssh", booted_vm, "--", "exit", "7")
    assert failing.returncode == 7


def test_agent_refuses_requests_without_the_token(booted_vm: str, service: VMService) -> None:
    record = service.store.get_vm(booted_vm)
    url = f"http://127.0.0.1:{record.agent_port}"
    for path in ("/health", "/info"):
        assert httpx.get(url + path, timeout=10).status_code == 401
        wrong = httpx.get(url + path, headers={"Authorization": "Bearer " + "0" * 64}, timeout=10)
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    token = service.paths(booted_vm).token.read_text()
    good = httpx.get(url + "/health", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert good.status_code == 200
    health = HealthResponse.model_validate_json(good.content)
    assert health.vm_name == booted_vm and health.status in set(AgentStatus)


def test_agent_info_reports_the_model_and_packages(booted_vm: str, service: VMService) -> None:
    info: InfoResponse = service.agent(service.store.get_vm(booted_vm)).info()
    assert info.subsystem is Subsystem.CHAT and info.vm_name == booted_vm
    names = [m.name for m in info.models]
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in names
    assert all(m.present and m.size_bytes > 50_000_000 for m in info.models)
    assert info.packages["llama_cpp_python"] != "missing"
    assert info.packages["faiss-cpu"] != "missing"


def test_guest_cannot_reach_the_host_or_anything_else(booted_vm: str,
                                                      service: VMService) -> None:
    # A listener on the host's loopback: without restrict=on, the guest would reach it
    # through the slirp gateway 10.0.2.2. Only loopback traffic is involved.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = (
            "python3 -c \"import socket,sys\n"
            f"try:\n socket.create_connection(('10.0.2.2', {port}), timeout=3)\n"
            "except OSError: sys.exit(3)\nsys.exit(0)\""
        )
        result = service.run(booted_vm, probe)
    assert result.exit_code == 3, "the guest reached the host through user-mode networking"


def test_info_shows_state_history_and_paths(booted_vm: str, vm_env: dict[str, str]) -> None:
    result = somnus(vm_env, "vm", "info", booted_vm, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert [h["to_state"] for h in info["history"]][:2] == ["creating", "running"]
    assert info["paths"]["serial_log"].endswith("serial.log")
    assert info["agent"]["kernel"]
    console = somnus(vm_env, "vm", "console", booted_vm, "-n", "400")
    assert "Linux version" in console.stdout or "login:" in console.stdout


def test_bad_input_is_one_line_and_creates_nothing(booted_vm: str, service: VMService,
                                                   vm_env: dict[str, str]) -> None:
    with pytest.raises(AlreadyExists):
        service.create(booted_vm, Subsystem.CHAT, wait=False)
    with pytest.raises(InvalidInput):
        service.create("Bad_Name", Subsystem.CHAT, wait=False)
    with pytest.raises(NotFound, match="image"):
        service.create("noimage", Subsystem.CHAT, image_ref="ffffffffffff", wait=False)
    assert service.store.find_vm("noimage") is None
    assert not service.paths("noimage").root.exists()
    assert not service.hv.exists(service.domain_name("noimage"))

    dup = somnus(vm_env, "vm", "create", booted_vm, "--subsystem", "chat")
    assert dup.returncode == 4 and dup.stderr.count("\n") == 1 and "exists" in dup.stderr
    bad = somnus(vm_env, "vm", "create", "x_y", "--subsystem", "chat")
    assert bad.returncode == 2 and "invalid VM name" in bad.stderr
    missing = somnus(vm_env, "vm", "start", "ghost")
    assert missing.returncode == 3 and "no VM named 'ghost'" in missing.stderr
    # 976 GiB on a 6 GiB budget: refused before anything is made.
    huge = somnus(vm_env, "vm", "create", "huge", "--subsystem", "chat", "--memory", "999999")
    assert huge.returncode == 7 and huge.stderr.count("\n") == 1, huge.stderr
    assert "memory budget" in huge.stderr and "--memory" in huge.stderr
    assert service.store.find_vm("huge") is None and not service.paths("huge").root.exists()
    assert not service.hv.exists(service.domain_name("huge"))


def test_creating_a_vm_moves_the_running_one_out(booted_vm: str, host: Host) -> None:
    service = host.vms
    assert running_vms(service) == {booted_vm}
    with sampling(lambda: running_vms(service)) as samples:
        # vmtest's shape: it starts from the template vmtest's first boot left.
        _record, timings = service.create("second", Subsystem.CHAT, memory_mib=1024)
    try:
        assert len(samples) > 20 and all(len(s) <= 1 for s in samples), samples
        assert {booted_vm, "second"} <= set().union(*samples)
        assert host.store.foreground() == "second"
        assert "restore from template" in timings, timings
        # Settled in-process: saved in place (its device state on disk, a QEMU waiting).
        assert service.store.get_vm(booted_vm).state is VMState.SAVED
    finally:
        service.delete("second")


def test_stop_then_start_comes_back_ready(booted_vm: str, service: VMService) -> None:
    service.stop(booted_vm)
    record = service.store.get_vm(booted_vm)
    assert record.state is VMState.STOPPED
    assert not service.hv.is_running(record.domain_name)
    timings = service.start(booted_vm)
    assert set(timings) == {"domain running", "ssh", "cloud-init", "agent"}
    assert service.store.get_vm(booted_vm).state is VMState.RUNNING
    assert service.run(booted_vm, "cat /etc/hostname").stdout.strip() == booted_vm
    health = service.agent(record).health()
    assert health.vm_name == booted_vm


def test_delete_leaves_no_file_domain_or_record(booted_vm: str, service: VMService,
                                                vm_env: dict[str, str]) -> None:
    record = service.store.get_vm(booted_vm)
    root = service.paths(booted_vm).root
    assert root.exists()
    unconfirmed = somnus(vm_env, "vm", "delete", booted_vm)  # no one answers the question
    assert unconfirmed.returncode != 0 and root.exists()
    result = somnus(vm_env, "vm", "delete", booted_vm, "--yes")
    assert result.returncode == 0, result.stderr
    assert not root.exists()
    assert not service.hv.exists(record.domain_name)
    assert service.store.find_vm(booted_vm) is None
    assert json.loads(somnus(vm_env, "vm", "list", "--json").stdout)["vms"] == []
