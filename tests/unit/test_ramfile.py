"""A RAM file no QEMU maps: zero pages punched out, sparse copies (real files, no VM)."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator import ramfile

PAGE = ramfile.PAGE


def data_and_zeros() -> bytes:
    """Data, a run of zero pages, data, zeros up to the end: all of it written."""
    return os.urandom(PAGE) + bytes(64 * PAGE) + os.urandom(3 * PAGE) + bytes(1000 * PAGE)


def test_settling_a_ram_file_punches_out_its_zero_pages_and_keeps_its_contents(
    tmp_path: Path,
) -> None:
    ram = tmp_path / "guest.ram"
    contents = data_and_zeros()
    ram.write_bytes(contents)
    done = ramfile.settle_file(ram)
    assert done is not None
    assert ram.read_bytes() == contents  # zeros read back as zeros
    assert ram.stat().st_blocks * 512 == 4 * PAGE  # only the four data pages stay on disk
    assert ramfile.settle_file(tmp_path / "absent") is None


def test_a_sparse_copy_keeps_contents_holes_and_the_targets_owner(tmp_path: Path) -> None:
    source, target = tmp_path / "template.ram", tmp_path / "guest.ram"
    contents = data_and_zeros()
    source.write_bytes(contents)
    ramfile.settle_file(source)
    target.write_bytes(b"an older, longer guest memory" * 100_000)
    target.chmod(0o640)
    copied = ramfile.copy_sparse(source, target)
    assert target.read_bytes() == contents
    assert copied == 4 * PAGE and target.stat().st_blocks * 512 == 4 * PAGE
    assert target.stat().st_mode & 0o777 == 0o640  # the same file, written over
    fresh = tmp_path / "new.ram"
    ramfile.copy_sparse(source, fresh)
    assert fresh.read_bytes() == contents
