"""Paging a process's shared RAM file out and back: a real process, a real mapping."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.eviction import RAM_FILE_NAME, page_out, ram_mappings, resident_mib

SIZE_MIB = 32
# A stand-in for QEMU: maps a sparse file shared, dirties every page, then checks the
# data is intact when told to (after it was paged out under it).
GUEST = f"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, {SIZE_MIB} << 20)
ram = mmap.mmap(fd, {SIZE_MIB} << 20, mmap.MAP_SHARED)
for page in range(0, len(ram), 4096):
    ram[page] = (page // 4096) % 251
print("ready", flush=True)
sys.stdin.readline()
ok = all(ram[page] == (page // 4096) % 251 for page in range(0, len(ram), 4096))
print("intact" if ok else "corrupt", flush=True)
"""


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", GUEST, str(tmp_path / RAM_FILE_NAME)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def test_page_out_empties_the_mapping_and_the_data_survives(guest: subprocess.Popen[str],
                                                             tmp_path: Path) -> None:
    [mapping] = ram_mappings(guest.pid)
    assert mapping.path == tmp_path / RAM_FILE_NAME and mapping.size == SIZE_MIB << 20
    assert resident_mib(guest.pid) == SIZE_MIB

    eviction = page_out(guest.pid)

    assert eviction is not None and eviction.before_mib == SIZE_MIB
    assert eviction.after_mib <= 1  # dirty pages written back, then unmapped and dropped
    assert os.stat(mapping.path).st_blocks * 512 >= SIZE_MIB << 20  # on disk now
    assert guest.stdin is not None and guest.stdout is not None
    guest.stdin.write("check\n")
    guest.stdin.flush()
    assert guest.stdout.readline().strip() == "intact"  # faulted back in from the file


def test_a_process_without_a_ram_file_has_nothing_to_page_out() -> None:
    assert ram_mappings(os.getpid()) == []
    assert resident_mib(os.getpid()) is None
    assert page_out(os.getpid()) is None


def test_a_gone_process_has_no_mappings() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert ram_mappings(proc.pid) == [] and page_out(proc.pid) is None

