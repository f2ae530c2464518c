"""``somnus image``: build and list guest images."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.common import Clock, JsonFlag, emit_json, out, settings
from images import builder, catalog
from images.recipe import Flavour

image_app = typer.Typer(help="Build and list guest images.", no_args_is_help=True)


@image_app.command("build")
def image_build(
    force: Annotated[bool, typer.Option(help="Rebuild even if cached.")] = False,
    flavour: Annotated[
        Flavour, typer.Option(help="base: every VM; artifacts: base + compilers and sandbox; "
                                "research: base + pdftotext.")
    ] = Flavour.BASE,
    as_json: JsonFlag = False,
) -> None:
    """Build a guest image from Debian packages (cached by recipe hash)."""
    manifest = builder.build_image(settings(), progress=Clock(), force=force, flavour=flavour)
    if as_json:
        emit_json(manifest.model_dump(mode="json"))
    else:
        out.print(f"{manifest.flavour} image {manifest.recipe_hash[:16]} ready: {manifest.disk} "
                  f"({manifest.disk_bytes / 2**20:.0f} MiB)")


@image_app.command("list")
def image_list(as_json: JsonFlag = False) -> None:
    """List built images with size, recipe hash and date."""
    images = catalog.list_images(settings())
    if as_json:
        emit_json([m.model_dump(mode="json") for m in images])
        return
    table = Table("HASH", "FLAVOUR", "NAME", "SIZE", "CREATED", "BUILD")
    for m in images:
        table.add_row(m.recipe_hash[:16], m.flavour, m.name, f"{m.disk_bytes / 2**20:.0f} MiB",
                      m.created_at.strftime("%Y-%m-%d %H:%M"), f"{m.build_seconds:.0f}s")
    out.print(table if images else "no images yet: run 'somnus image build'")
