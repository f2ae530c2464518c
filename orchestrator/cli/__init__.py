"""The ``somnus`` command line (typer + rich).

Progress goes to stderr, results to stdout; ``--json`` prints one JSON document
for scripts. Every Somnus error becomes one line on stderr and its exit code.
Each command group lives in its own module and is mounted here.
"""

from __future__ import annotations

import sys

import typer

from orchestrator.cli.chat import chat, memory_app, prompt_app
from orchestrator.cli.common import err
from orchestrator.cli.demo import demo
from orchestrator.cli.image import image_app
from orchestrator.cli.model import model_app
from orchestrator.cli.project import project_app
from orchestrator.cli.serve import api_app, serve
from orchestrator.cli.session import session_app
from orchestrator.cli.snapshot import snapshot_app
from orchestrator.cli.swap import activate, status
from orchestrator.cli.vm import vm_app
from orchestrator.errors import SomnusError

app = typer.Typer(help="Somnus: a local-first AI workstation where every subsystem is a VM.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(image_app, name="image")
app.add_typer(vm_app, name="vm")
app.add_typer(session_app, name="session")
app.add_typer(project_app, name="project")
app.command()(demo)
app.command()(activate)
app.command()(status)
app.command()(chat)
app.add_typer(memory_app, name="memory")
app.add_typer(prompt_app, name="prompt")
app.add_typer(model_app, name="model")
app.command()(serve)
app.add_typer(api_app, name="api")
vm_app.add_typer(snapshot_app, name="snapshot")


def main() -> None:
    """Entry point: run the CLI, turning Somnus errors into one line and an exit code."""
    try:
        app()
    except SomnusError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
