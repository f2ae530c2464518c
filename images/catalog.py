"""Built guest images on disk: ``<images_dir>/<recipe_hash[:16]>/manifest.json``."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from core.config import Settings
from core.errors import InvalidInput, NotFound
from images.recipe import Flavour

MANIFEST_NAME = "manifest.json"
DIR_HASH_CHARS = 16


class ImageManifest(BaseModel):
    """What the orchestrator needs to boot an image (written by the builder)."""

    name: str
    # Images built before flavours existed are base images.
    flavour: Flavour = Flavour.BASE
    recipe_hash: str
    base_hash: str
    created_at: datetime
    path: Path
    disk: Path
    kernel: Path
    initrd: Path
    kernel_cmdline: str
    disk_bytes: int
    virtual_size_bytes: int
    debian_suite: str
    packages: list[str]
    guest_requirements: list[str]
    build_seconds: float

    @property
    def short_hash(self) -> str:
        return self.recipe_hash[:DIR_HASH_CHARS]

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` into ``folder``."""
        (folder / MANIFEST_NAME).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ImageManifest:
        """Read a manifest, re-rooting its paths at ``folder`` so a moved cache still works."""
        manifest = cls.model_validate_json((folder / MANIFEST_NAME).read_text())
        folder = folder.resolve()
        return manifest.model_copy(
            update={
                "path": folder,
                "disk": folder / manifest.disk.name,
                "kernel": folder / manifest.kernel.name,
                "initrd": folder / manifest.initrd.name,
            }
        )


def image_dir(settings: Settings, recipe_hash: str) -> Path:
    """Folder an image of ``recipe_hash`` lives in."""
    return settings.images_dir / recipe_hash[:DIR_HASH_CHARS]


def _load_valid(folder: Path) -> ImageManifest | None:
    try:
        manifest = ImageManifest.load(folder)
    except (OSError, ValueError, ValidationError):
        return None
    if not all(p.is_file() for p in (manifest.disk, manifest.kernel, manifest.initrd)):
        return None
    return manifest


def list_images(settings: Settings) -> list[ImageManifest]:
    """Every complete image, newest first; half-written or corrupt folders are skipped."""
    if not settings.images_dir.is_dir():
        return []
    found = [
        manifest
        for folder in settings.images_dir.iterdir()
        if folder.is_dir() and not folder.name.startswith(".")
        if (manifest := _load_valid(folder)) is not None
    ]
    return sorted(found, key=lambda m: m.created_at, reverse=True)


def find_image(settings: Settings, recipe_hash: str) -> ImageManifest | None:
    """The image built from exactly ``recipe_hash``, if any."""
    manifest = _load_valid(image_dir(settings, recipe_hash))
    return manifest if manifest and manifest.recipe_hash == recipe_hash else None


def current_recipe_hash(settings: Settings, flavour: Flavour = Flavour.BASE) -> str | None:
    """Recipe hash of this checkout, or None while the llama wheel is not built yet."""
    from images import recipe, wheels  # wheels imports plumbing; keep catalog light

    llama = wheels.find_llama_wheel(settings)
    return recipe.recipe_hash(wheels.file_sha256(llama), flavour=flavour) if llama else None


def get_image(
    settings: Settings, ref: str | None = None, flavour: Flavour = Flavour.BASE
) -> ImageManifest:
    """An image by recipe-hash prefix; without ``ref`` the current recipe's ``flavour``
    image, else the newest of that flavour."""
    images = list_images(settings)
    if ref is None:
        current = current_recipe_hash(settings, flavour)
        for manifest in images:
            if manifest.recipe_hash == current:
                return manifest
        if same_flavour := [m for m in images if m.flavour == flavour]:
            return same_flavour[0]
        build = "somnus image build" + ("" if flavour is Flavour.BASE else f" --flavour {flavour}")
        raise NotFound(f"no {flavour} guest image built yet: run '{build}'")
    ref = ref.strip().lower()
    matches = [m for m in images if ref and m.recipe_hash.startswith(ref)]
    if not matches:
        raise NotFound(f"no image matches '{ref}': run 'somnus image list' or 'somnus image build'")
    if len(matches) > 1:
        names = ", ".join(m.short_hash for m in matches)
        raise InvalidInput(f"image ref '{ref}' is ambiguous: {names}")
    return matches[0]


def delete_image(settings: Settings, ref: str) -> None:
    """Remove an image folder. VMs whose overlays use it as backing file break: check first."""
    manifest = get_image(settings, ref)
    # Rename first so a crash mid-delete never leaves a folder that looks complete.
    doomed = manifest.path.with_name(f".delete-{manifest.path.name}-{os.getpid()}")
    os.rename(manifest.path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
