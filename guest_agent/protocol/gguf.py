"""Read a GGUF file's key/value metadata without loading the model.

Used to decide on quantization before llama.cpp opens the file; arrays (the
vocabulary, merges) are skipped rather than decoded.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9

MetaValue = int | float | bool | str | None


class GGUFError(ValueError):
    """The file is not a readable GGUF file."""


def is_gguf(path: Path) -> bool:
    """True when the file starts with the GGUF magic bytes."""
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _read(f: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    value: int | float | bool = struct.unpack(fmt, data)[0]
    return value


def _read_string(f: BinaryIO) -> str:
    length = int(_read(f, "<Q"))
    return f.read(length).decode("utf-8", errors="replace")


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype == _STRING:
        f.seek(int(_read(f, "<Q")), 1)
    elif vtype == _ARRAY:
        inner = int(_read(f, "<I"))
        count = int(_read(f, "<Q"))
        if inner in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[inner]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, inner)
    elif vtype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[vtype]), 1)
    else:
        raise GGUFError(f"unknown GGUF value type {vtype}")


def read_metadata(path: Path) -> dict[str, MetaValue]:
    """All scalar and string metadata; array values are reported as None."""
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        version = int(_read(f, "<I"))
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old")
        _read(f, "<Q")  # tensor count
        kv_count = int(_read(f, "<Q"))
        meta: dict[str, MetaValue] = {}
        for _ in range(kv_count):
            key = _read_string(f)
            vtype = int(_read(f, "<I"))
            if vtype == _STRING:
                meta[key] = _read_string(f)
            elif vtype in _SCALARS:
                meta[key] = _read(f, _SCALARS[vtype])
            else:
                _skip_value(f, vtype)
                meta[key] = None
        return meta


def context_length(meta: dict[str, MetaValue]) -> int | None:
    """The trained context length (``<architecture>.context_length``)."""
    arch = meta.get("general.architecture")
    value = meta.get(f"{arch}.context_length") if isinstance(arch, str) else None
    return int(value) if isinstance(value, int) else None
