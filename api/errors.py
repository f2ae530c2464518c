"""The one mapping of the error hierarchy to HTTP: ``{error, detail}`` bodies and statuses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from api.models import ErrorBody, error_body
from core.errors import Busy, SomnusError


def error_response(status: int, body: ErrorBody,
                    headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def status_name(status: int) -> str:
    """An HTTP status as an error name, like the hierarchy's (413: PayloadTooLarge)."""
    if status == 413:  # Python still calls it "Request Entity Too Large" (RFC 7231's name)
        return "PayloadTooLarge"
    try:
        return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        return "HTTPError"


def _methods(routes: Sequence[BaseRoute]) -> set[str]:
    methods: set[str] = set()
    for route in routes:
        methods |= getattr(route, "methods", None) or set()
    return methods


def _matching(routes: Sequence[BaseRoute], request: Request) -> tuple[list[BaseRoute], bool]:
    """The routes whose path the request's is, and whether they are literal ones.

    A literal path (``/projects/gc``) is its own resource, not an instance of a template
    beside it (``/projects/{name}``, whose names exclude it): when one matches, only
    literal routes count.
    """
    matching = [r for r in routes if r.matches(request.scope)[0] is not Match.NONE]
    literal = [r for r in matching if not getattr(r, "param_convertors", None)]
    return (literal, True) if literal else (matching, False)


def allowed_methods(routes: Sequence[BaseRoute], request: Request) -> str:
    """Every method the request's path has, for a 405's ``Allow``.

    FastAPI makes one route per method, and Starlette's 405 names only the first route
    whose path matched (``Allow: GET`` for a path that also takes POST).
    """
    return ", ".join(sorted(_methods(_matching(routes, request)[0])))


def method_not_allowed(request: Request, allow: str) -> JSONResponse:
    return error_response(405, ErrorBody(
        error=status_name(405),
        detail=f"{request.method} is not allowed here; allowed: {allow}"), {"Allow": allow})


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """The handlers; ``routes`` are every route the app serves, flat (FastAPI nests
    included routers), for the ``Allow`` of a 405."""

    def somnus_error(request: Request, exc: Exception) -> JSONResponse:
        """The one mapping of the error hierarchy: its status, ``{error, detail}``;
        anything else is a bug: 500.

        A failure on a named VM (a route with a ``name`` path parameter) is also
        recorded in that VM's errors when it is the VM's, not the request's, fault.
        A ``Busy`` answers 503 with ``Retry-After``.
        """
        vm = request.path_params.get("name")
        if vm and not isinstance(exc, Busy):  # a full queue is load, not a fault of the VM
            route = request.scope.get("route")
            source = f"{request.method} {getattr(route, 'path', request.url.path)}"
            request.app.state.ctx.record_failure(vm, source, exc)
        status = getattr(exc, "http_status", 500)
        # Retry-After is integer seconds (RFC 9110); the guest's own wait passes through.
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Busy) else None
        return error_response(status, error_body(exc), headers)

    def validation_error(request: Request, exc: Exception) -> JSONResponse:
        """422, unless a template route refused a literal path's name (GET /projects/gc
        reaches /projects/{name}): that is a method the literal resource lacks, 405."""
        assert isinstance(exc, RequestValidationError)
        literals, literal = _matching(routes, request)
        if literal and request.method not in _methods(literals):
            return method_not_allowed(request, ", ".join(sorted(_methods(literals))))
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        return error_response(422, ErrorBody(error="InvalidInput", detail=problems))

    def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (not UTF-8, say)
            return error_response(422, ErrorBody(error="InvalidInput",
                                                  detail=f"body: {exc.detail}"))
        allow = allowed_methods(routes, request) if exc.status_code == 405 else ""
        if allow:  # RFC 9110: a 405 lists what the resource does allow
            return method_not_allowed(request, allow)
        return error_response(exc.status_code,
                               ErrorBody(error=status_name(exc.status_code),
                                         detail=str(exc.detail)), exc.headers)

    app.add_exception_handler(SomnusError, somnus_error)
    app.add_exception_handler(Exception, somnus_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


