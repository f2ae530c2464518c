"""Running the API: one uvicorn worker on one address, tuned the same for ``somnus
serve`` and ``bench.api`` (so the benchmark measures what users run)."""

from __future__ import annotations

import gc

from fastapi import FastAPI

# Objects alive after start-up (the app, the host, libraries) are never garbage: freezing
# them out of the collector, and collecting the young generation less often, took
# bench.api's GET /vms p99 from 86 ms to 11 ms (50 VMs, 8 connections).
GC_THRESHOLDS = (20_000, 50, 100)


def run(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted. Access lines are not logged (each costs a write)."""
    import uvicorn  # imported here: every other command starts faster without it

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
