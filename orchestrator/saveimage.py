"""libvirt's QEMU save-image format: read a save's header, write a copy for another domain.

A save made by ``virDomainSave`` is a 92-byte header, the domain's XML and libvirt's
cookie (NUL-terminated, padded), then QEMU's migration stream. libvirt's own API refuses
to restore a save under another name or UUID ("Target domain name ... does not match
source"), so a new VM made from a template gets a copy whose header carries the new
VM's XML; the migration stream after it is the template's, byte for byte. The layout is
``virQEMUSaveHeader`` in libvirt's ``src/qemu/qemu_saveimage.h`` (version 2 since 2011).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from core.errors import HypervisorUnavailable

MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"  # a save libvirt never finished writing
VERSION = 2
RAW_FORMAT = 0  # uncompressed; the only format a template is made in
# magic, version, data_len, was_running, format, cookieOffset, unused[14]; host byte order.
HEADER = struct.Struct("=16s5I14I")
# The stream starts on a page boundary, as in libvirt's own saves.
ALIGN = 4096


class BadSaveImage(HypervisorUnavailable):
    """A file that is not a complete, uncompressed libvirt save image."""


@dataclass(frozen=True)
class SaveHeader:
    """What precedes the migration stream in a save image."""

    xml: str
    cookie: str
    was_running: bool
    stream_offset: int  # where QEMU's migration stream starts in the file


def read_header(path: Path) -> SaveHeader:
    """The header of the save image at ``path``; BadSaveImage if libvirt did not write it."""
    try:
        with path.open("rb") as f:
            raw = f.read(HEADER.size)
            if len(raw) < HEADER.size:
                raise BadSaveImage(f"{path} is too short to be a save image")
            magic, version, data_len, was_running, fmt, cookie_at, *_unused = HEADER.unpack(raw)
            if magic == PARTIAL:
                raise BadSaveImage(f"{path} is a save libvirt did not finish writing")
            if magic != MAGIC or version != VERSION:
                raise BadSaveImage(f"{path} is not a version-{VERSION} libvirt save image")
            if fmt != RAW_FORMAT:
                raise BadSaveImage(f"{path} is compressed (format {fmt}): only raw is read")
            data = f.read(data_len)
    except OSError as exc:
        raise BadSaveImage(f"cannot read the save image {path}: {exc}") from exc
    if len(data) < data_len or (cookie_at and cookie_at >= data_len):
        raise BadSaveImage(f"{path} ends inside its header")
    xml_end = data.find(b"\0")
    cookie = data[cookie_at:data.find(b"\0", cookie_at)] if cookie_at else b""
    return SaveHeader(
        xml=data[:xml_end if xml_end >= 0 else cookie_at or data_len].decode(),
        cookie=cookie.decode(),
        was_running=bool(was_running),
        stream_offset=HEADER.size + data_len,
    )


def write_for_domain(source: Path, target: Path, domain_xml: str) -> None:
    """Copy the save image ``source`` to ``target`` with ``domain_xml`` in its header.

    The copy is written under a temporary name and renamed into place, so a crash never
    leaves a half-written image where libvirt would restore it. Mode 0600: it holds the
    guest's memory.
    """
    header = read_header(source)
    xml = domain_xml.encode() + b"\0"
    cookie = header.cookie.encode() + b"\0" if header.cookie else b""
    data_len = len(xml) + len(cookie)
    data_len += -(HEADER.size + data_len) % ALIGN
    fields = HEADER.pack(MAGIC, VERSION, data_len, int(header.was_running), RAW_FORMAT,
                         len(xml) if cookie else 0, *([0] * 14))
    partial = target.with_name(target.name + ".part")
    try:
        with source.open("rb") as src, partial.open("wb") as dst:
            partial.chmod(0o600)
            dst.write(fields + (xml + cookie).ljust(data_len, b"\0"))
            size = os.fstat(src.fileno()).st_size - header.stream_offset
            src_at, dst_at = header.stream_offset, dst.tell()
            while size > 0:  # in the kernel: no copy through Python
                copied = os.copy_file_range(src.fileno(), dst.fileno(), size, src_at, dst_at)
                if copied == 0:
                    break
                size, src_at, dst_at = size - copied, src_at + copied, dst_at + copied
        partial.rename(target)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
