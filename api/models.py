"""Request and response bodies of the REST API that the service layer does not define.

Every request body forbids unknown fields; names are checked by the service's own
rule (``orchestrator.vms.validate_name``), so the API and the CLI refuse the same.
Numbers and booleans in bodies are JSON's own: pydantic's lax coercions (``0`` for
false, ``"3"`` or ``true`` for a number) would accept what the OpenAPI document says
is invalid.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Optional
from uuid import UUID

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    WithJsonSchema,
    create_model,
)
from pydantic import Strict as StrictType

from core.errors import InvalidInput, SomnusError
from core.types import WHOLE
from guest_agent.protocol import (
    ChatCompletionResponse,
    MemoryCreate,
    MemorySearchRequest,
    Subsystem,
)
from guest_agent.protocol.runs import (
    RELATIVE_PATH_PATTERN,
    RUN_ID_RE,
    Language,
    LimitName,
    RunEvent,
    RunLimits,
    RunOutcome,
    RunResult,
    SourceFile,
    WebStatus,
)
from images.recipe import Flavour
from orchestrator.artifacts.sources import (
    ARTIFACT_NAME_PATTERN,
    RESERVED_ARTIFACT_NAMES,
    check_artifact_name,
)
from orchestrator.artifacts.tables import ArtifactKind, ArtifactStatus
from orchestrator.devsessions import (
    CodeBlock,
    DevSession,
    DevSessionHeader,
    DevSessionStatus,
    SessionSummary,
    block_paths,
)
from orchestrator.devsessions.models import DEFAULT_TITLE, MAX_EVENT_CONTENT, MAX_TITLE
from orchestrator.models import VMState
from orchestrator.projects import (
    CommitKind,
    GcPlan,
    ProjectCommitRow,
    ProjectInfo,
    ProjectView,
    SourceKind,
)
from orchestrator.views import SnapshotView
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
# A project is named like its VM (it is one), but not like a literal path beside
# /projects/{name}: POST /projects/gc is the clean-up, and GET or DELETE there must not
# reach a project called 'gc' that the document cannot tell from it.
RESERVED_PROJECT_NAMES = frozenset({"gc"})


def _not_reserved(value: str) -> str:
    if value in RESERVED_PROJECT_NAMES:
        raise ValueError(f"'{value}' is reserved: /projects/{value} is an action of the API")
    return value


ProjectName = Annotated[str, AfterValidator(_checked("project")), AfterValidator(_not_reserved),
                        WithJsonSchema({"type": "string", "minLength": 2, "maxLength": 32,
                                        "pattern": "^" + "".join(
                                            f"(?!{n}$)" for n in sorted(RESERVED_PROJECT_NAMES))
                                        + NAME_PATTERN.removeprefix("^")})]
ProjectPath = Annotated[ProjectName, Path(description="project name (also its VM's name)")]
SessionPath = Annotated[str, Path(pattern="^[0-9a-fA-F-]{1,36}$",
                                  description="dev session id, or a unique prefix of it")]
BlockPath = Annotated[str, Path(min_length=1, max_length=255,
                                description="code block id (or a unique prefix), or its path "
                                            "as in the session's code_blocks (without '/')")]
VersionQuery = Annotated[int | None, Query(ge=1, description="version (default: the latest)")]


MemoryMiB = Annotated[int, StrictType(), Field(ge=256, le=1 << 20), WHOLE]
VCPUs = Annotated[int, StrictType(), Field(ge=1, le=256), WHOLE]
TopK = Annotated[int, StrictType(), Field(ge=0, le=1000), WHOLE]
MaxTokens = Annotated[int, StrictType(), Field(ge=1, le=32768), WHOLE]
Seed = Annotated[int, StrictType(), Field(ge=0, le=2**31 - 1), WHOLE]
Version = Annotated[int, StrictType(), Field(ge=1, le=2**31 - 1), WHOLE]  # fits SQLite
SearchTopK = Annotated[int, StrictType(), Field(ge=1, le=200), WHOLE]  # the agent's bounds
# Free text that reaches libvirt's XML or git's argv: no NUL or other C0 control but
# tab and newlines, nor U+FFFE/U+FFFF (XML 1.0 cannot carry them; C strings end at NUL).
PLAIN_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*$"
# Text the service strips (str.strip: its whitespace includes U+001C..U+001F, which
# JSON Schema's \s does not) and refuses when nothing is left: some character must not be.
NOT_BLANK = r"[^\s\x1c-\x1f]"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VMCreate(Strict):
    name: VMName
    subsystem: Subsystem
    memory_mib: MemoryMiB | None = None
    vcpus: VCPUs | None = None
    image: str | None = Field(default=None, pattern="^[0-9a-f]{1,64}$",
                              description="image recipe-hash prefix (default: current)")
    wait: StrictBool = Field(default=True,
                             description="the operation ends when the agent answers")


class VMStart(Strict):
    wait: StrictBool = Field(default=True,
                             description="the operation ends when the agent answers")


class VMStop(Strict):
    force: StrictBool = Field(default=False, description="power off without asking the guest")


class StopResult(BaseModel):
    name: str
    clean: bool  # False: powered off after the guest did not shut down in time


class SnapshotCreate(Strict):
    name: SnapshotName
    description: str = Field(default="", max_length=500, pattern=PLAIN_TEXT)


class RevertResult(BaseModel):
    name: str
    snapshot: str
    state: VMState


class ImageBuild(Strict):
    force: StrictBool = Field(default=False, description="rebuild even if cached")
    flavour: Flavour = Field(default=Flavour.BASE,
                             description="base, artifacts (compilers) or research (pdftotext)")


class ChatRequest(Strict):
    """One user message; the VM's agent keeps the conversation."""

    message: str = Field(min_length=1, max_length=100_000)
    stream: StrictBool = Field(default=False, description="answer as server-sent events")
    new: StrictBool = Field(default=False, description="start a new conversation")
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(default=None, gt=0.0, le=1.0)
    top_k: TopK | None = None
    max_tokens: MaxTokens | None = None
    seed: Seed | None = None

    def sampling(self) -> dict[str, float | int | None]:
        return self.model_dump(include={"temperature", "top_p", "top_k", "max_tokens", "seed"})


class ChatReply(ChatCompletionResponse):
    """The whole answer, and which VM gave it."""

    vm: str


class MemoryAdd(MemoryCreate):
    model_config = ConfigDict(extra="forbid")


class MemorySearch(MemorySearchRequest):
    model_config = ConfigDict(extra="forbid")

    top_k: SearchTopK = 10


class Health(BaseModel):
    status: str
    version: str


# -- dev sessions -------------------------------------------------------------------------


def _login() -> str:
    """Who a session belongs to when the request does not say: the server's user, as the
    CLI defaults to its own."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER variable and no passwd entry (containers)
        return "local"


class SessionCreate(Strict):
    title: str = Field(default=DEFAULT_TITLE, min_length=1, max_length=MAX_TITLE,
                       pattern=NOT_BLANK)
    user_id: str = Field(default_factory=_login, min_length=1, max_length=200,
                         pattern=NOT_BLANK, description="default: the API server's login")
    chat_session_id: UUID | None = Field(default=None,
                                         description="chat session it belongs to")


class TurnCreate(Strict):
    """One chat turn: the answer's code fences become blocks, or new versions of them."""

    prompt: str = Field(max_length=MAX_EVENT_CONTENT)
    answer: str = Field(max_length=MAX_EVENT_CONTENT)
    target: str | None = Field(default=None, min_length=1, max_length=255,
                               description="block (id prefix or path) that unnamed fences "
                                           "revise")


class BlockRollback(Strict):
    to: Version = Field(description="version whose content becomes the next version")


class SessionAction(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    COMPLETE = "complete"
    ARCHIVE = "archive"


# What each action (the CLI's commands of the same names) moves a session to.
ACTION_STATUS = {SessionAction.PAUSE: DevSessionStatus.PAUSED,
                 SessionAction.RESUME: DevSessionStatus.ACTIVE,
                 SessionAction.COMPLETE: DevSessionStatus.COMPLETED,
                 SessionAction.ARCHIVE: DevSessionStatus.ARCHIVED}


class SessionStatusChange(Strict):
    action: SessionAction

    @property
    def status(self) -> DevSessionStatus:
        return ACTION_STATUS[self.action]


class SessionPromote(Strict):
    project: ProjectName = Field(description="project to promote into (created if missing)")
    memory_mib: MemoryMiB | None = Field(default=None, description="RAM of a new project VM")


class BlockView(CodeBlock):
    path: str  # what the block is called in the session (its file, else a made-up name)


class SessionDetail(DevSessionHeader):
    """A session's fields, summary and the latest version of each code block."""

    summary: SessionSummary
    code_blocks: list[BlockView]

    @classmethod
    def of(cls, session: DevSession) -> SessionDetail:
        paths = block_paths(session)
        header = session.model_dump(include=set(DevSessionHeader.model_fields))
        return cls(**header, summary=session.get_summary(),
                   code_blocks=[BlockView(**b.model_dump(), path=paths[b.block_id])
                                for b in session.code_blocks.values()])


class BlockDiff(BaseModel):
    block_id: UUID
    diff: str  # unified diff; empty when the versions are the same


# -- projects -----------------------------------------------------------------------------


class ProjectCreate(Strict):
    name: ProjectName
    repo: str | None = Field(default=None, min_length=1, max_length=2000, pattern=PLAIN_TEXT,
                             description="repository URL or host path to clone into it")
    memory_mib: MemoryMiB | None = None


class ProjectRestore(Strict):
    start: StrictBool = Field(default=True, description="boot the VM now")


class ProjectGc(Strict):
    dry_run: StrictBool = Field(default=False, description="only report")
    older_than_days: StrictFloat | None = Field(
        default=None, ge=0, le=36500,
        description="also delete archived projects unused for this many days")


class ProjectSummary(BaseModel):
    name: str
    vm_name: str
    created_at: datetime
    last_used: datetime
    archived: bool
    archived_at: datetime | None
    source_kind: SourceKind
    source: str
    branch: str
    pending_note: str | None
    vm_state: str  # the VM's state, or "missing"
    ai_commits: int

    @classmethod
    def of(cls, view: ProjectView) -> ProjectSummary:
        return cls(**view.row.model_dump(), vm_state=view.vm_state, ai_commits=view.ai_commits)


class ProjectCommit(BaseModel):
    sha: str
    kind: CommitKind
    subject: str
    reverts: str | None
    dev_session_id: str | None
    event_id: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: ProjectCommitRow) -> ProjectCommit:
        return cls(**row.model_dump(exclude={"id", "project"}))


class ProjectDetail(ProjectSummary):
    """One project: its record, VM, snapshots and the commits Somnus made."""

    ssh_port: int | None
    ssh_command: str | None  # a shell in the project folder (with the VM in front)
    snapshots: list[SnapshotView]
    commits: list[ProjectCommit]

    @classmethod
    def of_info(cls, info: ProjectInfo) -> ProjectDetail:
        return cls(**ProjectSummary.of(info.view).model_dump(),
                   ssh_port=info.vm.ssh_port if info.vm else None,
                   ssh_command=info.ssh_command,
                   snapshots=[SnapshotView.model_validate(s) for s in info.snapshots],
                   commits=[ProjectCommit.of(c) for c in info.commits])


class GcResult(BaseModel):
    orphan_records: list[str]  # projects whose VM is gone
    stale_temp: list[str]  # bundles and clones of dead commands
    expired: list[str]  # archived and unused for too long
    dry_run: bool

    @classmethod
    def of(cls, plan: GcPlan, dry_run: bool) -> GcResult:
        return cls(orphan_records=plan.orphan_records,
                   stale_temp=[str(p) for p in plan.stale_temp], expired=plan.expired,
                   dry_run=dry_run)



# -- artifacts -----------------------------------------------------------------------------

def _artifact_name(value: str) -> str:
    try:
        return check_artifact_name(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


ArtifactName = Annotated[str, AfterValidator(_artifact_name), WithJsonSchema({
    "type": "string", "pattern": "^" + "".join(f"(?!{n}$)" for n in sorted(
        RESERVED_ARTIFACT_NAMES)) + ARTIFACT_NAME_PATTERN.removeprefix("^")})]
ArtifactPath = Annotated[ArtifactName, Path(description="artifact name")]
RunPath = Annotated[str, Path(pattern=RUN_ID_RE.pattern, description="run id")]


# Standard base64 with its padding: what the schema says is what decodes.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
FilePath = Annotated[str, Field(min_length=1, max_length=255, pattern=RELATIVE_PATH_PATTERN,
                                description="relative, inside the artifact's folder")]


class TextFile(Strict):
    path: FilePath
    content: str


class BinaryFile(Strict):
    path: FilePath
    base64: str = Field(pattern=BASE64_PATTERN, description="the bytes, base64")


ArtifactFile = TextFile | BinaryFile


def sources(files: list[ArtifactFile]) -> list[SourceFile]:
    """The protocol's files (``SourceFile``) of a request's."""
    return [SourceFile(path=f.path, content=f.content) if isinstance(f, TextFile)
            else SourceFile(path=f.path, content=f.base64, base64=True) for f in files]


class ArtifactCreate(Strict):
    name: ArtifactName
    language: Language
    files: list[ArtifactFile] = Field(min_length=1, max_length=1000)
    entry: str | None = Field(default=None, description="the file a run starts from")
    kind: ArtifactKind = ArtifactKind.PROGRAM


class ArtifactUpdate(Strict):
    files: list[ArtifactFile] = Field(min_length=1, max_length=1000)
    message: str = Field(default="", max_length=1000)


def _overrides(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with every field optional (null: the default), its bounds kept, and
    strict as every body here is (integers as JSON Schema has them)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        strict = [StrictType()] if info.annotation in (int, float) else []
        whole = [WHOLE] if info.annotation is int else []
        extra = [*strict, *info.metadata, *whole]
        typed: Any = Annotated[(info.annotation, *extra)] if extra else info.annotation
        fields[name] = (Optional[typed], Field(default=None, description=info.description))  # noqa: UP045
    return create_model(f"{model.__name__}Override", __config__=ConfigDict(extra="forbid"),
                        **fields)


if TYPE_CHECKING:
    RunLimitsOverride = BaseModel
else:
    RunLimitsOverride = _overrides(RunLimits)


class ArtifactRun(Strict):
    version: Version | None = Field(default=None, description="default: the latest")
    stdin: str = Field(default="", max_length=8 * 1024 * 1024)
    args: list[str] = Field(default_factory=list, max_length=256)
    limits: RunLimitsOverride = Field(default_factory=RunLimitsOverride,
                                      description="the language's defaults where null")


class ArtifactVersionView(BaseModel):
    number: int
    message: str
    created_at: datetime


class ArtifactView(BaseModel):
    name: str
    kind: ArtifactKind
    language: Language
    entry: str
    status: ArtifactStatus
    latest_version: int
    created_at: datetime
    updated_at: datetime


class ArtifactDetail(ArtifactView):
    versions: list[ArtifactVersionView]
    files: list[SourceFile] = Field(description="the latest version's files")


class ArtifactRunView(BaseModel):
    id: str
    artifact: str
    version: int
    vm_name: str
    outcome: RunOutcome | None = Field(description="null while it runs, or if it never ended")
    limit: LimitName | None
    exit_code: int | None
    signal: str | None
    duration_s: float | None
    started_at: datetime
    finished_at: datetime | None
    result: RunResult | None


class ArtifactRunLog(ArtifactRunView):
    events: list[RunEvent]


class WebView(WebStatus):
    url: str = Field(description="the open web artifact, on the host's loopback")


class ProjectTest(Strict):
    command: str | None = Field(default=None, min_length=1, max_length=10_000,
                                description="shell command; default: detected from the files")
