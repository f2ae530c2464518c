"""Request and response bodies of the REST API that the service layer does not define.

Every request body forbids unknown fields; names are checked by the service's own
rule (``orchestrator.vms.validate_name``), so the API and the CLI refuse the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from guest_agent.protocol import (
    ChatCompletionResponse,
    MemoryCreate,
    MemorySearchRequest,
    Subsystem,
)
from orchestrator.errors import InvalidInput, SomnusError
from orchestrator.models import VMState
from orchestrator.vms import NAME_RE, validate_name

# The same rule as validate_name, for the OpenAPI document (and schema-driven clients).
NAME_PATTERN = "^(?!.*--)" + NAME_RE.pattern.removeprefix("^")


class ErrorBody(BaseModel):
    """Every error the API returns: the error class and a one-line detail."""

    error: str
    detail: str


def error_body(exc: BaseException) -> ErrorBody:
    if isinstance(exc, SomnusError):
        return ErrorBody(error=type(exc).__name__, detail=exc.message)
    return ErrorBody(error="InternalError", detail=f"{type(exc).__name__}: {exc}")


def _checked(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            validate_name(value, what)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return value

    return check


_NAME_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": NAME_PATTERN, "minLength": 2, "maxLength": 32})
VMName = Annotated[str, AfterValidator(_checked("VM")), _NAME_SCHEMA]
SnapshotName = Annotated[str, AfterValidator(_checked("snapshot")), _NAME_SCHEMA]
# Path parameters.
VMPath = Annotated[VMName, Path(description="VM name")]
RefPath = Annotated[VMName, Path(description="VM name, or a subsystem with exactly one VM")]
SnapshotPath = Annotated[SnapshotName, Path(description="snapshot name")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VMCreate(Strict):
    name: VMName
    subsystem: Subsystem
    memory_mib: int | None = Field(default=None, ge=256, le=1 << 20)
    vcpus: int | None = Field(default=None, ge=1, le=256)
    image: str | None = Field(default=None, pattern="^[0-9a-f]{1,64}$",
                              description="image recipe-hash prefix (default: current)")
    wait: bool = Field(default=True, description="the operation ends when the agent answers")


class VMStart(Strict):
    wait: bool = Field(default=True, description="the operation ends when the agent answers")


class VMStop(Strict):
    force: bool = Field(default=False, description="power off without asking the guest")


class StopResult(BaseModel):
    name: str
    clean: bool  # False: powered off after the guest did not shut down in time


class SnapshotCreate(Strict):
    name: SnapshotName
    description: str = Field(default="", max_length=500)


class RevertResult(BaseModel):
    name: str
    snapshot: str
    state: VMState


class ImageBuild(Strict):
    force: bool = Field(default=False, description="rebuild even if cached")


class ChatRequest(Strict):
    """One user message; the VM's agent keeps the conversation."""

    message: str = Field(min_length=1, max_length=100_000)
    stream: bool = Field(default=False, description="answer as server-sent events")
    new: bool = Field(default=False, description="start a new conversation")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)

    def sampling(self) -> dict[str, float | int | None]:
        return self.model_dump(include={"temperature", "top_p", "top_k", "max_tokens", "seed"})


class ChatReply(ChatCompletionResponse):
    """The whole answer, and which VM gave it."""

    vm: str


class MemoryAdd(MemoryCreate):
    model_config = ConfigDict(extra="forbid")


class MemorySearch(MemorySearchRequest):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: str
    version: str
