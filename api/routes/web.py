"""The Somnus app: its page and assets, and the browser's login (``api.web_login``).

The page is static (``api/web``: plain ES modules, no build step) and talks to the same
REST routes as every other client; what it adds is a cookie session instead of the
bearer token, and ``/events`` (``api.live_events``) for the live views.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from api import live_events, sse, web_login
from api.context import Ctx
from api.models import ErrorBody, Strict
from api.routes.common import PROTECTED
from api.web_login import WebSession

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_URL = "/app/static"
DOCS_STATIC_URL = "/app/docs-static"
SESSION_STATE = "web_session"  # where api.app.Guard leaves a browser's session
# The page runs only its own scripts; a web artifact (another loopback port) may be framed
# by it, and nobody may frame the page itself.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; connect-src 'self'; "
               "frame-src 'self' http://127.0.0.1:* http://localhost:*; frame-ancestors 'none'; "
               "base-uri 'none'; form-action 'self'")

page = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/app", tags=["app"], **PROTECTED)


class Login(Strict):
    token: str = Field(min_length=1, max_length=512)


class SessionView(BaseModel):
    """The browser's session: the CSRF token to send with every change, and its end."""

    csrf: str
    expires_at: datetime


class LoginLink(BaseModel):
    """A one-time login URL for the app (``somnus app``): it works once, for minutes."""

    url: str
    expires_at: datetime


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _view(session: WebSession) -> SessionView:
    return SessionView(csrf=session.csrf, expires_at=_at(session.expires_at))


def _with_cookie(response: Response, request: Request, session: WebSession | None) -> Response:
    response.headers.append("Set-Cookie",
                            web_login.cookie_header(session, request.url.scheme == "https"))
    response.headers["Cache-Control"] = "no-store"
    return response


@page.get("/")
def index() -> FileResponse:
    """The app's one page; the views load as modules behind it."""
    return FileResponse(WEB_DIR / "index.html", headers={
        "Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


@page.post("/app/login")
def login(body: Login, request: Request, ctx: Ctx) -> Response:
    """Log the browser in with the API token: a session cookie and its CSRF token."""
    digest = ctx.tokens.digest()
    if digest is None or not ctx.tokens.matches(body.token):
        return JSONResponse(ErrorBody(error="Unauthorized", detail="wrong token: "
                                      "'somnus api token' prints it").model_dump(), 401)
    session = ctx.web_sessions.open(digest)
    return _with_cookie(JSONResponse(_view(session).model_dump(mode="json")), request, session)


@page.get("/app/login/{code}")
def login_link(code: Annotated[str, PathParam(max_length=64)], request: Request,
               ctx: Ctx) -> Response:
    """Spend a one-time login link: the session cookie, then the page."""
    digest = ctx.tokens.digest()
    session = ctx.web_sessions.redeem(code, digest) if digest else None
    if session is None:
        return PlainTextResponse("This login link was used already or has expired: run "
                                 "'somnus app' for a new one.", 401)
    return _with_cookie(RedirectResponse("/", 303), request, session)


@router.get("/session")
def session_info(request: Request) -> SessionView:
    """The browser's session (cookie requests only; a bearer token has none: 404)."""
    session = request.scope.get("state", {}).get(SESSION_STATE)
    if session is None:
        return JSONResponse(ErrorBody(  # type: ignore[return-value]
            error="Not Found", detail="no app session: this request used the bearer token"
        ).model_dump(), 404)
    return _view(session)


@router.post("/logout", status_code=204)
def logout(request: Request, ctx: Ctx) -> Response:
    """End the browser's session."""
    session = request.scope.get("state", {}).get(SESSION_STATE)
    if session is not None:
        ctx.web_sessions.close(session.id)
    return _with_cookie(Response(status_code=204), request, None)


@router.post("/links", status_code=201)
def new_link(request: Request, ctx: Ctx) -> LoginLink:
    """A one-time login URL for a browser (what ``somnus app`` prints)."""
    digest = ctx.tokens.digest()
    assert digest is not None  # the Guard let the caller in with the current token
    code, expires = ctx.web_sessions.new_link(digest)
    return LoginLink(url=str(request.url_for("login_link", code=code)), expires_at=_at(expires))


# Outside the OpenAPI document: it never ends, so a client generated from the document
# (or a fuzzer) would wait on it forever. The README documents its events.
@page.get("/events")
async def events(ctx: Ctx) -> StreamingResponse:
    """The live feed the app's views follow: status, libvirt lifecycle events, swaps,
    security samples and VM errors, as server-sent events until the client leaves."""
    return sse.response(live_events.feed(ctx))


def mount(app: FastAPI) -> None:
    """Add the page, its login and its assets to ``app`` (``router`` is one of ``ROUTERS``:
    documented, and mounted with the others)."""
    app.include_router(page)
    app.mount(STATIC_URL, StaticFiles(directory=WEB_DIR / "static"), name="app-static")
