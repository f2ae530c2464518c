"""``somnus template``: the saved first boots new VMs start from."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import JsonFlag, emit_json, host, out
from cli.vm import YesFlag

template_app = typer.Typer(
    help="List and delete templates: the saved first boot of each VM shape, which new "
         "VMs of that shape start from in seconds.", no_args_is_help=True)


@template_app.command("list")
def template_list(as_json: JsonFlag = False) -> None:
    """List templates: shape, first VM, save size, VMs standing on its disk."""
    vms = host().vms
    rows = [{"template": t.folder.name, "first_vm": t.manifest.vm_name,
             "subsystem": t.manifest.facts.get("subsystem", ""), "size_mib": t.size_mib,
             "created_at": t.manifest.created_at.isoformat(timespec="seconds"),
             "vms": vms.template_users(t)} for t in vms.templates.list()]
    if as_json:
        emit_json(rows)
        return
    table = Table("TEMPLATE", "SUBSYSTEM", "FIRST VM", "SAVE", "CREATED", "VMS ON IT")
    for row in rows:
        table.add_row(str(row["template"]), str(row["subsystem"]), str(row["first_vm"]),
                      f"{row['size_mib']} MiB", str(row["created_at"]),
                      ", ".join(row["vms"]) or "-")  # type: ignore[arg-type]
    out.print(table if rows else "no templates yet: the first VM of each shape makes one")


@template_app.command("delete")
def template_delete(template: str, yes: YesFlag = False) -> None:
    """Delete a template (by name prefix); the next VM of its shape boots cold and makes a
    new one. Its disk stays while VMs stand on it."""
    if not yes:
        typer.confirm(f"Delete template '{template}'?", abort=True)
    users = host().vms.delete_template(template)
    kept = f"; its disk stays under {', '.join(users)}" if users else ""
    out.print(f"template '{template}' deleted{kept}")
