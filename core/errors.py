"""The one exception hierarchy of Somnus.

Every error a user can cause or meet carries a one-line message, a CLI exit code
and an HTTP status, so the CLI and the REST API map it the same way.
"""

from __future__ import annotations


class SomnusError(Exception):
    """Base of every expected Somnus failure."""

    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(SomnusError):
    """A name, size or option the user gave is not acceptable."""

    exit_code = 2
    http_status = 422


class NotFound(SomnusError):
    """A VM, image or other named thing does not exist."""

    exit_code = 3
    http_status = 404


class AlreadyExists(SomnusError):
    """Something with that name exists already."""

    exit_code = 4
    http_status = 409


class Conflict(SomnusError):
    """The request does not fit the current state (e.g. starting a running VM twice)."""

    exit_code = 5
    http_status = 409


class SecurityHold(Conflict):
    """The security policy suspended or terminated the VM: it stays down until released."""


class HypervisorUnavailable(SomnusError):
    """libvirt or QEMU cannot be reached or refused the request."""

    exit_code = 6
    http_status = 503


class InsufficientResources(SomnusError):
    """Not enough disk, memory or free ports for the request."""

    exit_code = 7
    http_status = 507


class ReadinessTimeout(SomnusError):
    """A VM did not pass a readiness stage in time."""

    exit_code = 8
    http_status = 504

    def __init__(
        self, vm: str, stage: str, seconds: float, log_path: str, detail: str = ""
    ) -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"VM '{vm}' not ready: stage '{stage}' timed out after {seconds:.0f}s{extra}; "
            f"serial log: {log_path}"
        )
        self.stage = stage
        self.log_path = log_path


class ImageBuildError(SomnusError):
    """Building the guest image failed."""

    exit_code = 9
    http_status = 500


class GuestError(SomnusError):
    """The guest (SSH or agent) answered with a failure."""

    exit_code = 10
    http_status = 502


class Busy(GuestError):
    """The VM's agent refused a request for now (its queue is full, its model still loads).

    A GuestError too, so the callers that treat any agent failure as "not now"
    (best-effort flushes, readiness polls, retries) keep doing so.
    """

    exit_code = 11
    http_status = 503

    def __init__(self, detail: str = "", retry_after_s: int = 1, vm: str | None = None) -> None:
        who = f"VM '{vm}': " if vm else ""
        why = f": {detail}" if detail else ""
        super().__init__(f"{who}the VM's agent is busy; retry in {retry_after_s} s{why}")
        self.retry_after_s = retry_after_s


class GuestNotFound(NotFound, GuestError):
    """The VM's agent does not know the thing asked for (a role, a memory): a 404 from the guest."""


class GuestConflict(Conflict, GuestError):
    """The VM's agent refused the request in its current state: a 409 from the guest (a
    research run that exists already or has not finished; a sandbox that cannot start)."""


class GuestInvalidInput(InvalidInput, GuestError):
    """The VM's agent refused the request as invalid (context overflow, bad chat): 400/422."""
