"""Build the guest image: Debian rootfs (mmdebstrap) -> ext4 -> qcow2, kernel and initrd.

Stages, each cached by a hash (see ``images.recipe``):

* wheels: portable llama wheel + guest wheelhouse (``images.wheels``), the
          embedding model converted to GGUF (``images.embedder``), and what TCG
          guests load instead of the wheel's backend (``images.emulation``);
* base:   ``<images_dir>/base-<base_hash>.tar``, mmdebstrap with the venv, user,
          units and config baked in by ``images/files/hooks/customize.sh``;
* disk:   ``<images_dir>/<recipe_hash[:16]>/`` with ``disk.qcow2``, kernel, initrd
          and ``manifest.json``; adding the agent sources is the only per-edit work.

Every stage builds in a hidden staging folder and is renamed into place, so a
failed or killed build never leaves something that looks complete.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from core.config import Settings
from core.errors import ImageBuildError
from guest_agent.protocol.models_dir import EMBEDDER_DIR, EMULATION_DIR
from images import recipe, wheels
from images.catalog import ImageManifest, find_image, image_dir
from images.embedder import ensure_embedder
from images.emulation import ensure_emulation
from images.plumbing import (
    BuildLog,
    Progress,
    check_free_space,
    exclusive_lock,
    make_world_readable,
    publish_dir,
    remove_tree,
    require_tools,
)

# Base tarball + unpacked tree + raw ext4 + qcow2 of a ~1.3 GB root filesystem, with margin.
NEED_FREE_BYTES = 6 * 1024**3
EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")
DISK_NAME = "disk.qcow2"


def build_image(
    settings: Settings,
    progress: Progress | None = None,
    force: bool = False,
    flavour: recipe.Flavour = recipe.Flavour.BASE,
) -> ImageManifest:
    """The ``flavour`` image of the current recipe, built only if missing (or if ``force``).

    ``force`` rebuilds the base and the disk; it replaces an image of the same
    recipe in place, so no VM may be using that image at the time.
    """
    if not force and (cached := _cached_image(settings, flavour)) is not None:
        return cached
    if os.geteuid() != 0:
        raise ImageBuildError("building the guest image needs root (mmdebstrap root mode, chroot)")
    require_tools("mmdebstrap", "mkfs.ext4", "qemu-img", "tar", "chroot", "dpkg-query")
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.images_dir, 0o755)
    log = BuildLog.new(settings, "image-build", progress)
    with exclusive_lock(settings.images_dir / ".build.lock"):
        llama = wheels.ensure_llama_wheel(settings, log=log)
        llama_sha = wheels.file_sha256(llama)
        base = recipe.base_hash(llama_sha, flavour=flavour)
        full = recipe.recipe_hash(llama_sha, flavour=flavour)
        if not force and (hit := find_image(settings, full)) is not None:
            return hit  # another process built it while we waited for the lock
        check_free_space(settings.cache, NEED_FREE_BYTES)
        log.note(f"{flavour} image {full[:16]} (base {base[:16]}); log {log.path}")
        wheelhouse = wheels.ensure_guest_wheelhouse(settings, log=log)
        embedder = ensure_embedder(settings, log=log)
        emulation = ensure_emulation(settings, log=log)
        tarball = _ensure_base(settings, flavour, base, wheelhouse, embedder, emulation, log,
                               force)
        manifest = _build_disk(settings, flavour, tarball, base, full, log)
    log.note(f"done: {manifest.path}")
    return manifest


def _cached_image(settings: Settings, flavour: recipe.Flavour) -> ImageManifest | None:
    llama = wheels.find_llama_wheel(settings)
    if llama is None:
        return None
    return find_image(settings, recipe.recipe_hash(wheels.file_sha256(llama), flavour=flavour))


def base_tarball(settings: Settings, base_hash: str,
                 flavour: recipe.Flavour = recipe.Flavour.BASE) -> Path:
    """Where the root filesystem of ``base_hash`` is cached (``base-<hash>.tar`` for base)."""
    return settings.images_dir / f"{flavour}-{base_hash}.tar"


def _ensure_base(
    settings: Settings, flavour: recipe.Flavour, base: str, wheelhouse: Path, embedder: Path,
    emulation: Path, log: BuildLog, force: bool,
) -> Path:
    tarball = base_tarball(settings, base, flavour)
    packages = recipe.flavour_packages(flavour)
    if tarball.is_file() and not force:
        log.note(f"base: cached {tarball.name}")
        return tarball
    started = log.elapsed
    log.note(f"base: mmdebstrap {recipe.DEBIAN_SUITE} {recipe.DEBIAN_VARIANT} "
             f"+ {len(packages)} packages (~5 min)")  # fmt: skip
    debs = settings.cache / "debs"  # .deb cache: a base rebuild downloads only what changed
    debs.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".base-", dir=settings.images_dir))
    staged_tar = staging / tarball.name
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        SOMNUS_FILES=str(recipe.FILES_DIR),
        SOMNUS_WHEELHOUSE=str(wheelhouse),
        SOMNUS_EMBEDDER=str(embedder),
        SOMNUS_MODELS_DIR=str(EMBEDDER_DIR),
        SOMNUS_EMULATION=str(emulation),
        SOMNUS_EMULATION_DIR=str(EMULATION_DIR),
        SOMNUS_ROOT_LABEL=recipe.ROOT_LABEL,
        SOMNUS_VENV=recipe.GUEST_VENV,
        TMPDIR=str(staging),  # mmdebstrap's scratch chroot: same filesystem, cleaned with us
    )
    cmd: list[str | Path] = [
        "mmdebstrap", "--mode=root", "--format=tar", "--verbose",
        f"--variant={recipe.DEBIAN_VARIANT}",
        f"--include={','.join(packages)}",
        # Keep the Essential set's .debs in the cache too (see mmdebstrap(1) EXAMPLES).
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        f'--customize-hook=sh {shlex.quote(str(recipe.CUSTOMIZE_HOOK))} "$1"',
    ]  # fmt: skip
    if EATMYDATA_HOOKS.is_dir():  # dpkg without fsync: much faster, the tar is synced once
        cmd.insert(1, f"--hook-dir={EATMYDATA_HOOKS}")
    cmd += [recipe.DEBIAN_SUITE, staged_tar]
    try:
        log.run("base", cmd, env=env)
        os.chmod(staged_tar, 0o644)
        os.rename(staged_tar, tarball)
    finally:
        remove_tree(staging, log)
    # Older bases are only good for a rebuild of an older checkout: reclaim the space.
    for old in settings.images_dir.glob(f"{flavour}-*.tar"):
        if old != tarball:
            old.unlink(missing_ok=True)
    size_mb = tarball.stat().st_size / 1e6
    log.note(f"base: {tarball.name} ({size_mb:.0f} MB) in {log.elapsed - started:.0f}s")
    return tarball


def _build_disk(
    settings: Settings, flavour: recipe.Flavour, tarball: Path, base: str, full: str,
    log: BuildLog,
) -> ImageManifest:
    started = log.elapsed
    log.note("disk: unpacking base, adding the agent, mkfs.ext4, qemu-img convert")
    staging = Path(tempfile.mkdtemp(prefix=".disk-", dir=settings.images_dir))
    try:
        root, out = staging / "root", staging / "image"
        root.mkdir()
        out.mkdir()
        log.run("disk", ["tar", "-C", root, "--numeric-owner", "--xattrs",
                         "--xattrs-include=*", "-xpf", tarball])  # fmt: skip
        _install_agent(root, log)
        kernel, initrd = _copy_boot_files(root, out)
        _write_package_lists(root, out, log)
        raw = staging / "root.ext4"
        log.run("disk", ["mkfs.ext4", "-q", "-F", "-L", recipe.ROOT_LABEL, "-d", root,
                         raw, str(recipe.FLAVOUR_DISK_BYTES[flavour] // 1024) + "k"])  # fmt: skip
        disk = out / DISK_NAME
        log.run("disk", ["qemu-img", "convert", "-q", "-O", "qcow2", raw, disk])
        raw.unlink()
        final = image_dir(settings, full)
        manifest = ImageManifest(
            name=recipe.IMAGE_NAME,
            flavour=flavour,
            recipe_hash=full,
            base_hash=base,
            created_at=datetime.now(UTC),
            path=final,
            disk=final / DISK_NAME,
            kernel=final / kernel.name,
            initrd=final / initrd.name,
            kernel_cmdline=recipe.KERNEL_CMDLINE,
            disk_bytes=disk.stat().st_size,
            virtual_size_bytes=recipe.FLAVOUR_DISK_BYTES[flavour],
            debian_suite=recipe.DEBIAN_SUITE,
            packages=list(recipe.flavour_packages(flavour)),
            guest_requirements=[*recipe.GUEST_REQUIREMENTS, recipe.MODEL_REQUIREMENT],
            build_seconds=round(log.elapsed, 1),
        )
        manifest.write(out)
        make_world_readable(out)
        if final.exists():  # only with force: replace the old build of this recipe
            remove_tree(final.rename(staging / "replaced"), log)
        publish_dir(out, final)
    finally:
        remove_tree(staging, log)
    log.note(f"disk: {final.name}/{DISK_NAME} ({manifest.disk_bytes / 1e6:.0f} MB) "
             f"in {log.elapsed - started:.0f}s")  # fmt: skip
    return manifest


def _install_agent(root: Path, log: BuildLog) -> None:
    src = recipe.agent_source_dir()
    dest = root / recipe.GUEST_AGENT_ROOT.lstrip("/") / "guest_agent"
    for rel in recipe.agent_files(src):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        shutil.copy2(src / rel, target)
        os.chmod(target, 0o644)
    # Byte-compile with the guest's interpreter: the agent user cannot write here,
    # and compiling at every start costs seconds under TCG.
    log.run("disk", ["chroot", root, "/usr/bin/python3", "-m", "compileall", "-q",
                     recipe.GUEST_AGENT_ROOT])  # fmt: skip
    # An agent that cannot even import would only show up as a VM that never gets ready.
    python = f"{recipe.GUEST_VENV}/bin/python"
    pythonpath = f"PYTHONPATH={recipe.GUEST_AGENT_ROOT}"
    log.run("disk", ["chroot", root, "/usr/bin/env", "-i", pythonpath, python, "-c",
                     "import guest_agent.app"])  # fmt: skip


def _copy_boot_files(root: Path, out: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise ImageBuildError(
            f"stage 'disk': expected one kernel and one initrd in /boot, found "
            f"{[p.name for p in kernels + initrds]}"
        )
    # Debian writes the initrd 0600; libvirt's QEMU user has to read both.
    kernel = Path(shutil.copyfile(kernels[0], out / kernels[0].name))
    initrd = Path(shutil.copyfile(initrds[0], out / initrds[0].name))
    return kernel, initrd


def _write_package_lists(root: Path, out: Path, log: BuildLog) -> None:
    # What the mirror actually delivered: the recipe pins Python wheels, not .deb versions.
    dpkg = log.capture(
        "disk",
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package} ${Version}\n"],
    )
    (out / "debian-packages.txt").write_text(dpkg)
    pip = f"{recipe.GUEST_VENV}/bin/pip"
    freeze = log.capture("disk", ["chroot", root, pip, "freeze", "--disable-pip-version-check"])
    (out / "python-packages.txt").write_text(freeze)
