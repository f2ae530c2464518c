"""The FastAPI application: authentication and body limit (``Guard``), routers, lifespan.

Routes (``api.routes``) only translate HTTP to calls of the service layer and take
what they share from ``api.context``; ``api.errors`` maps the error hierarchy, once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import libvirt
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import sse, web_login
from api.auth import TokenCheck
from api.context import MAX_BODY_BYTES, ApiContext
from api.context import VERSION as API_VERSION
from api.errors import error_response, install_error_handlers, status_name
from api.models import ErrorBody
from api.readcache import ReadCache
from api.routes import ROUTERS, web
from api.web_login import WebSession, WebSessions
from core.config import Settings, load_settings
from orchestrator.host import Host
from orchestrator.live import LiveView, start_event_loop

log = logging.getLogger(__name__)

# Reachable without the token: liveness, the documentation of the API itself, the app's
# page and assets (nothing secret: the data behind them needs a login) and its login.
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/", "/app/login"})
PUBLIC_PREFIXES = (f"{web.STATIC_URL}/", f"{web.DOCS_STATIC_URL}/", "/app/login/")
# How long a graceful shutdown waits for running operations.
SHUTDOWN_WAIT_S = 30.0


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class Guard:
    """Outermost ASGI layer: who is asking, then the body size, before anything runs.

    A request carries the bearer token (scripts, the CLI) or the app's session cookie
    (the browser; ``api.web_login``), and a cookie request that changes something must
    also carry the session's CSRF token. Checking here rather than in a dependency means
    no body is parsed and no route (not even an unknown one) answers before the caller
    is known good. A browser session is handed to the routes in ``scope["state"]``.
    """

    def __init__(self, app: ASGIApp, tokens: TokenCheck, sessions: WebSessions,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.tokens = tokens
        self.sessions = sessions
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        rejection = self._reject(scope, headers)
        if rejection is not None:
            await rejection(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _reject(self, scope: Scope, headers: dict[str, str]) -> JSONResponse | None:
        path = scope["path"]
        if not is_public(path) and not self.tokens.accepts(headers.get("authorization")):
            session = self._session(headers)
            if session is None:
                return error_response(
                    401, ErrorBody(error="Unauthorized",
                                   detail="missing or wrong bearer token ('somnus api token'), "
                                          "or no app session (log in again: 'somnus app')"),
                    {"WWW-Authenticate": "Bearer"})
            if (scope["method"] not in web_login.SAFE_METHODS
                    and not web_login.csrf_ok(session, headers.get(web_login.CSRF_HEADER))):
                return error_response(403, ErrorBody(
                    error="Forbidden", detail="missing or wrong X-CSRF-Token: reload the page"))
            scope.setdefault("state", {})[web.SESSION_STATE] = session
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return error_response(413, self._too_large())
        return None

    def _session(self, headers: dict[str, str]) -> WebSession | None:
        digest = self.tokens.digest()
        cookie = web_login.cookie_value(headers.get("cookie"))
        return self.sessions.find(cookie, digest) if digest and cookie else None

    def _too_large(self) -> ErrorBody:
        return ErrorBody(error=status_name(413),
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


def _with_event_models(app: FastAPI) -> None:
    """Add the models only SSE ``data`` refers to (``api.sse``) to the document's
    components: no route returns them, so FastAPI does not list them itself."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()  # caches itself in app.openapi_schema
            _, defs = models_json_schema([(m, "serialization") for m in sse.EVENT_MODELS],
                                         ref_template="#/components/schemas/{model}")
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in defs.get("$defs", {}).items():
                schemas.setdefault(name, schema)  # FastAPI's own entry (same model) wins
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, host: Host | None = None,
               api_host: str | None = None, live: bool = False,
               monitor: bool = False) -> FastAPI:
    """The API over one Somnus home.

    ``host`` is the composition root to serve (tests pass one over libvirt's test
    driver and fakes); without it one is built from ``settings``. ``api_host`` is
    where it listens (for the security view). With ``live`` (``somnus serve``), the
    start-up first recovers what a killed command left open, then follows libvirt's
    lifecycle events so reads need no libvirt call, and a thread serves the research VM's
    fetch queue while that VM runs. With ``monitor``, the security monitor samples,
    enforces the policy and logs in a thread while the app runs.
    """
    if host is None:
        if live:
            start_event_loop()  # before the connection that subscribes is opened
        host = Host(settings or load_settings())
    view = LiveView(host.hypervisor, host.lifecycle.current) if live else None
    ctx = ApiContext(host, api_host, view)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if view is not None:
            for note in host.swap.recover():
                log.info("start-up recovery: %s", note)
            try:
                view.start()
            except libvirt.libvirtError as exc:
                log.warning("no libvirt events (%s): reads ask libvirt each time", exc)
                ctx.live = None
                ctx.reads = ReadCache(ctx.settings.db_path, None)
        watching = host.security.monitor().start() if monitor else None
        # Web research reaches the network only through the host's fetch proxy: while the
        # server runs, it serves the research VM's fetch queue whenever that VM runs.
        fetching = host.research.start_serving() if live else None
        yield
        if fetching is not None:
            fetching[1].set()  # its long poll ends within seconds; the thread is a daemon
        if watching is not None:
            watching[1].set()
            watching[0].join(timeout=10)
        if view is not None:
            view.stop()
        ctx.reads.close()
        if not ctx.ops.wait_idle(SHUTDOWN_WAIT_S):
            log.warning("shutting down with operations still running")

    app = FastAPIOffline(  # /docs and /redoc with their assets from the package: no CDN
        static_url=web.DOCS_STATIC_URL,
        title="Somnus control API", version=API_VERSION, lifespan=lifespan,
        description="VMs, the foreground, images, chat and memory of a Somnus workstation. "
                    "Every route but /health needs `Authorization: Bearer <token>` "
                    "(`somnus api token`) or the app's session cookie (then, to change "
                    "anything, `X-CSRF-Token`).",
    )
    app.state.ctx = ctx
    for router in ROUTERS:
        app.include_router(router)
    web.mount(app)
    # The app's own (documentation) routes, and ours: the routers' tables, flat.
    routes = [r for r in app.router.routes if isinstance(r, Route)]
    install_error_handlers(app, routes + [r for router in ROUTERS for r in router.routes])
    _with_event_models(app)
    app.add_middleware(Guard, tokens=ctx.tokens, sessions=ctx.web_sessions)
    return app
