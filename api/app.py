"""The FastAPI application: context, authentication, body limit and error mapping.

Routes (``api.routes``) only translate HTTP to calls of the service layer
(``VMService``, ``SwapEngine``, ``ChatService``, ``images``, ``orchestrator.fleet``,
``DevSessionManager``, ``ProjectService``);
every error is a ``SomnusError`` whose ``http_status`` this module maps, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import TokenCheck, token_path
from api.models import ErrorBody, error_body
from api.operations import OperationRegistry
from orchestrator import errors_log
from orchestrator.config import Settings, load_settings
from orchestrator.devsessions import DevSessionManager, DevSessionStore
from orchestrator.errors import SomnusError
from orchestrator.hypervisor import Hypervisor
from orchestrator.projects import ProjectService
from orchestrator.store import Store
from orchestrator.vms import VMService

log = logging.getLogger(__name__)

VERSION = "0.1.0"
# Chat messages and memories are text: a megabyte is far beyond any sane request.
MAX_BODY_BYTES = 1 << 20
# Reachable without the token: liveness, and the documentation of the API itself.
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                          "/redoc"})
# How long a graceful shutdown waits for running operations.
SHUTDOWN_WAIT_S = 30.0


class ApiContext:
    """What the routes share: settings, one store and libvirt connection, operations."""

    def __init__(self, settings: Settings, hypervisor: Hypervisor | None = None,
                 api_host: str | None = None) -> None:
        self.settings = settings
        self.api_host = api_host
        settings.home.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_path)
        self.dev_store = DevSessionStore(settings.db_path)
        self.tokens = TokenCheck(settings)
        self.ops = OperationRegistry(on_failure=self.record_failure)
        self._hv = hypervisor
        self._hv_lock = threading.Lock()

    def hypervisor(self) -> Hypervisor:
        """The shared libvirt connection (thread-safe), reopened if libvirtd restarted."""
        with self._hv_lock:
            if self._hv is None or not self._hv.conn.isAlive():
                self._hv = Hypervisor(self.settings.libvirt_uri)
            return self._hv

    def service(self) -> VMService:
        """A fresh VMService per request or operation thread: its re-entrant lock depth
        is per instance, so sharing one between threads would let them interleave."""
        return VMService(self.settings, self.hypervisor(), self.store)

    def sessions(self) -> DevSessionManager:
        """A DevSessionManager per request or operation thread, over the one store: its
        cache is not thread-safe, and every change is in SQLite anyway."""
        return DevSessionManager(self.dev_store)

    def projects(self) -> ProjectService:
        """A ProjectService per request or operation thread (over a fresh VMService)."""
        return ProjectService(self.service(), self.sessions())

    def record_failure(self, vm: str, source: str, exc: BaseException) -> None:
        errors_log.record_failure(self.store, vm, source, exc)

    @property
    def secrets(self) -> list[Path]:
        """Files beyond the orchestrator's own whose modes the security view checks."""
        return [token_path(self.settings)]


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_context)]


def _error_response(status: int, body: ErrorBody,
                    headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class Guard:
    """Outermost ASGI layer: the bearer token, then the body size, before anything runs.

    Checking here rather than in a dependency means no body is parsed and no route
    (not even an unknown one) answers before the token is known good.
    """

    def __init__(self, app: ASGIApp, tokens: TokenCheck, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.tokens = tokens
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        rejection = self._reject(scope["path"], headers)
        if rejection is not None:
            await rejection(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _reject(self, path: str, headers: dict[str, str]) -> JSONResponse | None:
        if path not in PUBLIC_PATHS and not self.tokens.accepts(headers.get("authorization")):
            return _error_response(
                401, ErrorBody(error="Unauthorized",
                               detail="missing or wrong bearer token ('somnus api token')"),
                {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return _error_response(413, self._too_large())
        return None

    def _too_large(self) -> ErrorBody:
        return ErrorBody(error=_status_name(413),
                         detail=f"request body over {self.max_body} bytes")

    def _limited(self, receive: Receive) -> Receive:
        """Count a body sent without a length (chunked) and stop it at the limit."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    # FastAPI re-raises an HTTPException met while reading the body.
                    raise HTTPException(413, self._too_large().detail)
            return message

        return limited


def _status_name(status: int) -> str:
    """An HTTP status as an error name, like the hierarchy's (413: PayloadTooLarge)."""
    if status == 413:  # Python still calls it "Request Entity Too Large" (RFC 7231's name)
        return "PayloadTooLarge"
    try:
        return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        return "HTTPError"


def _install_error_handlers(app: FastAPI) -> None:
    def somnus_error(request: Request, exc: Exception) -> JSONResponse:
        """The one mapping of the error hierarchy: its status, ``{error, detail}``;
        anything else is a bug: 500.

        A failure on a named VM (a route with a ``name`` path parameter) is also
        recorded in that VM's errors when it is the VM's, not the request's, fault.
        """
        vm = request.path_params.get("name")
        if vm:
            route = request.scope.get("route")
            source = f"{request.method} {getattr(route, 'path', request.url.path)}"
            request.app.state.ctx.record_failure(vm, source, exc)
        status = getattr(exc, "http_status", 500)
        return _error_response(status, error_body(exc))

    def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        return _error_response(422, ErrorBody(error="InvalidInput", detail=problems))

    def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (not UTF-8, say)
            return _error_response(422, ErrorBody(error="InvalidInput",
                                                  detail=f"body: {exc.detail}"))
        return _error_response(exc.status_code,
                               ErrorBody(error=_status_name(exc.status_code),
                                         detail=str(exc.detail)), exc.headers)

    app.add_exception_handler(SomnusError, somnus_error)
    app.add_exception_handler(Exception, somnus_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def create_app(settings: Settings | None = None, *, hypervisor: Hypervisor | None = None,
               api_host: str | None = None) -> FastAPI:
    """The API over ``settings``' Somnus home; ``hypervisor`` shares a libvirt connection
    (tests pass their test-driver one); ``api_host`` is where it listens (security view)."""
    from api.routes import ROUTERS

    ctx = ApiContext(settings or load_settings(), hypervisor, api_host)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if not ctx.ops.wait_idle(SHUTDOWN_WAIT_S):
            log.warning("shutting down with operations still running")

    app = FastAPI(
        title="Somnus control API", version=VERSION, lifespan=lifespan,
        description="VMs, the foreground, images, chat and memory of a Somnus workstation. "
                    "Every route but /health needs `Authorization: Bearer <token>` "
                    "(`somnus api token`).",
    )
    app.state.ctx = ctx
    for router in ROUTERS:
        app.include_router(router)
    _install_error_handlers(app)
    app.add_middleware(Guard, tokens=ctx.tokens)
    return app
