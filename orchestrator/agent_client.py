"""Talk to a guest agent through its loopback port forward."""

from __future__ import annotations

import time
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from guest_agent.protocol import (
    ClockRequest,
    ClockResponse,
    HealthResponse,
    InfoResponse,
    MemoryFlushResponse,
)
from orchestrator.errors import GuestError

T = TypeVar("T", bound=BaseModel)


class AgentClient:
    """Typed calls to one VM's agent; the response models are the agent's own."""

    def __init__(self, port: int, token: str, host: str = "127.0.0.1") -> None:
        self.base_url = f"http://{host}:{port}"
        self.token = token

    def _get(self, path: str, model: type[T], timeout_s: float) -> T:
        return self._request("GET", path, model, timeout_s)

    def _post(self, path: str, body: BaseModel | None, model: type[T], timeout_s: float) -> T:
        return self._request("POST", path, model, timeout_s, body)

    def _request(self, method: str, path: str, model: type[T], timeout_s: float,
                 body: BaseModel | None = None) -> T:
        try:
            response = httpx.request(
                method,
                self.base_url + path,
                headers={"Authorization": f"Bearer {self.token}"},
                content=body.model_dump_json() if body is not None else None,
                timeout=timeout_s,
            )
        except httpx.HTTPError as exc:
            raise GuestError(f"agent at {self.base_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise GuestError(
                f"agent {path} answered {response.status_code}: {response.text[:200]}"
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise GuestError(f"agent {path} sent an unexpected body: {exc}") from exc

    def health(self, timeout_s: float = 5.0) -> HealthResponse:
        return self._get("/health", HealthResponse, timeout_s)

    def info(self, timeout_s: float = 10.0) -> InfoResponse:
        return self._get("/info", InfoResponse, timeout_s)

    def flush(self, timeout_s: float = 10.0) -> MemoryFlushResponse:
        """Ask the agent to write memory and state to disk (before a save)."""
        return self._post("/memory/flush", None, MemoryFlushResponse, timeout_s)

    def sync_clock(self, timeout_s: float = 5.0) -> ClockResponse:
        """Set the guest clock to the host's (after a restore)."""
        return self._post("/clock", ClockRequest(epoch=time.time()), ClockResponse, timeout_s)
