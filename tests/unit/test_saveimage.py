"""The save-image header: a copy for another domain keeps libvirt's layout and the stream."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.saveimage import (
    ALIGN,
    HEADER,
    MAGIC,
    PARTIAL,
    BadSaveImage,
    read_header,
    write_for_domain,
)

STREAM = os.urandom(3 * 65536 + 17)  # stands in for QEMU's migration stream
COOKIE = "<cookie>\n  <slirpHelper/>\n</cookie>\n"


def libvirt_save(path: Path, xml: str, magic: bytes = MAGIC, fmt: int = 0,
                 padding: int = 65536) -> Path:
    """A save image laid out as libvirt 9.0 writes one (XML, cookie, generous padding)."""
    data = xml.encode() + b"\0" + COOKIE.encode() + b"\0"
    data_len = len(data) + padding
    header = HEADER.pack(magic, 2, data_len, 1, fmt, len(xml) + 1, *([0] * 14))
    path.write_bytes(header + data.ljust(data_len, b"\0") + STREAM)
    return path


def test_a_copy_names_the_new_domain_and_keeps_cookie_and_stream(tmp_path: Path) -> None:
    source = libvirt_save(tmp_path / "template.save", "<domain><name>first</name></domain>")
    target = tmp_path / "second.save"
    new_xml = "<domain><name>second</name><uuid>" + "ab" * 16 + "</uuid></domain>"
    write_for_domain(source, target, new_xml)

    header = read_header(target)
    assert header.xml == new_xml and header.cookie == COOKIE and header.was_running
    assert header.stream_offset % ALIGN == 0
    assert target.read_bytes()[header.stream_offset:] == STREAM
    assert (target.stat().st_mode & 0o777) == 0o600
    assert read_header(source).xml == "<domain><name>first</name></domain>"  # untouched
    assert not list(tmp_path.glob("*.part"))


def test_a_longer_xml_than_the_padding_still_fits(tmp_path: Path) -> None:
    source = libvirt_save(tmp_path / "t.save", "<domain/>", padding=0)
    long_xml = "<domain>" + "<x/>" * 5000 + "</domain>"
    write_for_domain(source, tmp_path / "copy.save", long_xml)
    header = read_header(tmp_path / "copy.save")
    assert header.xml == long_xml and header.cookie == COOKIE
    assert (tmp_path / "copy.save").read_bytes()[header.stream_offset:] == STREAM


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"magic": PARTIAL}, "did not finish"),
    ({"magic": b"NotALibvirtSave!"}, "not a version-2"),
    ({"fmt": 1}, "compressed"),
])
def test_what_libvirt_did_not_write_whole_is_refused(tmp_path: Path, kwargs: dict[str, object],
                                                     words: str) -> None:
    source = libvirt_save(tmp_path / "bad.save", "<domain/>", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(BadSaveImage, match=words):
        write_for_domain(source, tmp_path / "copy.save", "<domain/>")
    assert not (tmp_path / "copy.save").exists() and not list(tmp_path.glob("*.part"))


def test_a_truncated_header_is_refused(tmp_path: Path) -> None:
    whole = libvirt_save(tmp_path / "whole.save", "<domain/>").read_bytes()
    for cut in (10, HEADER.size + 20):
        (tmp_path / "cut.save").write_bytes(whole[:cut])
        with pytest.raises(BadSaveImage):
            read_header(tmp_path / "cut.save")
    with pytest.raises(BadSaveImage, match="cannot read"):
        read_header(tmp_path / "missing.save")
