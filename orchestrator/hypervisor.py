"""Every libvirt call Somnus makes lives here."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import libvirt

from orchestrator.errors import Conflict, HypervisorUnavailable, NotFound
from orchestrator.models import VMState


def _silence_libvirt(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; we raise ours instead."""


libvirt.registerErrorHandler(_silence_libvirt, None)

_RUNNING_STATES = {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED}


def _one_line(exc: libvirt.libvirtError) -> str:
    return (exc.get_error_message() or str(exc)).splitlines()[0]


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
        """Boot the domain (or restore its managed save, if it has one)."""
        dom = self._lookup(name)
        if dom.isActive():
            raise Conflict(f"domain '{name}' is already running")
        try:
            dom.create()
        except libvirt.libvirtError as exc:
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
            return VMState.PAUSED
        if code == libvirt.VIR_DOMAIN_CRASHED:
            return VMState.ERROR
        if code == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0):
            return VMState.SAVED
        return VMState.STOPPED

    def is_running(self, name: str) -> bool:
        try:
            return self.state(name) is VMState.RUNNING
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
