"""The ``somnus`` command line (typer + rich).

Progress goes to stderr, results to stdout; ``--json`` prints one JSON document
for scripts. Every Somnus error becomes one line on stderr and its exit code.
Each command group lives in its own module and is mounted here.
"""

from __future__ import annotations

import logging
import sys
from contextlib import suppress

import typer

from cli.artifact import artifact_app
from cli.chat import chat, memory_app, prompt_app
from cli.collab import collab_app
from cli.common import err
from cli.demo import demo
from cli.image import image_app
from cli.model import model_app
from cli.project import project_app
from cli.research import research_app
from cli.security import security_app
from cli.serve import api_app, serve
from cli.session import session_app
from cli.snapshot import snapshot_app
from cli.swap import activate, recover, status
from cli.template import template_app
from cli.vm import vm_app
from cli.webapp import open_app
from core.config import load_settings
from core.errors import SomnusError
from core.logs import configure_logging
from guest_agent.protocol.redaction import RedactingFilter

app = typer.Typer(help="Somnus: a local-first AI workstation where every subsystem is a VM.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(image_app, name="image")
app.add_typer(vm_app, name="vm")
app.add_typer(template_app, name="template")
app.add_typer(session_app, name="session")
app.add_typer(project_app, name="project")
app.add_typer(artifact_app, name="artifact")
app.add_typer(security_app, name="security")
app.add_typer(research_app, name="research")
app.add_typer(collab_app, name="collab")
app.command()(demo)
app.command()(activate)
app.command()(status)
app.command()(recover)
app.command()(chat)
app.add_typer(memory_app, name="memory")
app.add_typer(prompt_app, name="prompt")
app.add_typer(model_app, name="model")
app.command()(serve)
app.command("app")(open_app)
app.add_typer(api_app, name="api")
vm_app.add_typer(snapshot_app, name="snapshot")


def main() -> None:
    """Entry point: run the CLI, turning Somnus errors into one line and an exit code."""
    logged = False
    # Best effort: the command itself reports a bad setting, and an unwritable
    # SOMNUS_HOME only costs the log file (``somnus --help`` must still work).
    with suppress(SomnusError, OSError):
        configure_logging(load_settings(), "cli", filters=[RedactingFilter()])
        logged = True
    try:
        app()
    except SomnusError as exc:
        if logged:  # else logging's last resort would print it to stderr a second time
            # Only the command's first word: the rest may be a prompt or a memory.
            logging.getLogger("cli").warning("somnus %s: %s: %s", " ".join(sys.argv[1:2]),
                                             type(exc).__name__, exc.message)
        err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
