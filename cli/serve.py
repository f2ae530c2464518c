"""``somnus serve`` and ``somnus api token``: the REST control API."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import err, out, settings

api_app = typer.Typer(help="The REST control API's credentials.", no_args_is_help=True)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8780,
) -> None:
    """Serve the REST API (OpenAPI at /openapi.json, interactive docs at /docs)."""
    from api import create_app
    from api.auth import ensure_token, token_path
    from orchestrator.views import is_loopback

    current = settings()
    ensure_token(current)
    if not is_loopback(host):
        err.print(f"[yellow]warning:[/yellow] listening on {host}: the API is reachable from "
                  "the network; anyone with the token controls every VM")
    err.print(f"Somnus API on http://{host}:{port} (docs: /docs); "
              f"token: 'somnus api token' ({token_path(current)})")
    from api.server import run

    run(create_app(current, api_host=host, live=True), host=host, port=port)


@api_app.command("token")
def api_token(
    rotate: Annotated[bool, typer.Option(help="Make a new token; the old one stops working.")]
    = False,
) -> None:
    """Print the API's bearer token (made on first use, stored 0600)."""
    from api.auth import ensure_token, rotate_token

    out.print((rotate_token if rotate else ensure_token)(settings()), highlight=False,
              soft_wrap=True)
