"""``somnus serve`` and ``somnus api token``: the REST control API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import err, out, settings
from core.errors import InvalidInput
from orchestrator.views import is_loopback

api_app = typer.Typer(help="The REST control API's credentials.", no_args_is_help=True)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8780,
    tls_cert: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="TLS certificate (PEM), with --tls-key.")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="TLS private key (PEM), with --tls-cert.")] = None,
    insecure_http: Annotated[bool, typer.Option(
        help="Allow plain HTTP on a non-loopback address (the token crosses in clear).")]
    = False,
    monitor: Annotated[bool, typer.Option(
        help="Run the security monitor (metrics, policy, anomaly log).")] = True,
) -> None:
    """Serve the web app at / and the REST API beside it (OpenAPI at /openapi.json,
    interactive docs at /docs), and run the security monitor."""
    from api import create_app
    from api.auth import ensure_token, token_path
    from api.server import check_exposure, run

    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    check_exposure(host, tls, insecure_http)
    current = settings()
    ensure_token(current)
    if not is_loopback(host):
        err.print(f"[yellow]warning:[/yellow] listening on {host}: the API is reachable from "
                  "the network; anyone with the token controls every VM")
    scheme = "https" if tls else "http"
    err.print(f"Somnus app and API on {scheme}://{host}:{port} (docs: /docs); "
              f"token: 'somnus api token' ({token_path(current)}); "
              "a login link: 'somnus app'")
    run(create_app(current, api_host=host, live=True, monitor=monitor), host=host, port=port,
        tls=tls)


@api_app.command("token")
def api_token(
    rotate: Annotated[bool, typer.Option(help="Make a new token; the old one stops working.")]
    = False,
) -> None:
    """Print the API's bearer token (made on first use, stored 0600)."""
    from api.auth import ensure_token, rotate_token

    out.print((rotate_token if rotate else ensure_token)(settings()), highlight=False,
              soft_wrap=True)
