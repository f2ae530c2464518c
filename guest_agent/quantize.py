"""Model formats and GGUF re-quantization through llama.cpp's own quantize API.

Asking for a bit width the file does not have writes a quantized copy once,
into a cache keyed by the source file, and reuses it afterwards.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from guest_agent.protocol import ModelFormat
from guest_agent.protocol.gguf import MetaValue, is_gguf, read_metadata

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = (ModelFormat.GGUF,)

_SUFFIX_FORMATS: dict[str, ModelFormat] = {
    ".gguf": ModelFormat.GGUF,
    ".onnx": ModelFormat.ONNX,
    ".safetensors": ModelFormat.SAFETENSORS,
    ".bin": ModelFormat.PYTORCH,
    ".pt": ModelFormat.PYTORCH,
    ".pth": ModelFormat.PYTORCH,
    ".ggml": ModelFormat.GGML,
    ".engine": ModelFormat.TENSORRT,
    ".plan": ModelFormat.TENSORRT,
    ".xml": ModelFormat.OPENVINO,
}

# llama.cpp file types (``general.file_type``) by name, with their nominal bits.
FILE_TYPES: dict[str, tuple[int, int]] = {
    "F32": (llama_cpp.LLAMA_FTYPE_ALL_F32, 32),
    "F16": (llama_cpp.LLAMA_FTYPE_MOSTLY_F16, 16),
    "BF16": (llama_cpp.LLAMA_FTYPE_MOSTLY_BF16, 16),
    "Q8_0": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, 8),
    "Q6_K": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K, 6),
    "Q5_0": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0, 5),
    "Q5_1": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1, 5),
    "Q5_K_S": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_S, 5),
    "Q5_K_M": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M, 5),
    "Q4_0": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, 4),
    "Q4_1": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1, 4),
    "Q4_K_S": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S, 4),
    "Q4_K_M": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, 4),
    "Q3_K_S": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_S, 3),
    "Q3_K_M": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M, 3),
    "Q3_K_L": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_L, 3),
    "Q2_K": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K, 2),
}
# What each requested bit width is quantized to.
TARGET_FOR_BITS: dict[int, str] = {
    2: "Q2_K", 3: "Q3_K_M", 4: "Q4_K_M", 5: "Q5_K_M", 6: "Q6_K", 8: "Q8_0", 16: "F16", 32: "F32",
}  # fmt: skip


class UnsupportedModelError(ValueError):
    """The model file cannot be loaded or quantized as asked."""


@dataclass(frozen=True)
class QuantizedModel:
    path: Path
    file_type: str
    source: Path
    reused: bool


def detect_format(path: Path) -> ModelFormat:
    """The model's format: GGUF by its magic bytes, anything else by its name."""
    if path.is_file() and is_gguf(path):
        return ModelFormat.GGUF
    if path.is_dir():
        return ModelFormat.HUGGINGFACE
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UnsupportedModelError(f"unknown model format for {path.name}; {_supported()}")
    return fmt


def require_gguf(path: Path) -> None:
    """Fail with a clear message unless ``path`` is a GGUF file llama.cpp can load."""
    if not path.exists():
        raise UnsupportedModelError(f"model file not found: {path}")
    fmt = detect_format(path)
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedModelError(f"{path.name}: format '{fmt}' is not supported; {_supported()}")


def _supported() -> str:
    return (
        "the guest agent loads GGUF files only (llama.cpp); convert other formats "
        "with llama.cpp's convert_hf_to_gguf.py. Supported formats: " + ", ".join(SUPPORTED_FORMATS)
    )


def file_type_of(meta: dict[str, MetaValue]) -> str | None:
    """The llama.cpp file type (e.g. ``Q4_1``) named by GGUF metadata, if it is a known one."""
    value = meta.get("general.file_type")
    by_id = {ftype: name for name, (ftype, _) in FILE_TYPES.items()}
    return by_id.get(int(value)) if isinstance(value, int) else None


def file_type_name(path: Path) -> str | None:
    """The GGUF file's llama.cpp file type."""
    return file_type_of(read_metadata(path))


def target_file_type(bits: int) -> str:
    """The llama.cpp file type used for ``bits``."""
    if bits not in TARGET_FOR_BITS:
        raise UnsupportedModelError(
            f"quantization_bits={bits} is not supported; choose one of "
            + ", ".join(str(b) for b in sorted(TARGET_FOR_BITS))
        )
    return TARGET_FOR_BITS[bits]


def _cache_key(source: Path) -> str:
    stat = source.stat()
    raw = f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:12]


def ensure_bits(source: Path, bits: int, cache_dir: Path, n_threads: int = 2) -> QuantizedModel:
    """A GGUF file of ``source`` at ``bits``: the file itself, a cached copy, or a new one."""
    require_gguf(source)
    target = target_file_type(bits)
    current = file_type_name(source)
    if current is not None and FILE_TYPES[current][1] == bits:
        return QuantizedModel(source, current, source, reused=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"{source.stem}.{_cache_key(source)}.{target}.gguf"
    if dest.is_file():
        return QuantizedModel(dest, target, source, reused=True)
    log.info("quantizing %s (%s) to %s", source.name, current, target)
    quantize_file(source, dest, target, n_threads)
    return QuantizedModel(dest, target, source, reused=False)


def quantize_file(source: Path, dest: Path, file_type: str, n_threads: int = 2,
                  pure: bool = False) -> None:
    """Write ``source`` quantized to ``file_type`` at ``dest``, atomically.

    ``pure`` quantizes every tensor to ``file_type``, the token embedding too (llama.cpp
    otherwise keeps it at higher precision).
    """
    # llama.cpp logs each tensor it converts (hundreds of lines); keep its errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type][0]
    params.nthread = n_threads
    params.pure = pure
    # The source is usually quantized already: llama.cpp refuses to requantize
    # unless told to (quality is that of the source at best).
    params.allow_requantize = True
    tmp = dest.with_suffix(".partial")
    rc = llama_cpp.llama_model_quantize(
        str(source).encode(), str(tmp).encode(), ctypes.byref(params)
    )
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise UnsupportedModelError(f"llama.cpp could not quantize {source.name} to {file_type}")
    os.replace(tmp, dest)  # atomic: a half-written file is never taken from the cache


def main(argv: list[str]) -> int:
    """``python -m guest_agent.quantize SOURCE DEST TYPE [--pure]``, as llama-quantize."""
    parser = argparse.ArgumentParser(prog="python -m guest_agent.quantize",
                                     description=main.__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("file_type", choices=sorted(FILE_TYPES))
    parser.add_argument("--pure", action="store_true", help="every tensor to TYPE")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    try:
        require_gguf(args.source)
        quantize_file(args.source, args.dest, args.file_type, args.threads, args.pure)
    except UnsupportedModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
