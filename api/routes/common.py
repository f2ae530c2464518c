"""What every protected router shares: the bearer scheme and the documented errors."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Response
from fastapi.security import HTTPBearer

from api.models import ErrorBody
from api.operations import Operation, OperationView

# Enforcement is api.app.Guard's (before any parsing); this only documents the scheme.
_bearer = HTTPBearer(auto_error=False, description="`somnus api token`")

_ERRORS = {
    401: "missing or wrong token",
    404: "no such VM, snapshot, image or operation",
    409: "exists already, or conflicts with the VM's state or a running operation",
    413: "request body too large",
    422: "invalid input",
    502: "the guest's agent or SSH failed or does not answer",
    503: "libvirt/QEMU unavailable, or the VM's agent is busy (Retry-After)",
    504: "a VM did not become ready in time",
    507: "not enough disk, memory budget or ports",
}
PROTECTED: dict[str, Any] = {
    "dependencies": [Depends(_bearer)],
    "responses": {code: {"model": ErrorBody, "description": text}
                  for code, text in _ERRORS.items()},
}


def accepted(op: Operation, response: Response) -> OperationView:
    """The 202 answer to a started operation: where to poll it, and its state now."""
    response.headers["Location"] = f"/operations/{op.id}"
    return op.view()
