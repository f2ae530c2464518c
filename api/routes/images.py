"""Guest images: list, and build as an operation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.context import Ctx
from api.models import ImageBuild
from api.operations import OperationView, Progress
from api.routes.common import ACCEPTED, PROTECTED, accepted
from images import builder, catalog
from images.catalog import ImageManifest

router = APIRouter(prefix="/images", tags=["images"], **PROTECTED)
# Not a VM name (no slash allowed there): builds never conflict with VM operations.
BUILD_KEY = "images/build"  # one build at a time, whatever the flavour
NO_BUILD_OPTIONS = ImageBuild()  # the body may be left out


@router.get("")
def list_images(ctx: Ctx) -> list[ImageManifest]:
    """Built images, newest first."""
    return catalog.list_images(ctx.settings)


@router.post("/build", status_code=202, responses=ACCEPTED)
def build_image(ctx: Ctx, response: Response, body: ImageBuild = NO_BUILD_OPTIONS) -> OperationView:
    """Build (or reuse) the current recipe's image; one build at a time."""

    def work(progress: Progress) -> dict[str, Any]:
        manifest = builder.build_image(ctx.settings, progress, body.force, body.flavour)
        return manifest.model_dump(mode="json")

    return accepted(ctx.ops.start("build", BUILD_KEY, work), response)
