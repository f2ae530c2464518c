"""Pre-booted templates: a VM's first boot is done once per image and shape.

The first VM of a shape (image, subsystem, the whole domain definition, QEMU) boots cold.
Once it is ready it is *captured*: it is saved to the template's folder, its disk becomes
the template's frozen disk (the VM goes on in a thin overlay on it) and it comes back.
Each later VM of that shape starts from that save, on an overlay of the frozen disk, and
then takes its own identity (:mod:`orchestrator.identity`): seconds instead of a cold boot.

The save has one of two forms, decided by the shape (whose domain says where RAM is):
- RAM in a file (the default): QEMU's device state (``devices.state``, ~1 MiB) and a
  sparse copy of the RAM file (``guest.ram``); a new VM gets a sparse copy of that file
  as its own RAM and loads the device state (``Lifecycle.boot_from_state``).
- anonymous RAM: libvirt's save image (``state.save``); a new VM restores a copy whose
  header names it (:mod:`orchestrator.saveimage`).

A template lives in ``<home>/templates/<shape>-<id>/``: its save, ``disk.qcow2``,
``serial.log`` and ``template.json``, written last, so a folder without it is an unfinished
capture. Dropping a template removes its save and its ``template.json``; its disk stays,
because VMs made from it stand on it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from orchestrator.credentials import write_private

MANIFEST = "template.json"


class TemplateManifest(BaseModel):
    """What a template is, and the identity its guest has until a new VM takes its own."""

    shape: str
    facts: dict[str, str]  # what the shape hash was made of, for people
    vm_name: str  # the VM it was captured from
    token: str  # that VM's agent token, which a new VM's agent answers until re-keyed
    host_public: str  # that VM's SSH host key, which a new VM shows until re-keyed
    created_at: datetime


def shape_key(domain_xml: str, facts: dict[str, str]) -> str:
    """The hash that decides which VMs can share a template.

    ``domain_xml`` is the domain a VM of the shape would get, with placeholder names,
    paths and ports: every device, size and setting that a save depends on. ``facts``
    add what the XML does not show (image, subsystem, QEMU version, seed templates).
    """
    digest = hashlib.sha256(domain_xml.encode())
    digest.update(json.dumps(facts, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def tree_hash(folder: Path) -> str:
    """sha256 over the relative paths and contents of every file under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Capture:
    """A template's folder: where its save and its frozen disk are (or go, while it is
    being captured)."""

    folder: Path

    @property
    def state(self) -> Path:
        """libvirt's save image (a VM with anonymous RAM)."""
        return self.folder / "state.save"

    @property
    def devices(self) -> Path:
        """QEMU's device state (a VM whose RAM is a file; the RAM is ``ram``)."""
        return self.folder / "devices.state"

    @property
    def ram(self) -> Path:
        return self.folder / "guest.ram"

    @property
    def in_place(self) -> bool:
        """Saved as device state plus RAM file (not as a libvirt save image)?"""
        return self.devices.exists()

    @property
    def saved(self) -> bool:
        """Is there a whole save (either form) and the frozen disk?"""
        whole = self.state.exists() or (self.devices.exists() and self.ram.exists())
        return whole and self.disk.exists()

    @property
    def disk(self) -> Path:
        return self.folder / "disk.qcow2"

    @property
    def boot_log(self) -> Path:
        """The serial log of the first VM's cold boot: what a VM made from it booted."""
        return self.folder / "serial.log"


@dataclass(frozen=True)
class Template(Capture):
    """A finished capture, with what it is (``template.json``)."""

    manifest: TemplateManifest

    @property
    def size_mib(self) -> int:
        """What its save takes on disk."""
        parts = (self.devices, self.ram) if self.in_place else (self.state,)
        return sum(p.stat().st_blocks * 512 for p in parts if p.exists()) // (1024 * 1024)


class Templates:
    """The templates of one Somnus home."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find(self, shape: str) -> Template | None:
        """The finished template of ``shape``, if there is one."""
        for manifest_path in sorted(self.root.glob(f"{shape}-*/{MANIFEST}")):
            if Capture(manifest_path.parent).saved:
                manifest = TemplateManifest.model_validate_json(manifest_path.read_text())
                return Template(manifest_path.parent, manifest)
        return None

    def list(self) -> list[Template]:
        found = []
        for manifest_path in sorted(self.root.glob(f"*/{MANIFEST}")):
            manifest = TemplateManifest.model_validate_json(manifest_path.read_text())
            found.append(Template(manifest_path.parent, manifest))
        return found

    def begin(self, shape: str) -> Capture:
        """A new folder for a capture of ``shape``; unfinished captures of it are removed
        (nothing stands on their disks: a VM's overlay moves onto a disk only after the
        manifest is written)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for folder in self.root.glob(f"{shape}-*"):
            if not (folder / MANIFEST).exists():
                shutil.rmtree(folder, ignore_errors=True)
        folder = self.root / f"{shape}-{secrets.token_hex(4)}"
        folder.mkdir(mode=0o755)  # QEMU runs as libvirt's user: it reads the disk here
        return Capture(folder)

    def finish(self, capture: Capture, shape: str, facts: dict[str, str], vm_name: str,
               token: str, host_public: str) -> Template:
        """Write the manifest (mode 0600: it holds a token): the template is usable."""
        manifest = TemplateManifest(shape=shape, facts=facts, vm_name=vm_name, token=token,
                                    host_public=host_public, created_at=datetime.now(UTC))
        write_private(capture.folder / MANIFEST, manifest.model_dump_json(indent=2).encode())
        return Template(capture.folder, manifest)

    def drop(self, template: Template) -> None:
        """Stop using ``template`` (its save failed to restore, say). The disk stays."""
        (template.folder / MANIFEST).unlink(missing_ok=True)
        for save in (template.state, template.devices, template.ram):
            save.unlink(missing_ok=True)
