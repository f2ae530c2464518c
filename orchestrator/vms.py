"""The VM service: create, start, stop, delete and inspect Somnus VMs.

The CLI and the REST API both call this layer; it is the only place that
combines the store, libvirt, the seed, SSH and the agent.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from guest_agent.protocol import AgentConfig, InfoResponse, Subsystem
from images.catalog import ImageManifest, get_image
from orchestrator import accel, credentials, disks, seed
from orchestrator.agent_client import AgentClient
from orchestrator.config import Settings
from orchestrator.domain_xml import DomainSpec, build_domain_xml
from orchestrator.errors import AlreadyExists, Conflict, GuestError, InvalidInput, NotFound
from orchestrator.hypervisor import Hypervisor, SnapshotInfo
from orchestrator.models import StateTransition, VMRecord, VMState
from orchestrator.ports import allocate_ports
from orchestrator.readiness import Stage, cloud_init_result, wait_ready
from orchestrator.ssh import (
    CommandResult,
    SSHTarget,
    known_hosts_line,
    openssh_argv,
    try_run,
)
from orchestrator.ssh import run as ssh_run
from orchestrator.store import Store

# States the orchestrator leaves a VM in between commands; the others are mid-operation.
SETTLED_STATES = frozenset(
    {VMState.RUNNING, VMState.STOPPED, VMState.PAUSED, VMState.SAVED, VMState.ERROR}
)
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
Progress = Callable[[str], None]


def validate_name(name: str, what: str = "VM") -> None:
    """Names double as hostnames and libvirt names: keep them DNS-safe."""
    if not NAME_RE.fullmatch(name) or "--" in name:
        raise InvalidInput(
            f"invalid {what} name '{name}': use 2-32 lowercase letters, digits and single "
            "hyphens, starting with a letter"
        )


@dataclass
class VMPaths:
    """Where one VM's files live."""

    root: Path

    @property
    def overlay(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.root / "seed.iso"

    @property
    def serial_log(self) -> Path:
        return self.root / "serial.log"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def token(self) -> Path:
        return self.root / "agent-token"


@dataclass
class VMInfo:
    """A VM as the CLI and API show it."""

    record: VMRecord
    paths: VMPaths
    history: list[StateTransition] = field(default_factory=list)
    agent: InfoResponse | None = None


class VMService:
    """Lifecycle of Somnus VMs on one libvirt connection."""

    def __init__(self, settings: Settings, hypervisor: Hypervisor | None = None,
                 store: Store | None = None) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        # A long-lived caller (the API) shares one store and connection between instances.
        self.store = store or Store(settings.db_path)
        self._hypervisor = hypervisor
        self._lock_depth = 0

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def hv(self) -> Hypervisor:
        if self._hypervisor is None:
            self._hypervisor = Hypervisor(self.settings.libvirt_uri)
        return self._hypervisor

    @contextmanager
    def locked(self, wait: bool = True) -> Iterator[bool]:
        """One mutating operation at a time per Somnus home (ports, names, swaps).

        Re-entrant within this object, so a swap can call create/reconcile while
        holding it; other holders (processes, or other instances) wait. With
        ``wait=False`` it yields False at once instead of waiting.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield True
            finally:
                self._lock_depth -= 1
            return
        with open(self.settings.home / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            self._lock_depth = 1
            try:
                yield True
            finally:
                self._lock_depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def paths(self, name: str) -> VMPaths:
        return VMPaths(self.settings.vms_dir / name)

    def domain_name(self, name: str) -> str:
        return f"{self.settings.domain_prefix}{name}"

    def ssh_target(self, record: VMRecord) -> SSHTarget:
        key = credentials.ensure_keypair(self.settings.keys_dir / "id_ed25519", "somnus")
        return SSHTarget(
            port=record.ssh_port,
            user=self.settings.guest_user,
            key_path=key.private_path,
            known_hosts=self.paths(record.name).known_hosts,
        )

    def agent(self, record: VMRecord) -> AgentClient:
        return AgentClient(record.agent_port, self.paths(record.name).token.read_text().strip())

    # -- readiness --------------------------------------------------------------------------

    def _stages(self, record: VMRecord) -> list[Stage]:
        s = self.settings
        target = self.ssh_target(record)
        agent = self.agent(record)

        def ssh_ok() -> bool:
            return try_run(target, "true", timeout_s=10) is not None

        def cloud_init_done() -> bool:
            result = try_run(target, "cat /run/cloud-init/result.json 2>/dev/null", 10)
            return result is not None and cloud_init_result(result.stdout)

        def agent_ok() -> bool:
            try:
                return agent.health(timeout_s=3).vm_name == record.name
            except GuestError:
                return False

        return [
            Stage("domain running", s.timeout_domain_s,
                  lambda: self.hv.is_running(record.domain_name)),
            Stage("ssh", s.timeout_ssh_s, ssh_ok),
            Stage("cloud-init", s.timeout_cloud_init_s, cloud_init_done),
            Stage("agent", s.timeout_agent_s, agent_ok),
        ]

    def wait_ready(self, name: str, progress: Progress | None = None) -> dict[str, float]:
        """Wait until the VM passes every readiness stage; mark it running."""
        record = self.store.get_vm(name)
        try:
            timings = wait_ready(
                name,
                self._stages(record),
                alive=lambda: self.hv.is_running(record.domain_name),
                log_path=str(self.paths(name).serial_log),
                progress=progress,
            )
        except GuestError as exc:
            self.store.set_state(name, VMState.ERROR, reason="not ready", error=str(exc))
            raise
        self.store.set_state(name, VMState.RUNNING, reason="ready")
        return timings

    # -- lifecycle --------------------------------------------------------------------------

    def create(
        self,
        name: str,
        subsystem: Subsystem,
        memory_mib: int | None = None,
        vcpus: int | None = None,
        image_ref: str | None = None,
        wait: bool = True,
        progress: Progress | None = None,
    ) -> tuple[VMRecord, dict[str, float]]:
        """Create and boot a VM; returns its record and the seconds each stage took.

        Anything that fails before the domain boots is rolled back completely. A VM
        that boots but does not become ready is kept in state 'error' so its serial
        log can be read; 'somnus vm delete' removes it.
        """
        validate_name(name)
        memory_mib = memory_mib or self.settings.default_memory_mib
        vcpus = vcpus or self.settings.default_vcpus
        if memory_mib < 256:
            raise InvalidInput(f"memory {memory_mib} MiB is too small: at least 256 MiB")
        if vcpus < 1:
            raise InvalidInput("vcpus must be at least 1")
        timings: dict[str, float] = {}
        started = time.monotonic()
        with self.locked():
            domain_name = self.domain_name(name)
            image = self.check_new(name, image_ref)
            disks.require_free_space(self.settings.home, self.settings.min_free_disk_mib)
            ssh_port, agent_port = allocate_ports(
                2, self.settings.port_range_start, self.settings.port_range_end,
                self.store.used_ports(),
            )
            acceleration = accel.detect(self.settings.accel)
            record = VMRecord(
                name=name, domain_name=domain_name, subsystem=subsystem,
                memory_mib=memory_mib, vcpus=vcpus, accel=acceleration.mode.value,
                image_hash=image.recipe_hash, vm_dir=str(self.paths(name).root),
                ssh_port=ssh_port, agent_port=agent_port,
            )
            try:
                self._provision(record, image, acceleration, progress)
            except BaseException:
                self._remove(record.name, record.domain_name)
                raise
            timings["provision"] = round(time.monotonic() - started, 2)
        if wait:
            timings.update(self.wait_ready(name, progress))
        else:
            self.store.set_state(name, VMState.RUNNING, reason="started, not waited for")
        return self.store.get_vm(name), timings

    def check_new(self, name: str, image_ref: str | None = None) -> ImageManifest:
        """Refuse a VM that cannot be created (bad or taken name, unknown image); cheap.

        ``create`` repeats it under the lock; callers that start ``create`` in the
        background call it first to fail at once.
        """
        validate_name(name)
        if self.store.find_vm(name) is not None:
            raise AlreadyExists(f"a VM named '{name}' exists already")
        if self.hv.exists(self.domain_name(name)):
            raise AlreadyExists(f"libvirt already has a domain '{self.domain_name(name)}'")
        return get_image(self.settings, image_ref)

    def _provision(
        self,
        record: VMRecord,
        image: ImageManifest,
        acceleration: accel.Acceleration,
        progress: Progress | None,
    ) -> None:
        """Files, record and domain for a new VM, then boot it."""
        paths = self.paths(record.name)
        # QEMU runs as libvirt's own user: it must traverse this folder.
        paths.root.mkdir(parents=True, mode=0o755, exist_ok=False)
        self.store.add_vm(record)
        user_key = credentials.ensure_keypair(self.settings.keys_dir / "id_ed25519", "somnus")
        host_private, host_public = credentials.generate_keypair(f"host-{record.name}")
        token = credentials.new_token()
        credentials.write_private(paths.token, token.encode())
        paths.known_hosts.write_text(known_hosts_line(record.ssh_port, host_public))
        files = seed.render_seed(
            seed.SeedContext(
                instance_id=f"{record.name}-{uuid.uuid4().hex[:8]}",
                hostname=record.name,
                user=self.settings.guest_user,
                ssh_authorized_key=user_key.public_line,
                host_key_private=host_private.decode(),
                host_key_public=host_public,
                agent=AgentConfig(vm_name=record.name, subsystem=record.subsystem, token=token,
                                  port=self.settings.agent_guest_port),
            )
        )
        seed.write_seed_image(files, paths.seed)
        disks.create_overlay(image.disk, paths.overlay, self.settings.disk_size_gib)
        self.hv.define(build_domain_xml(DomainSpec(
            name=record.domain_name, memory_mib=record.memory_mib, vcpus=record.vcpus,
            accel=acceleration, kernel=image.kernel, initrd=image.initrd,
            cmdline=image.kernel_cmdline, disk=paths.overlay, seed=paths.seed,
            serial_log=paths.serial_log, ssh_port=record.ssh_port,
            agent_port=record.agent_port, agent_guest_port=self.settings.agent_guest_port,
        )))
        if progress:
            progress(f"defined {record.domain_name} ({acceleration.mode.value}: "
                     f"{acceleration.reason}); booting")
        self.hv.start(record.domain_name)

    def start(self, name: str, wait: bool = True,
              progress: Progress | None = None) -> dict[str, float]:
        with self.locked():
            record = self.store.get_vm(name)
            self._require_domain(record)
            if self.hv.is_running(record.domain_name):
                raise Conflict(f"VM '{name}' is already running")
            self.hv.start(record.domain_name)
            if not wait:
                self.store.set_state(name, VMState.RUNNING, reason="started, not waited for")
        return self.wait_ready(name, progress) if wait else {}

    def stop(self, name: str, force: bool = False) -> bool:
        """Shut the VM down (ACPI, then power off); True if the guest shut down cleanly."""
        with self.locked():
            record = self.store.get_vm(name)
            self._require_domain(record)
            clean = self.hv.stop(record.domain_name, force=force)
            self.store.set_state(name, VMState.STOPPED,
                                 reason="stopped" if clean else "powered off")
            return clean

    def delete(self, name: str) -> None:
        """Remove the domain, the VM's files and its record; nothing is left behind."""
        with self.locked():
            record = self.store.get_vm(name)
            self._remove(record.name, record.domain_name)

    def _remove(self, name: str, domain_name: str) -> None:
        self.hv.undefine(domain_name)
        shutil.rmtree(self.paths(name).root, ignore_errors=True)
        self.store.delete_vm(name)

    def _require_domain(self, record: VMRecord) -> None:
        if not self.hv.exists(record.domain_name):
            self.store.set_state(record.name, VMState.ERROR, reason="domain missing",
                                 error="libvirt domain vanished")
            raise NotFound(
                f"VM '{record.name}': libvirt domain '{record.domain_name}' is gone; "
                f"'somnus vm delete {record.name}' cleans up"
            )

    # -- inspection -------------------------------------------------------------------------

    def reconcile(self, wait: bool = True) -> list[str]:
        """Bring records in line with libvirt; return one line per change made.

        A domain deleted behind our back is reported (state 'error'), never crashed
        on; a VM whose QEMU process died while we thought it ran is marked 'error'.
        With ``wait=False`` it does nothing while another operation holds the lock
        (that operation is changing the records anyway).
        """
        changes: list[str] = []
        with self.locked(wait) as held:
            for record in self.store.list_vms() if held else []:
                change = self._reconcile_one(record)
                if change:
                    changes.append(change)
        return changes

    def _reconcile_one(self, record: VMRecord) -> str | None:
        if not self.hv.exists(record.domain_name):
            if record.state is VMState.ERROR:
                return None
            self.store.set_state(record.name, VMState.ERROR, reason="reconcile",
                                 error="libvirt domain vanished")
            return f"{record.name}: domain gone from libvirt -> error"
        live = self.hv.state(record.domain_name)
        if live is record.state or record.state not in SETTLED_STATES:
            return None
        if record.state is VMState.ERROR and live is VMState.STOPPED:
            return None  # the error stands until the user starts or deletes the VM
        if record.state is VMState.RUNNING and live is VMState.STOPPED:
            self.store.set_state(record.name, VMState.ERROR, reason="QEMU process died",
                                 error="QEMU exited while the VM was running")
            return f"{record.name}: QEMU process died -> error"
        self.store.set_state(record.name, live, reason="reconcile with libvirt")
        return f"{record.name}: {record.state.value} -> {live.value}"

    def list_vms(self) -> list[VMRecord]:
        self.reconcile(wait=False)  # a listing never waits for a long swap or boot
        return self.store.list_vms()

    def info(self, name: str, with_agent: bool = True) -> VMInfo:
        self.reconcile(wait=False)
        record = self.store.get_vm(name)
        info = VMInfo(record=record, paths=self.paths(name), history=self.store.history(name))
        if with_agent and record.state is VMState.RUNNING:
            try:
                info.agent = self.agent(record).info(timeout_s=5)
            except GuestError:
                info.agent = None
        return info

    def run(self, name: str, command: str, timeout_s: float = 120.0) -> CommandResult:
        """Run a shell command in a running VM over SSH."""
        return ssh_run(self.ssh_target(self._running(name)), command, timeout_s)

    def ssh_argv(self, name: str, command: list[str] | None = None) -> list[str]:
        return openssh_argv(self.ssh_target(self._running(name)), command)

    def _running(self, name: str) -> VMRecord:
        record = self.store.get_vm(name)
        if not self.hv.is_running(record.domain_name):
            raise Conflict(f"VM '{name}' is not running (start it: 'somnus vm start {name}')")
        return record

    # -- snapshots --------------------------------------------------------------------------

    def snapshot_create(self, name: str, snapshot: str, description: str = "") -> SnapshotInfo:
        """Snapshot the disk, and the memory when the VM runs (internal qcow2 snapshot)."""
        validate_name(snapshot, what="snapshot")
        with self.locked():
            record = self.store.get_vm(name)
            self._require_domain(record)
            if any(s.name == snapshot for s in self.hv.snapshot_list(record.domain_name)):
                raise AlreadyExists(f"VM '{name}' has a snapshot '{snapshot}' already")
            if self.hv.is_running(record.domain_name):
                with suppress(GuestError):
                    self.agent(record).flush()
            self.hv.snapshot_create(record.domain_name, snapshot, description)
            return next(s for s in self.hv.snapshot_list(record.domain_name)
                        if s.name == snapshot)

    def snapshot_list(self, name: str) -> list[SnapshotInfo]:
        record = self.store.get_vm(name)
        self._require_domain(record)
        return self.hv.snapshot_list(record.domain_name)

    def snapshot_revert(self, name: str, snapshot: str) -> VMState:
        """Return the VM to the snapshot: disk, and memory if it was taken running."""
        with self.locked():
            record = self.store.get_vm(name)
            self._require_domain(record)
            self.hv.snapshot_revert(record.domain_name, snapshot)
            state = self.hv.state(record.domain_name)
            self.store.set_state(name, state, reason=f"reverted to snapshot '{snapshot}'")
            if state is VMState.RUNNING:
                with suppress(GuestError):
                    self.agent(record).sync_clock()
            return state

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        with self.locked():
            record = self.store.get_vm(name)
            self._require_domain(record)
            self.hv.snapshot_delete(record.domain_name, snapshot)

    def console_log(self, name: str) -> Path:
        self.store.get_vm(name)
        return self.paths(name).serial_log
