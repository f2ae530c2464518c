"""Running the API: one uvicorn worker on one address, tuned the same for ``somnus
serve`` and ``bench.api`` (so the benchmark measures what users run)."""

from __future__ import annotations

import gc
from pathlib import Path

from fastapi import FastAPI

from core.errors import InvalidInput
from orchestrator.views import is_loopback

# Objects alive after start-up (the app, the host, libraries) are never garbage: freezing
# them out of the collector, and collecting the young generation less often, took
# bench.api's GET /vms p99 from 86 ms to 11 ms (50 VMs, 8 connections).
GC_THRESHOLDS = (20_000, 50, 100)


def run(app: FastAPI, host: str, port: int, log_level: str = "info",
        tls: tuple[Path, Path] | None = None) -> None:
    """Serve ``app`` until interrupted, over TLS with ``tls`` (certificate, key). Access
    lines are not logged (each costs a write)."""
    import uvicorn  # imported here: every other command starts faster without it

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    cert, key = tls if tls else (None, None)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                ssl_certfile=cert, ssl_keyfile=key)


def check_exposure(host: str, tls: tuple[Path, Path] | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback in plain HTTP unless told to: the bearer token
    would cross the network in clear."""
    if is_loopback(host) or tls is not None or insecure:
        return
    raise InvalidInput(f"--host {host} is reachable from the network: give --tls-cert and "
                       "--tls-key, or --insecure-http to send the token in clear anyway")
