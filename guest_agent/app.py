"""The guest agent's HTTP app (FastAPI). Every route requires the VM's token."""

from __future__ import annotations

import hmac
import platform
import socket
import time
from importlib import metadata
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from guest_agent import __version__
from guest_agent.models_dir import list_models
from guest_agent.protocol import (
    AGENT_CONFIG_PATH,
    AgentConfig,
    AgentStatus,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
)

REPORTED_PACKAGES = ("llama_cpp_python", "faiss-cpu", "fastapi", "numpy", "pydantic")


def load_config(path: str | Path = AGENT_CONFIG_PATH) -> AgentConfig:
    """Read the config the orchestrator put in the seed."""
    return AgentConfig.model_validate_json(Path(path).read_text())


def _package_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def create_app(config: AgentConfig) -> FastAPI:
    """Build the agent app bound to one VM's config and token."""
    started = time.monotonic()
    app = FastAPI(title="Somnus guest agent", version=__version__)
    expected = f"Bearer {config.token}".encode()

    def require_token(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not given:
            raise HTTPException(status_code=401, detail="missing bearer token")
        if not hmac.compare_digest(given, expected):
            raise HTTPException(status_code=403, detail="wrong token")

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        body = ErrorResponse(error=str(exc.detail))
        return JSONResponse(status_code=exc.status_code, content=body.model_dump())

    @app.get("/health", dependencies=[Depends(require_token)])
    def health() -> HealthResponse:
        return HealthResponse(
            status=AgentStatus.OK,
            vm_name=config.vm_name,
            agent_version=__version__,
            uptime_s=time.monotonic() - started,
        )

    @app.get("/info", dependencies=[Depends(require_token)])
    def info() -> InfoResponse:
        return InfoResponse(
            vm_name=config.vm_name,
            subsystem=config.subsystem,
            hostname=socket.gethostname(),
            kernel=platform.release(),
            python=platform.python_version(),
            agent_version=__version__,
            packages=_package_versions(),
            models=list_models(),
        )

    return app
