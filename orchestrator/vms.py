"""The VM service: create, start, stop, delete, snapshot and inspect Somnus VMs.

The CLI and the REST API both call this layer. State changes go through
:class:`~orchestrator.lifecycle.Lifecycle`; a VM entering RAM goes through the
foreground policy (``seams.Foreground``, the swap engine), so creating, starting or
reverting a VM under ``single-active`` moves the previous one out as ``activate``
does. Reads (``list_vms``, ``info``) compute and write nothing; every mutating verb
first lets ``prepare`` (recovery and reconcile) run under the home's lock.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings
from core.errors import (
    AlreadyExists,
    Conflict,
    GuestError,
    HypervisorUnavailable,
    InsufficientResources,
    InvalidInput,
    NotFound,
    ReadinessTimeout,
)
from core.types import Progress
from guest_agent.protocol import AgentConfig, InfoResponse, Subsystem
from images.catalog import ImageManifest, get_image
from images.recipe import Flavour
from orchestrator import accel, credentials, disks, saveimage, seed
from orchestrator.agent_client import AgentClient
from orchestrator.domain_xml import DomainSpec, build_domain_xml, somnus_owner
from orchestrator.hypervisor import Hypervisor, SnapshotInfo
from orchestrator.identity import Identity, new_identity, take_identity
from orchestrator.lifecycle import Lifecycle, Observed, live_state
from orchestrator.locking import HomeLock
from orchestrator.models import StateTransition, VMRecord, VMState
from orchestrator.paths import VMPaths, vm_paths
from orchestrator.ports import allocate_ports
from orchestrator.readiness import CLOUD_INIT_STATUS, Stage, cloud_init_done, wait_ready
from orchestrator.seams import AgentFactory, FaultHook, Foreground, NoForeground, env_faults
from orchestrator.ssh import (
    CommandResult,
    SSHTarget,
    known_hosts_line,
    openssh_argv,
    try_run,
)
from orchestrator.ssh import run as ssh_run
from orchestrator.store import Store
from orchestrator.templates import Template, Templates, shape_key, tree_hash

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")


MAX_DESCRIPTION = 1000  # characters of a snapshot's description
# The image flavour a subsystem's VMs boot; every other subsystem boots the base image.
SUBSYSTEM_FLAVOUR: dict[Subsystem, Flavour] = {Subsystem.ARTIFACTS: Flavour.ARTIFACTS,
                                               Subsystem.RESEARCH: Flavour.RESEARCH}


def validate_name(name: str, what: str = "VM") -> None:
    """Names double as hostnames and libvirt names: keep them DNS-safe."""
    if not NAME_RE.fullmatch(name) or "--" in name:
        raise InvalidInput(
            f"invalid {what} name '{name}': use 2-32 lowercase letters, digits and single "
            "hyphens, starting with a letter"
        )


class TokenAgents:
    """The real agent factory: each VM's client with the token kept in its folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, record: VMRecord) -> AgentClient:
        token = vm_paths(self.settings, record.name).token.read_text().strip()
        return AgentClient(record.agent_port, token, vm_name=record.name)


@dataclass
class VMInfo:
    """A VM as it is now: its record, its live state, history and its agent's report."""

    record: VMRecord
    observed: Observed
    paths: VMPaths
    history: list[StateTransition] = field(default_factory=list)
    agent: InfoResponse | None = None


@dataclass(frozen=True)
class Orphan:
    """A libvirt domain of this home's that no record owns."""

    domain_name: str
    reason: str


class VMService:
    """Lifecycle of Somnus VMs on one host."""

    def __init__(self, lifecycle: Lifecycle, agents: AgentFactory, lock: HomeLock,
                 foreground: Foreground | None = None, faults: FaultHook = env_faults) -> None:
        self.lifecycle = lifecycle
        self.settings = lifecycle.settings
        self.store: Store = lifecycle.store
        self.agent = agents
        self.lock = lock
        self.foreground: Foreground = foreground or NoForeground()
        self.faults = faults
        self.templates = Templates(self.settings.templates_dir)
        # Recovery and reconcile, run once under the lock before a mutating verb (the
        # composition root plugs in the swap engine's ``recover``).
        self.prepare: Callable[[], list[str]] = self.reconcile

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def hv(self) -> Hypervisor:
        return self.lifecycle.hv

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Hold the home's lock for a change; the outermost change first runs ``prepare``."""
        outermost = not self.lock.held
        with self.lock():
            if outermost:
                self.prepare()
            yield

    def paths(self, name: str) -> VMPaths:
        return vm_paths(self.settings, name)

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

    def agent_answers(self, record: VMRecord, timeout_s: float = 3.0) -> bool:
        """Whether the VM's own agent answers ``/health`` with its token (the one probe)."""
        try:
            return self.agent(record).health(timeout_s=timeout_s).vm_name == record.name
        except GuestError:
            return False

    # -- readiness --------------------------------------------------------------------------

    def _stages(self, record: VMRecord, restored: bool) -> list[Stage]:
        s = self.settings
        target = self.ssh_target(record)

        def ssh_ok() -> bool:
            return try_run(target, "true", timeout_s=10) is not None

        def cloud_init_finished() -> bool:
            result = try_run(target, f"cat {CLOUD_INIT_STATUS} 2>/dev/null", 10)
            return result is not None and cloud_init_done(result.stdout)

        running = Stage("domain running", s.timeout_domain_s,
                        lambda: self.hv.is_running(record.domain_name))
        agent = Stage("agent", s.timeout_agent_s, lambda: self.agent_answers(record))
        ssh = Stage("ssh", s.timeout_ssh_s, ssh_ok)
        if restored:  # cloud-init finished before the save; SSH proves the new host key
            return [running, agent, ssh]
        return [running, ssh, Stage("cloud-init", s.timeout_cloud_init_s, cloud_init_finished),
                agent]

    def wait_ready(self, record: VMRecord, progress: Progress | None = None,
                   restored: bool = False) -> dict[str, float]:
        """Wait until the VM passes every readiness stage; mark it running.

        ``restored``: it started from a save taken once it was ready (a template).
        """
        try:
            timings = wait_ready(
                record.name,
                self._stages(record, restored),
                why_down=lambda: self.hv.why_down(record.domain_name),
                log_path=str(self.paths(record.name).serial_log),
                progress=progress,
            )
        except (GuestError, ReadinessTimeout) as exc:
            self.lifecycle.mark_error(record, "not ready", str(exc))
            raise
        self.lifecycle.mark_ready(record)
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
        from_template: bool = True,
    ) -> tuple[VMRecord, dict[str, float]]:
        """Create and boot a VM; returns its record and the seconds each stage took.

        With ``from_template`` (and ``settings.templates``) the VM starts from the saved
        first boot of its shape when there is one, and the first VM of a shape is saved
        as one once it is ready (``orchestrator.templates``). A VM that could never fit
        is refused before anything is made. Anything that fails before the domain boots
        is rolled back completely; a create killed midway is undone by the next command
        (``reconcile``). A VM that boots but does not become ready is kept in state
        'error' so its serial log can be read.
        """
        memory_mib = memory_mib or self.settings.default_memory_mib
        vcpus = vcpus or self.settings.default_vcpus
        self._check_resources(name, memory_mib, vcpus)
        timings: dict[str, float] = {}
        started = time.monotonic()
        with self.changing():
            image = self.check_new(name, image_ref, memory_mib, vcpus, subsystem)
            disks.require_free_space(self.settings.home, self.settings.min_free_disk_mib)
            web = subsystem is Subsystem.ARTIFACTS  # web artifacts get a forward of their own
            ssh_port, agent_port, *web_port = allocate_ports(
                3 if web else 2, self.settings.port_range_start, self.settings.port_range_end,
                self.store.used_ports(),
            )
            acceleration = accel.detect(self.settings.accel)
            record = VMRecord(
                name=name, domain_name=self.domain_name(name), subsystem=subsystem,
                memory_mib=memory_mib, vcpus=vcpus, accel=acceleration.mode.value,
                image_hash=image.recipe_hash, vm_dir=str(self.paths(name).root),
                ssh_port=ssh_port, agent_port=agent_port, web_port=web_port[0] if web else None,
            )
            use_templates = from_template and self.settings.templates
            shape, facts = self.shape(subsystem, memory_mib, vcpus, image, acceleration)
            template = self.templates.find(shape) if use_templates else None
            identity = new_identity(name)
            try:
                record = self._provision(record, image, acceleration, identity,
                                         template.disk if template else image.disk)
            except BaseException:
                self._remove(record, "create failed while provisioning")
                raise
            timings["provision"] = round(time.monotonic() - started, 2)
            self.faults("create_defined")
            if progress:
                how = f"starting from template {template.folder.name}" if template else "booting"
                progress(f"defined {record.domain_name} ({acceleration.mode.value}: "
                         f"{acceleration.reason}); {how}")
            try:
                with self.foreground.entering(record, progress) as entry:
                    restored = None
                    if template is None:
                        self.lifecycle.boot(record, "created")
                    else:
                        restored = self._start_from_template(record, template, image,
                                                             identity, progress)
                        timings.update(restored or {})
                    entry.started()
                    if wait:
                        timings.update(self.wait_ready(record, progress,
                                                       restored=restored is not None))
                    else:
                        self.lifecycle.mark_ready(record, "started, not waited for")
            except BaseException:
                if self.store.get_vm(name).state is VMState.CREATING:
                    self._remove(record, "create failed before it booted")
                raise
            if use_templates and template is None and wait:
                capture_started = time.monotonic()
                self._capture(record, shape, facts, identity, progress)
                timings["template capture"] = round(time.monotonic() - capture_started, 2)
        return self.store.get_vm(name), timings

    # -- templates --------------------------------------------------------------------------

    def shape(self, subsystem: Subsystem, memory_mib: int, vcpus: int, image: ImageManifest,
              acceleration: accel.Acceleration | None = None) -> tuple[str, dict[str, str]]:
        """The template shape of a VM made so: its domain with placeholder names, paths
        and ports, plus what the domain does not show (``templates.shape_key``)."""
        acceleration = acceleration or accel.detect(self.settings.accel)
        stand_in = VMRecord(
            name="shape", domain_name="shape", subsystem=subsystem, memory_mib=memory_mib,
            vcpus=vcpus, accel=acceleration.mode.value, image_hash=image.recipe_hash,
            vm_dir="/shape", ssh_port=1, agent_port=2,
            web_port=3 if subsystem is Subsystem.ARTIFACTS else None)
        domain = build_domain_xml(self._domain_spec(stand_in, image, acceleration,
                                                    VMPaths(Path("/shape"))))
        facts = {
            "image": image.recipe_hash,
            "subsystem": subsystem.value,
            "hypervisor": " ".join(self.hv.version()),
            "seed": tree_hash(seed.TEMPLATES_DIR),
            "guest_user": self.settings.guest_user,
        }
        return shape_key(domain, facts), facts

    def _start_from_template(self, record: VMRecord, template: Template, image: ImageManifest,
                             identity: Identity, progress: Progress | None
                             ) -> dict[str, float] | None:
        """Start the new VM from a copy of ``template``'s save and make it itself.

        Returns the seconds each step took. If a step fails, the template is dropped (the
        next VM of the shape is captured afresh), this VM boots cold from the image and
        None is returned.
        """
        paths = self.paths(record.name)
        started = time.monotonic()
        timings: dict[str, float] = {}
        try:
            # Its console starts with the boot it wakes up from (QEMU appends to the log).
            with suppress(OSError), paths.serial_log.open("ab") as console:
                console.write(template.boot_log.read_bytes())
                console.write(f"\n[somnus] '{record.name}' started here from template "
                              f"{template.folder.name}: the lines above are the boot of "
                              f"'{template.manifest.vm_name}'\n".encode())
            if template.in_place:
                self.lifecycle.boot_from_state(record, template)
            else:
                saveimage.write_for_domain(template.state, paths.boot_image,
                                           self.hv.migratable_xml(record.domain_name))
                self.lifecycle.boot_from_save(record, paths.boot_image)
            timings["restore from template"] = round(time.monotonic() - started, 2)
            before = AgentClient(record.agent_port, template.manifest.token, vm_name=record.name)
            take_identity(before, identity)
            self.agent(record).sync_clock()
            timings["identity"] = round(time.monotonic() - started
                                        - timings["restore from template"], 2)
        except (HypervisorUnavailable, GuestError, OSError) as exc:
            log.warning("VM '%s' did not start from template %s (%s): dropped it; cold boot",
                        record.name, template.folder.name, exc)
            if progress:
                progress(f"warning: starting from template {template.folder.name} failed "
                         f"({exc}); booting cold")
            self.templates.drop(template)
            self.lifecycle.power_off(record, "its template failed")
            paths.overlay.unlink(missing_ok=True)
            disks.create_overlay(image.disk, paths.overlay, self.settings.disk_size_gib)
            paths.serial_log.write_bytes(b"")  # not the template's boot: this one's
            self.lifecycle.boot(record, "created")
            return None
        finally:
            paths.boot_image.unlink(missing_ok=True)
        return timings

    def _capture(self, record: VMRecord, shape: str, facts: dict[str, str],
                 identity: Identity, progress: Progress | None) -> None:
        """Save the new, ready VM as the template of its shape, then restore it.

        While its QEMU is gone, its disk becomes the template's frozen disk (a hard link)
        and the VM goes on in a thin overlay on it. A capture that cannot be made (no room,
        libvirt refuses) leaves the VM as it was, with a warning.
        """
        if progress:
            progress(f"saving {record.name}'s first boot as a template: VMs like it will "
                     "start from it in seconds")
        capture = self.templates.begin(shape)
        overlay = self.paths(record.name).overlay

        def freeze_disk() -> None:
            os.link(overlay, capture.disk)
            shutil.copyfile(self.paths(record.name).serial_log, capture.boot_log)
            self.templates.finish(capture, shape, facts, record.name, identity.token,
                                  identity.host_public)
            moved = overlay.with_name(overlay.name + ".next")
            disks.create_overlay(capture.disk, moved, self.settings.disk_size_gib)
            moved.rename(overlay)

        with suppress(GuestError):
            self.agent(record).flush()
        try:
            path = self.lifecycle.capture(record, capture, freeze_disk, "saved as a template")
        except (HypervisorUnavailable, InsufficientResources, OSError) as exc:
            log.warning("VM '%s' was not saved as a template: %s", record.name, exc)
            if progress:
                progress(f"warning: no template saved ({exc})")
            return
        if path == "restored":
            with suppress(GuestError):
                self.agent(record).sync_clock()
        else:
            self.wait_ready(record, progress)

    def _check_resources(self, name: str, memory_mib: int, vcpus: int) -> None:
        validate_name(name)
        if memory_mib < 256:
            raise InvalidInput(f"memory {memory_mib} MiB is too small: at least 256 MiB")
        if vcpus < 1:
            raise InvalidInput("vcpus must be at least 1")
        self.lifecycle.check_can_fit(name, memory_mib)

    def check_new(self, name: str, image_ref: str | None = None,
                  memory_mib: int | None = None, vcpus: int | None = None,
                  subsystem: Subsystem | None = None) -> ImageManifest:
        """Refuse a VM that cannot be created (bad or taken name, unknown image, too big);
        return the image it would boot (by default the current one of its flavour).

        Cheap; ``create`` repeats it under the lock; callers that start ``create`` in
        the background call it first to fail at once.
        """
        self._check_resources(name, memory_mib or self.settings.default_memory_mib,
                              vcpus or self.settings.default_vcpus)
        if self.store.find_vm(name) is not None:
            raise AlreadyExists(f"a VM named '{name}' exists already")
        if self.hv.exists(self.domain_name(name)):
            raise AlreadyExists(f"libvirt already has a domain '{self.domain_name(name)}' "
                                "('somnus vm prune' removes domains no VM owns)")
        flavour = SUBSYSTEM_FLAVOUR.get(subsystem, Flavour.BASE) if subsystem else Flavour.BASE
        return get_image(self.settings, image_ref, flavour)

    def _provision(self, record: VMRecord, image: ImageManifest,
                   acceleration: accel.Acceleration, identity: Identity,
                   backing: Path) -> VMRecord:
        """Files, record and domain for a new VM (not booted yet); its disk is an overlay
        on ``backing`` (the image's disk, or a template's)."""
        paths = self.paths(record.name)
        record = self.lifecycle.register(record)
        # No record owned this name: whatever a create killed before its record left here
        # is stale. QEMU runs as libvirt's own user: it must traverse this folder.
        shutil.rmtree(paths.root, ignore_errors=True)
        paths.root.mkdir(parents=True, mode=0o755)
        user_key = credentials.ensure_keypair(self.settings.keys_dir / "id_ed25519", "somnus")
        credentials.write_private(paths.token, identity.token.encode())
        paths.known_hosts.write_text(known_hosts_line(record.ssh_port, identity.host_public))
        # A VM started from a template ignores its seed until it boots cold: then cloud-init
        # sees a new instance and applies the same identity.
        files = seed.render_seed(
            seed.SeedContext(
                instance_id=f"{record.name}-{uuid.uuid4().hex[:8]}",
                hostname=record.name,
                user=self.settings.guest_user,
                ssh_authorized_key=user_key.public_line,
                host_key_private=identity.host_private,
                host_key_public=identity.host_public,
                agent=AgentConfig(vm_name=record.name, subsystem=record.subsystem,
                                  token=identity.token, port=self.settings.agent_guest_port),
            )
        )
        seed.write_seed_image(files, paths.seed)
        disks.create_overlay(backing, paths.overlay, self.settings.disk_size_gib)
        if self.settings.ram_file:
            # QEMU sizes it; it runs as libvirt's user, so that owns it. 0600: guest memory.
            paths.ram.touch(mode=0o600)
            os.chown(paths.ram, *self.hv.qemu_owner())
        self.lifecycle.define(record, build_domain_xml(
            self._domain_spec(record, image, acceleration, paths)))
        return record

    def _domain_spec(self, record: VMRecord, image: ImageManifest,
                     acceleration: accel.Acceleration, paths: VMPaths) -> DomainSpec:
        return DomainSpec(
            name=record.domain_name, memory_mib=record.memory_mib, vcpus=record.vcpus,
            accel=acceleration, kernel=image.kernel, initrd=image.initrd,
            cmdline=image.kernel_cmdline, disk=paths.overlay, seed=paths.seed,
            serial_log=paths.serial_log, ssh_port=record.ssh_port,
            agent_port=record.agent_port, agent_guest_port=self.settings.agent_guest_port,
            web_port=record.web_port, web_guest_port=self.settings.web_guest_port,
            vm_name=record.name, owner_home=str(self.settings.home),
            tb_cache_mib=self.settings.tb_cache_mib,
            ram_file=paths.ram if self.settings.ram_file else None,
        )

    def start(self, name: str, wait: bool = True,
              progress: Progress | None = None) -> dict[str, float]:
        """Boot a stopped VM (or restore a saved one) and make it the foreground."""
        with self.changing():
            record = self.store.get_vm(name)
            self._require_domain(record)
            live = self.lifecycle.current(record)
            if live in (VMState.RUNNING, VMState.PAUSED):
                raise Conflict(f"VM '{name}' is already up ({live.value}): bring it forward "
                               f"with 'somnus activate {name}'")
            with self.foreground.entering(record, progress) as entry:
                if live is VMState.SAVED:
                    self.lifecycle.restore(record, "started", progress)
                else:
                    self.lifecycle.boot(record, "started")
                entry.started()
                return self.wait_ready(record, progress) if wait else {}

    def stop(self, name: str, force: bool = False) -> bool:
        """Shut the VM down (ACPI, then power off); True if the guest shut down cleanly."""
        with self.changing():
            record = self.store.get_vm(name)
            self._require_domain(record)
            return self.lifecycle.stop(record, "stopped", force=force)

    def delete(self, name: str) -> None:
        """Remove the domain, the VM's files and its record; nothing is left behind."""
        with self.changing():
            self._remove(self.store.get_vm(name))

    def _remove(self, record: VMRecord, reason: str = "deleted") -> None:
        self.lifecycle.destroy(record, self.paths(record.name).root, reason)

    def _require_domain(self, record: VMRecord) -> None:
        if not self.hv.exists(record.domain_name):
            raise NotFound(
                f"VM '{record.name}': libvirt domain '{record.domain_name}' is gone; "
                f"'somnus vm delete {record.name}' cleans up"
            )

    def template_users(self, template: Template) -> list[str]:
        """The VMs whose disks stand on ``template``'s disk."""
        return [r.name for r in self.store.list_vms()
                if disks.backing_file(self.paths(r.name).overlay) == template.disk]

    def delete_template(self, ref: str) -> list[str]:
        """Stop using the template whose folder name starts with ``ref``; its files go too
        unless VMs stand on its disk (returned: those VMs, whose disks are kept)."""
        with self.changing():
            matches = [t for t in self.templates.list() if t.folder.name.startswith(ref)]
            if len(matches) != 1:
                known = ", ".join(t.folder.name for t in self.templates.list()) or "none"
                raise NotFound(f"no single template matches '{ref}' (templates: {known})")
            (template,) = matches
            users = self.template_users(template)
            self.templates.drop(template)
            if not users:
                shutil.rmtree(template.folder, ignore_errors=True)
            return users

    # -- reconcile --------------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Bring records in line with libvirt; return one line per change made.

        Runs under the lock, so a record still 'creating' belongs to a create that was
        killed midway: it is undone. A domain deleted behind our back is reported
        (state 'error'); a VM whose QEMU died while it ran is marked 'error'.
        """
        changes: list[str] = []
        with self.lock():
            for record in self.store.list_vms():
                if record.state is VMState.CREATING:
                    self._remove(record, "an interrupted create was undone")
                    changes.append(f"{record.name}: an interrupted create was undone")
                    continue
                if record.state is VMState.DELETED:
                    self._remove(record, "an interrupted delete was finished")
                    changes.append(f"{record.name}: an interrupted delete was finished")
                    continue
                change = self.lifecycle.reconcile_one(record)
                if change:
                    changes.append(change)
        return changes

    def orphans(self, records: list[VMRecord] | None = None) -> list[Orphan]:
        """Domains of this home (by Somnus's metadata, or by name prefix) no record owns
        (``records``: the VM records, when the caller has just read them)."""
        owned = {r.domain_name for r in (self.store.list_vms() if records is None else records)}
        found = []
        for domain in self.hv.domain_names():
            if domain in owned:
                continue
            try:
                mark = somnus_owner(self.hv.xml(domain))
            except NotFound:
                continue  # gone while we looked
            if mark is not None and mark[1] == str(self.settings.home):
                found.append(Orphan(domain, f"Somnus VM '{mark[0]}' of this home, no record"))
            elif mark is None and domain.startswith(self.settings.domain_prefix):
                found.append(Orphan(domain, f"named with this home's prefix "
                                            f"'{self.settings.domain_prefix}', no record"))
        return found

    def prune(self, orphans: list[Orphan]) -> list[str]:
        """Remove the given orphan domains (power off, undefine); returns their names."""
        removed = []
        with self.changing():
            still = {o.domain_name for o in self.orphans()}
            for orphan in orphans:
                if orphan.domain_name in still:
                    self.lifecycle.forget_domain(orphan.domain_name)
                    removed.append(orphan.domain_name)
        return removed

    # -- reads ------------------------------------------------------------------------------

    def observe(self, record: VMRecord) -> Observed:
        """The VM's live state (pure)."""
        return live_state(record, self.lifecycle.domain_state(record))

    def list_vms(self) -> list[VMRecord]:
        return self.store.list_vms()

    def info(self, name: str, with_agent: bool = True) -> VMInfo:
        record = self.store.get_vm(name)
        observed = self.observe(record)
        info = VMInfo(record=record, observed=observed, paths=self.paths(name),
                      history=self.store.history(name))
        if with_agent and observed.state is VMState.RUNNING:
            with suppress(GuestError):
                info.agent = self.agent(record).info(timeout_s=5)
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
        if len(description) > MAX_DESCRIPTION or any(
                ord(c) < 32 and c not in "\t\n\r" for c in description):
            # It goes into libvirt's XML, which cannot carry control characters.
            raise InvalidInput(f"invalid snapshot description: use at most {MAX_DESCRIPTION} "
                               "characters and no control characters")
        with self.changing():
            record = self.store.get_vm(name)
            self._require_domain(record)
            if any(s.name == snapshot for s in self.hv.snapshot_list(record.domain_name)):
                raise AlreadyExists(f"VM '{name}' has a snapshot '{snapshot}' already")
            if self.lifecycle.current(record) is VMState.SAVED:
                raise Conflict(f"VM '{name}' is saved: bring it back first "
                               f"('somnus activate {name}'), then snapshot it")
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
        """Return the VM to the snapshot: disk, and memory if it was taken running.

        A snapshot with memory brings the VM into RAM: it is admitted and becomes the
        foreground, like ``activate``.
        """
        with self.changing():
            record = self.store.get_vm(name)
            self._require_domain(record)
            snap = next((s for s in self.hv.snapshot_list(record.domain_name)
                         if s.name == snapshot), None)
            if snap is None:
                raise NotFound(f"no snapshot '{snapshot}' of VM '{name}'")
            if snap.state not in ("running", "paused"):
                return self.lifecycle.revert(record, snapshot, running=False)
            with self.foreground.entering(record) as entry:
                state = self.lifecycle.revert(record, snapshot, running=True)
                entry.started()
                if state is VMState.RUNNING:
                    with suppress(GuestError):
                        self.agent(record).sync_clock()
                return state

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        with self.changing():
            record = self.store.get_vm(name)
            self._require_domain(record)
            self.hv.snapshot_delete(record.domain_name, snapshot)

    def console_log(self, name: str) -> Path:
        self.store.get_vm(name)
        return self.paths(name).serial_log
