"""What every protected router shares: the bearer scheme and the documented errors."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Response
from fastapi.security import HTTPBearer

from api.context import MAX_BODY_BYTES
from api.models import ErrorBody
from api.operations import Operation, OperationView

# Enforcement is api.app.Guard's (before any parsing); this only documents the scheme.
_bearer = HTTPBearer(auto_error=False, description="`somnus api token`")

# Every status the error mapping (api.errors, core.errors) and the Guard can answer with.
ERRORS = {
    401: "missing or wrong token (or no app session)",
    403: "an app session's change without its X-CSRF-Token",
    404: "no such VM, snapshot, image, operation, project, dev session or code block",
    409: "exists already, an id prefix matches several, or it conflicts with the VM's "
         "state or a running operation",
    413: f"request body over {MAX_BODY_BYTES >> 20} MiB",
    422: "invalid input",
    502: "the guest's agent or SSH failed or does not answer",
    503: "libvirt/QEMU unavailable, or the VM's agent is busy (Retry-After)",
    504: "a VM did not become ready in time",
    507: "not enough disk, memory budget or ports",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "the scheme to use", "required": True,
                               "schema": {"type": "string", "const": "Bearer"}}},
    503: {"Retry-After": {"description": "seconds, when the VM's agent is busy",
                          "schema": {"type": "integer", "minimum": 0}}},
}
PROTECTED: dict[str, Any] = {
    "dependencies": [Depends(_bearer)],
    "responses": {code: {"model": ErrorBody, "description": text,
                         **({"headers": _HEADERS[code]} if code in _HEADERS else {})}
                  for code, text in ERRORS.items()},
}
# The 202 of a started operation (see ``accepted``).
ACCEPTED: dict[int | str, dict[str, Any]] = {202: {
    "description": "started: poll `Location` or follow its `/events`",
    "headers": {"Location": {"description": "the operation", "required": True,
                             "schema": {"type": "string",
                                        "pattern": "^/operations/[0-9a-f]{32}$"}}},
}}


def accepted(op: Operation, response: Response) -> OperationView:
    """The 202 answer to a started operation: where to poll it, and its state now."""
    response.headers["Location"] = f"/operations/{op.id}"
    return op.view()
