"""What the routes share, built once per API process: the host, operations, the live view.

Routes take it with the ``Ctx`` dependency; ``api.app`` builds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from api.auth import TokenCheck, token_path
from api.operations import OperationRegistry
from api.readcache import ReadCache
from api.web_login import WebSessions
from core.config import Settings
from orchestrator import errors_log
from orchestrator.host import Host
from orchestrator.live import LiveView
from orchestrator.views import DomainStates

VERSION = "0.1.0"
# Bodies above this are refused (413) before they are read. It must exceed every body the
# document's own bounds allow: 100 000 characters of chat or 2 x 50 000 of a turn come to
# about 1.2 MB as JSON, which escapes a non-BMP character as 12 bytes.
MAX_BODY_BYTES = 2 << 20


class ApiContext:
    """The one :class:`Host` of the process, the running operations and the token."""

    def __init__(self, host: Host, api_host: str | None = None,
                 live: LiveView | None = None) -> None:
        self.host = host
        self.settings: Settings = host.settings
        self.api_host = api_host
        self.live = live
        self.tokens = TokenCheck(self.settings)
        self.web_sessions = WebSessions()
        self.ops = OperationRegistry(on_failure=self.record_failure)
        self.reads = ReadCache(self.settings.db_path, live)

    @property
    def states(self) -> DomainStates | None:
        """Domain states for reads: the event-fed live view when it runs."""
        return self.live.state_of if self.live is not None else None

    def record_failure(self, vm: str, source: str, exc: BaseException) -> None:
        errors_log.record_failure(self.host.store, vm, source, exc)

    @property
    def secrets(self) -> list[Path]:
        """Files beyond the orchestrator's own whose modes the security view checks."""
        return [token_path(self.settings)]


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_context)]
