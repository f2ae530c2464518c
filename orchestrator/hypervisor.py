"""Every libvirt call Somnus makes lives here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import libvirt
import libvirt_qemu

from core.errors import Conflict, HypervisorUnavailable, NotFound
from orchestrator.models import VMState


def _silence_libvirt(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; we raise ours instead."""


libvirt.registerErrorHandler(_silence_libvirt, None)

@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    created: int  # Unix time
    state: str  # the domain's state when taken: 'running' snapshots include memory
    description: str


_RUNNING_STATES = {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED}
# The migration capability that leaves RAM blocks mapped shared (our RAM file) out of
# the stream: a save writes the device state only (~1 MiB), the RAM stays in its file.
_IGNORE_SHARED = "x-ignore-shared"
_STATE_FD = "somnus-state"
# libvirt's QEMU driver state folder is owned by the user its QEMU processes run as.
_QEMU_STATE_DIR = Path("/var/lib/libvirt/qemu")
# Where libvirt's QEMU driver keeps each domain's log: QEMU's own last words on a crash.
_QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")

# Why a domain is not running, in words a failing test or a user can act on.
_STATE_WORDS = {
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended by the guest",
}
_REASON_WORDS = {
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR):
        "a disk I/O error: is the host's disk full?",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER): "by a client",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_SAVE): "while saving",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION): "migrating or restoring",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_CRASHED): "the guest crashed",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN): "the guest powered off",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED): "destroyed",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED): "QEMU died",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED): "saved",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED): "it failed to start",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DAEMON): "libvirtd lost it",
    (libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_CRASHED_PANICKED): "the guest kernel panicked",
}


# libvirt-python raises SystemError (caused by a UnicodeDecodeError) when an error
# message holds bytes that are not UTF-8, e.g. QEMU quoting a corrupt save file.
LibvirtFailure = (libvirt.libvirtError, SystemError)


def _capability(on: bool) -> dict[str, Any]:
    return {"capabilities": [{"capability": _IGNORE_SHARED, "state": on}]}


def _last_line(path: Path, max_chars: int = 240) -> str:
    """The last non-empty line of a (possibly large, possibly missing) log file."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            lines = log.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:max_chars] if lines else ""


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return (exc.get_error_message() or str(exc)).splitlines()[0]
    return f"libvirt failed with an undecodable message ({exc.__cause__ or exc})"


class Hypervisor:
    """A connection to libvirt with the few verbs the orchestrator needs."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(
                f"cannot connect to libvirt at {uri}: {_one_line(exc)} "
                "(is libvirtd running? try 'libvirtd -d')"
            ) from exc

    def alive(self) -> bool:
        """Whether the connection still answers (libvirtd may have restarted)."""
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()

    def _lookup(self, name: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"libvirt has no domain '{name}'") from exc
            raise HypervisorUnavailable(f"libvirt lookup of '{name}': {_one_line(exc)}") from exc

    def exists(self, name: str) -> bool:
        try:
            self._lookup(name)
        except NotFound:
            return False
        return True

    def define(self, xml: str) -> None:
        try:
            self.conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"libvirt refused the domain: {_one_line(exc)}") from exc

    def start(self, name: str) -> None:
        """Boot the domain, or restore its managed save, and leave it running.

        A save taken while the domain was paused restores paused: resume it, since
        'start' always means running.
        """
        dom = self._lookup(name)
        if dom.isActive():
            raise Conflict(f"domain '{name}' is already running")
        try:
            dom.create()
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        except LibvirtFailure as exc:
            raise HypervisorUnavailable(f"cannot start '{name}': {_one_line(exc)}") from exc

    def stop(self, name: str, timeout_s: float = 60.0, force: bool = False) -> bool:
        """Shut the domain down; ACPI first, power off after ``timeout_s``.

        Returns True when the guest shut down cleanly.
        """
        dom = self._lookup(name)
        if not dom.isActive():
            return True
        if not force:
            with contextlib.suppress(libvirt.libvirtError):
                dom.shutdown()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return True
                time.sleep(0.5)
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                raise HypervisorUnavailable(f"cannot stop '{name}': {_one_line(exc)}") from exc
        return False

    def pause(self, name: str) -> None:
        """Freeze the vCPUs; RAM stays allocated, so resuming is instant."""
        self._call(name, "pause", lambda d: d.suspend())

    def resume(self, name: str) -> None:
        self._call(name, "resume", lambda d: d.resume())

    def managed_save(self, name: str) -> None:
        """Write the guest's RAM and device state to libvirt's save file and stop it.

        On failure (e.g. a full disk) libvirt leaves the domain as it was.
        """
        self._call(name, "save", lambda d: d.managedSave(0))

    def save_to_file(self, name: str, path: Path) -> None:
        """Save the guest's RAM and device state to ``path`` (libvirt's save image) and stop it.

        On failure libvirt leaves the domain as it was.
        """
        self._call(name, "save", lambda d: d.save(str(path)))

    def restore_from_file(self, path: Path) -> None:
        """Start the domain a save image names from that image (the file stays)."""
        try:
            self.conn.restoreFlags(str(path), None, 0)
        except LibvirtFailure as exc:
            raise HypervisorUnavailable(f"cannot restore {path.name}: {_one_line(exc)}") from exc

    def migratable_xml(self, name: str) -> str:
        """The domain's definition as libvirt writes it into a save image."""
        flags = (libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
                 | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        return str(self._lookup(name).XMLDesc(flags))

    def definition(self, name: str) -> str:
        """The domain's persistent definition, secrets included (for a live variant of it)."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
        return str(self._lookup(name).XMLDesc(flags))

    def has_managed_save(self, name: str) -> bool:
        return bool(self._lookup(name).hasManagedSaveImage(0))

    def remove_managed_save(self, name: str) -> None:
        self._call(name, "drop the save file of", lambda d: d.managedSaveRemove(0))

    def managed_save_path(self, name: str) -> Path:
        """Where libvirt's QEMU driver keeps the managed save (fixed for qemu:///system)."""
        return _QEMU_STATE_DIR / "save" / f"{name}.save"

    def qemu_owner(self) -> tuple[int, int]:
        """(uid, gid) QEMU runs as: files it opens itself (its RAM file) must be theirs."""
        try:
            folder = _QEMU_STATE_DIR.stat()
        except FileNotFoundError:  # another driver (libvirt's test driver): no QEMU user
            return os.getuid(), os.getgid()
        return folder.st_uid, folder.st_gid

    # -- saving in place: the device state only, guest RAM stays in its file -------------
    # libvirt 9.0 cannot set x-ignore-shared, so these talk to QEMU's monitor through
    # libvirt (virDomainQemuMonitorCommandWithFiles); libvirt marks the domain tainted.

    def save_device_state(self, name: str, path: Path, timeout_s: float = 60.0) -> None:
        """Write a paused domain's device state to ``path``; its RAM file is left out.

        The domain stays paused (its QEMU can then go). On failure the capability is
        turned off again, so a later managed save still carries the RAM.
        """
        dom = self._lookup(name)
        self._qmp(dom, "migrate-set-capabilities", _capability(True))
        try:
            self._hand_file(dom, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            self._qmp(dom, "migrate", {"uri": f"fd:{_STATE_FD}"})
            self._wait_migration(dom, "save", timeout_s)
        except BaseException:
            with contextlib.suppress(HypervisorUnavailable):
                self._qmp(dom, "migrate_cancel")
                self._qmp(dom, "migrate-set-capabilities", _capability(False))
            raise

    def start_waiting(self, name: str, domain_xml: str) -> None:
        """Start the domain's QEMU from ``domain_xml`` (its definition plus ``-incoming
        defer``) without running it: it maps its RAM file and waits for a device state.

        The persistent definition stays as it is; this live one ends with the QEMU.
        """
        try:
            self.conn.createXML(domain_xml, libvirt.VIR_DOMAIN_START_PAUSED)
        except LibvirtFailure as exc:
            raise HypervisorUnavailable(f"cannot start '{name}' for a restore: "
                                        f"{_one_line(exc)}") from exc

    def load_device_state(self, name: str, path: Path, timeout_s: float = 60.0) -> None:
        """Load ``path`` into a waiting domain (``start_waiting``); it stays paused.

        A state that does not fit (corrupt, another QEMU) fails here: QEMU cannot
        take another one, so the caller powers it off.
        """
        dom = self._lookup(name)
        self._qmp(dom, "migrate-set-capabilities", _capability(True))
        self._hand_file(dom, path, os.O_RDONLY)
        self._qmp(dom, "migrate-incoming", {"uri": f"fd:{_STATE_FD}"})
        self._wait_migration(dom, "restore", timeout_s)
        # Off again: a later managed save of this QEMU must carry the RAM (and a QEMU
        # restoring that save, with the capability off, would refuse it).
        self._qmp(dom, "migrate-set-capabilities", _capability(False))

    def _hand_file(self, dom: libvirt.virDomain, path: Path, flags: int) -> None:
        """Open ``path`` here and pass the descriptor to QEMU as ``_STATE_FD``: QEMU runs
        as libvirt's user and need not be able to open the VM's folder itself."""
        fd = os.open(path, flags, 0o600)
        try:
            self._qmp(dom, "getfd", {"fdname": _STATE_FD}, files=[fd])
        finally:
            os.close(fd)

    def _wait_migration(self, dom: libvirt.virDomain, verb: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            progress = self._qmp(dom, "query-migrate")
            status = progress.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                why = progress.get("error-desc", status)
                raise HypervisorUnavailable(f"cannot {verb} '{dom.name()}': QEMU says {why}")
            if time.monotonic() > deadline:
                raise HypervisorUnavailable(f"cannot {verb} '{dom.name()}': no end after "
                                            f"{timeout_s:.0f} s (migration {status})")
            time.sleep(0.005)

    def _qmp(self, dom: libvirt.virDomain, command: str, arguments: dict[str, Any] | None = None,
             files: list[int] | None = None) -> Any:
        """One QMP command to the domain's QEMU, through libvirt; its ``return`` value."""
        text = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
        try:
            if files:
                reply = libvirt_qemu.qemuMonitorCommandWithFiles(dom, text, files, 0)[0]
            else:
                reply = libvirt_qemu.qemuMonitorCommand(dom, text, 0)
        except LibvirtFailure as exc:
            raise HypervisorUnavailable(f"QEMU monitor of '{dom.name()}' ({command}): "
                                        f"{_one_line(exc)}") from exc
        answer = json.loads(reply)
        if "error" in answer:
            raise HypervisorUnavailable(f"QEMU refused {command} for '{dom.name()}': "
                                        f"{answer['error'].get('desc', answer['error'])}")
        return answer.get("return")

    def save_folder_free_mib(self, name: str, fallback: Path) -> int:
        """Free MiB where the domain's managed save goes (``fallback`` if that folder is absent)."""
        folder = self.managed_save_path(name).parent
        probe = folder if folder.exists() else fallback
        return shutil.disk_usage(probe).free // (1024 * 1024)

    def qemu_pid(self, name: str) -> int | None:
        """PID of the domain's QEMU process, from libvirt's pid file."""
        pid_file = Path("/run/libvirt/qemu") / f"{name}.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def memory_stats(self, name: str) -> dict[str, int]:
        """libvirt's memory statistics for a running domain (KiB), e.g. 'rss', 'actual'."""
        dom = self._lookup(name)
        if not dom.isActive():
            return {}
        try:
            return {str(k): int(v) for k, v in dom.memoryStats().items()}
        except libvirt.libvirtError:
            return {}

    def bulk_stats(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """libvirt's bulk statistics of every active domain whose name starts with ``prefix``:
        state, CPU time (ns), balloon (KiB: ``balloon.rss`` is QEMU's resident memory) and
        block I/O, as ``virsh domstats`` names them. NOWAIT: a domain in a save or
        migration answers what needs no job lock instead of blocking the caller."""
        groups = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                  | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_BLOCK
                  | libvirt.VIR_DOMAIN_STATS_VCPU)
        flags = (libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
                 | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
        try:
            found = self.conn.getAllDomainStats(groups, flags)
        except LibvirtFailure as exc:
            raise HypervisorUnavailable(f"cannot read domain statistics: {_one_line(exc)}") \
                from exc
        return {dom.name(): dict(stats) for dom, stats in found if dom.name().startswith(prefix)}

    # -- snapshots ------------------------------------------------------------------------

    def snapshot_create(self, name: str, snapshot: str, description: str = "") -> None:
        """Internal qcow2 snapshot; with the memory state when the domain runs."""
        xml = (f"<domainsnapshot><name>{escape(snapshot)}</name>"
               f"<description>{escape(description)}</description></domainsnapshot>")
        self._call(name, "snapshot", lambda d: d.snapshotCreateXML(xml, 0))

    def snapshot_list(self, name: str) -> list[SnapshotInfo]:
        dom = self._lookup(name)
        found = []
        for snap in dom.listAllSnapshots(0):
            root = ET.fromstring(snap.getXMLDesc(0))
            found.append(SnapshotInfo(
                name=snap.getName(),
                created=int(root.findtext("creationTime") or 0),
                state=root.findtext("state") or "",
                description=root.findtext("description") or "",
            ))
        return sorted(found, key=lambda s: s.created)

    def snapshot_revert(self, name: str, snapshot: str) -> None:
        dom = self._lookup(name)
        snap = self._snapshot(dom, snapshot)
        self._call(name, "revert", lambda d: d.revertToSnapshot(snap, 0))

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        snap = self._snapshot(self._lookup(name), snapshot)
        self._call(name, "delete snapshot of", lambda _d: snap.delete(0))

    def _snapshot(self, dom: libvirt.virDomain, snapshot: str) -> libvirt.virDomainSnapshot:
        try:
            return dom.snapshotLookupByName(snapshot, 0)
        except libvirt.libvirtError as exc:
            raise NotFound(f"no snapshot '{snapshot}' of '{dom.name()}'") from exc

    def _call(self, name: str, verb: str, action: Callable[[libvirt.virDomain], object]) -> None:
        dom = self._lookup(name)
        try:
            action(dom)
        except LibvirtFailure as exc:
            raise HypervisorUnavailable(f"cannot {verb} '{name}': {_one_line(exc)}") from exc

    def undefine(self, name: str) -> None:
        """Power off and forget the domain, with its managed save and snapshot metadata."""
        try:
            dom = self._lookup(name)
        except NotFound:
            return
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"cannot undefine '{name}': {_one_line(exc)}") from exc

    def state(self, name: str) -> VMState:
        """The domain's state in Somnus terms."""
        dom = self._lookup(name)
        code, _reason = dom.state()
        if code in _RUNNING_STATES:
            return VMState.RUNNING
        if code == libvirt.VIR_DOMAIN_PAUSED:
            # A QEMU waiting for its device state (``start_waiting``) is a saved VM.
            return VMState.SAVED if self._waiting(dom) else VMState.PAUSED
        if code == libvirt.VIR_DOMAIN_CRASHED:
            return VMState.ERROR
        if code == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0):
            return VMState.SAVED
        return VMState.STOPPED

    def _waiting(self, dom: libvirt.virDomain) -> bool:
        try:
            return bool(self._qmp(dom, "query-status").get("status") == "inmigrate")
        except HypervisorUnavailable:
            return False  # gone meanwhile: the next read tells

    def is_running(self, name: str) -> bool:
        try:
            return self.state(name) is VMState.RUNNING
        except NotFound:
            return False

    def why_down(self, name: str) -> str | None:
        """None while the domain runs; otherwise its state, libvirt's reason and the last
        line QEMU logged (a crash, a signal, a full disk say so there)."""
        try:
            code, reason = self._lookup(name).state()
        except NotFound:
            return "its domain is gone"
        if code in _RUNNING_STATES:
            return None
        words = _STATE_WORDS.get(code, f"in state {code}")
        if because := _REASON_WORDS.get((code, reason)):
            words += f" ({because})"
        if last := _last_line(_QEMU_LOG_DIR / f"{name}.log"):
            words += f"; QEMU's log ends: {last}"
        return words

    def is_active(self, name: str) -> bool:
        """True while a QEMU process exists for the domain (running or paused)."""
        try:
            return bool(self._lookup(name).isActive())
        except NotFound:
            return False

    def domain_names(self, prefix: str = "") -> list[str]:
        try:
            domains = self.conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"cannot list domains: {_one_line(exc)}") from exc
        return sorted(d.name() for d in domains if d.name().startswith(prefix))

    def xml(self, name: str) -> str:
        return str(self._lookup(name).XMLDesc(0))

    def version(self) -> tuple[str, str]:
        """(libvirt version, hypervisor version) as dotted strings."""

        def dotted(n: int) -> str:
            return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"

        return dotted(self.conn.getLibVersion()), dotted(self.conn.getVersion())
