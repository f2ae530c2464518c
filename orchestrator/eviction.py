"""Paging a paused VM's file-backed RAM out to disk.

With ``Settings.ram_file`` the guest's RAM is a shared mapping of a file in the VM's
folder (``orchestrator.domain_xml.ram_file_args``). A paused
QEMU then needs almost no host RAM: write the dirty pages back (``fsync``), unmap them
from QEMU (``process_madvise(MADV_PAGEOUT)``, which skips dirty pages, hence the fsync
first) and drop them from the page cache (``posix_fadvise(DONTNEED)``). Resuming is
libvirt's ``resume``: the guest faults its working set back in from the file (a
``WILLNEED`` read-ahead of the whole file measured no faster, so there is none).
Linux only (process_madvise: 5.10).

This touches processes and files, never libvirt: the caller finds the QEMU pid.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.paths import RAM_FILE_NAME

_MADV_PAGEOUT = 21
_SYS_PROCESS_MADVISE = 440  # x86_64 and (by the generic table) aarch64
_libc = ctypes.CDLL(None, use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


@dataclass(frozen=True)
class RamMapping:
    """Where a process maps a guest RAM file: its address range and the file."""

    start: int
    end: int
    path: Path

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Eviction:
    """What one page-out did: resident RAM-file MiB before and after, and how long."""

    before_mib: int
    after_mib: int
    seconds: float


def ram_mappings(pid: int, file_name: str = RAM_FILE_NAME) -> list[RamMapping]:
    """The shared mappings of guest RAM files in ``pid``; empty when its RAM is anonymous."""
    found = []
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or fields[1][3] != "s":
                    continue
                path = Path(fields[5].strip())
                if path.name == file_name:
                    start, end = (int(part, 16) for part in fields[0].split("-"))
                    found.append(RamMapping(start, end, path))
    except (FileNotFoundError, ProcessLookupError):
        return []
    return found


def resident_mib(pid: int, file_name: str = RAM_FILE_NAME) -> int | None:
    """MiB of guest RAM resident in ``pid`` (from smaps); None when its RAM is not a file."""
    ranges = {(m.start, m.end) for m in ram_mappings(pid, file_name)}
    if not ranges:
        return None
    total_kib, inside = 0, False
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as smaps:
            for line in smaps:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    start, end = (int(part, 16) for part in head.split("-"))
                    inside = (start, end) in ranges
                elif inside and head == "Rss:":
                    total_kib += int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return total_kib // 1024


def page_out(pid: int, file_name: str = RAM_FILE_NAME) -> Eviction | None:
    """Move a (paused) process's RAM-file pages to disk; None when it has no RAM file.

    Raises OSError when the kernel refuses (no process_madvise, no permission).
    """
    mappings = ram_mappings(pid, file_name)
    if not mappings:
        return None
    started = time.monotonic()
    before = resident_mib(pid, file_name) or 0
    pidfd = os.pidfd_open(pid)
    try:
        for path in {m.path for m in mappings}:
            fd = os.open(path, os.O_RDWR)
            try:
                os.fsync(fd)  # PAGEOUT skips dirty pages: they must be clean first
                for mapping in (m for m in mappings if m.path == path):
                    _pageout(pidfd, mapping)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    after = resident_mib(pid, file_name) or 0
    return Eviction(before, after, round(time.monotonic() - started, 3))


def _pageout(pidfd: int, mapping: RamMapping) -> None:
    """``process_madvise(MADV_PAGEOUT)`` over one mapping (no wrapper in Python 3.11)."""
    iov = _IoVec(mapping.start, mapping.size)
    done = _libc.syscall(_SYS_PROCESS_MADVISE, pidfd, ctypes.byref(iov), 1, _MADV_PAGEOUT, 0)
    if done < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"process_madvise(MADV_PAGEOUT): {os.strerror(errno)}")
