"""Multi-agent collaborations: start one (its run goes on in a worker thread, an operation
of this server), list, read, follow its transcript as server-sent events, export it,
cancel, resume. Each handler is a call into ``CollabService``, as ``somnus collab`` makes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import Field, StrictBool
from pydantic import Strict as StrictType

from api import sse
from api.context import ApiContext, Ctx
from api.models import NOT_BLANK, Strict
from api.routes.common import PROTECTED
from core.errors import Conflict, InvalidInput
from core.types import WHOLE, Progress
from guest_agent.protocol.collab import (
    COLLAB_ID_PATTERN,
    MAX_ROLE_NAME,
    ROLE_NAME_PATTERN,
    AgentRole,
)
from orchestrator.collab.export import MEDIA_TYPE, TranscriptFormat, render
from orchestrator.collab.models import (
    CollabLimits,
    CollabList,
    CollabStatus,
    CollabView,
    Placement,
    Team,
    Transcript,
    TranscriptEntry,
    TurnOrder,
)
from orchestrator.collab.team import DEFAULT_ROLES, checked, prompt_role_for, team_from_names

router = APIRouter(prefix="/collab", tags=["collab"], **PROTECTED)
CollabIdPath = Annotated[str, Path(pattern=COLLAB_ID_PATTERN, description="collaboration id")]

_NAME = ROLE_NAME_PATTERN.removeprefix("^").removesuffix("$")
ROLES_PATTERN = f"^{_NAME}(?:,{_NAME}){{0,11}}$"  # at most 12, as a team holds
RoleName = Annotated[str, Field(pattern=ROLE_NAME_PATTERN, max_length=MAX_ROLE_NAME)]
_LIMITS = CollabLimits.model_fields
TAKE_WAIT_S = 5.0  # for a run to take its collaboration (it locks it first thing)

# The guards' bounds (``CollabLimits``), as JSON has numbers: 3.0 is 3, "3" and true are not.
MaxTurns = Annotated[int, StrictType(), Field(ge=1, le=200), WHOLE]
BudgetTokens = Annotated[int, StrictType(), Field(ge=100, le=10_000_000), WHOLE]
BudgetMinutes = Annotated[float, StrictType(), Field(gt=0, le=24 * 60)]
MaxStrikes = Annotated[int, StrictType(), Field(ge=1, le=50), WHOLE]
TurnTokens = Annotated[int, StrictType(), Field(ge=8, le=512), WHOLE]


class RoleIn(Strict):
    """One role (``AgentRole``, as a team file writes it)."""

    name: RoleName = Field(description="lowercase; its VM is agent-NAME")
    prompt_role: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="the identity-stabilised prompt role it speaks as (default: the built-in "
                    "role of its name, else its name)")
    goal: str = Field(default="", max_length=500)
    constraints: list[str] = Field(default_factory=list, max_length=8)
    next: list[RoleName] | None = Field(
        default=None, min_length=1,
        description="the roles that may speak after it (graph order); null: any")
    can_finish: StrictBool = Field(default=False, description="may give the final answer")

    def role(self) -> AgentRole:
        return AgentRole(name=self.name, prompt_role=self.prompt_role
                         or prompt_role_for(self.name), goal=self.goal,
                         constraints=self.constraints, next=self.next,
                         can_finish=self.can_finish)


class TeamIn(Strict):
    """A team (``Team``, as a team file writes it)."""

    roles: list[RoleIn] = Field(min_length=1, max_length=12)
    order: TurnOrder = TurnOrder.ROUND_ROBIN
    moderator: RoleName | None = Field(default=None,
                                       description="speaks after every other turn")


class CollabStart(Strict):
    """A collaboration: the task, the team (``roles`` or ``team``), the guards (the
    defaults where null) and where the roles run."""

    task: str = Field(min_length=1, max_length=4000, pattern=NOT_BLANK)
    roles: str | None = Field(
        default=None, pattern=ROLES_PATTERN,
        description=f"comma-separated role names, round-robin, the last one finishing "
                    f"(default, without team: {DEFAULT_ROLES})")
    team: TeamIn | None = Field(default=None, description="instead of roles")
    order: TurnOrder | None = Field(default=None,
                                    description="overrides the team's; graph needs team")
    max_turns: MaxTurns | None = Field(default=None,
                                       description=f"default {_LIMITS['max_turns'].default}")
    budget_tokens: BudgetTokens | None = Field(
        default=None, description=f"all turns; default {_LIMITS['budget_tokens'].default}")
    budget_minutes: BudgetMinutes | None = Field(
        default=None, description=f"turns and swaps; default "
                                  f"{_LIMITS['budget_minutes'].default}")
    max_strikes: MaxStrikes | None = Field(
        default=None, description=f"turns of no progress that end the run; default "
                                  f"{_LIMITS['max_strikes'].default}")
    turn_max_tokens: TurnTokens | None = Field(
        default=None, description=f"one turn's; default {_LIMITS['turn_max_tokens'].default}")
    placement: Placement = Placement.PER_ROLE

    def chosen_team(self) -> Team:
        if self.roles is not None and self.team is not None:
            raise Conflict("give roles or team, not both")
        if self.team is None:
            if self.order is TurnOrder.GRAPH:
                raise Conflict("order graph needs a team whose roles name their 'next'")
            return team_from_names(self.roles or DEFAULT_ROLES,
                                   self.order or TurnOrder.ROUND_ROBIN)
        order = self.order or self.team.order
        return checked(Team(roles=[r.role() for r in self.team.roles], order=order,
                            moderator=self.team.moderator))

    def limits(self) -> CollabLimits:
        fields = self.model_dump(include=set(_LIMITS), exclude_none=True)
        return CollabLimits.model_validate(fields)


STARTED: dict[int | str, dict[str, Any]] = {202: {
    "description": "started: poll `Location`, or follow its `/events`",
    "headers": {"Location": {"description": "the collaboration", "required": True,
                             "schema": {"type": "string", "pattern": "^/collab/"
                                        + COLLAB_ID_PATTERN.removeprefix("^")}}},
}}
TRANSCRIPT_TYPES: dict[int | str, dict[str, Any]] = {200: {
    "description": "the transcript: JSON, or Markdown (`format`)",
    "content": {MEDIA_TYPE[TranscriptFormat.MARKDOWN]: {"schema": {"type": "string"}}},
}}
# What a reconnecting EventSource sends: the id of the last event it got (an entry's seq).
LastEventId = Annotated[int, Header(ge=0, le=1_000_000_000,
                                    description="resume after this entry (the last event "
                                                "id received)")]


@contextmanager
def _inconsistent_is_a_conflict() -> Iterator[None]:
    """A team the document allows but that does not hold together (a role named twice, a
    'next' or moderator no role has, graph order without a team): the request is well
    formed, what it asks for is not possible: 409, not 422."""
    try:
        yield
    except InvalidInput as exc:
        raise Conflict(exc.message) from None


def _run_in_background(ctx: ApiContext, kind: str, collab_id: str, resume: bool
                       ) -> CollabView:
    """The run, in a worker thread: an operation of this server, one at a time per
    collaboration (a second is refused, 409). Waits until the run has taken the
    collaboration (its first progress line or entry) or ended, so that what is answered,
    and what a client reads next, shows it running."""
    svc = ctx.host.collab
    taken = threading.Event()

    def work(progress: Progress) -> dict[str, Any]:
        def tell(line: str) -> None:
            taken.set()
            progress(line)

        go = svc.resume if resume else svc.run
        try:
            return go(collab_id, tell, lambda _: taken.set()).model_dump(mode="json")
        finally:
            taken.set()

    op = ctx.ops.start(kind, collab_id, work)
    taken.wait(TAKE_WAIT_S)
    view = svc.show(collab_id)
    if view.status is CollabStatus.PAUSED:
        # Read as active, then the lock found free: the run had not taken it yet (slow to
        # start, yet running), or it ended in between, and then a second read shows how.
        view = (svc.show(collab_id) if op.done
                else view.model_copy(update={"status": CollabStatus.ACTIVE}))
    return view


def _started(view: CollabView, response: Response) -> CollabView:
    """The 202 answer: where to poll it, and its state now."""
    response.headers["Location"] = f"/collab/{view.id}"
    return view


@router.post("", status_code=202, responses=STARTED)
def start_collab(body: CollabStart, ctx: Ctx, response: Response) -> CollabView:
    """Start a collaboration: it runs in the background, each role's agent VM made when
    missing and brought to the foreground for its turn."""
    with _inconsistent_is_a_conflict():
        team = body.chosen_team()
    view = ctx.host.collab.create(body.task, team, body.limits(), body.placement)
    return _started(_run_in_background(ctx, "collab", view.id, resume=False), response)


@router.get("")
def list_collabs(ctx: Ctx) -> CollabList:
    """Every collaboration, newest first."""
    return CollabList(collaborations=ctx.host.collab.all())


@router.get("/{collab_id}")
def get_collab(collab_id: CollabIdPath, ctx: Ctx) -> CollabView:
    """A collaboration: status, team, guards, tally, end reason, final answer."""
    return ctx.host.collab.show(collab_id)


@router.get("/{collab_id}/transcript", response_model=Transcript,
            responses=TRANSCRIPT_TYPES)
def get_transcript(collab_id: CollabIdPath, ctx: Ctx,
                   fmt: Annotated[TranscriptFormat, Query(alias="format")]
                   = TranscriptFormat.JSON) -> Any:
    """Every entry (turns with findings and costs, the host's notes) and the
    collaboration."""
    transcript = ctx.host.collab.transcript(collab_id)
    if fmt is TranscriptFormat.JSON:
        return transcript
    return Response(render(transcript, fmt), media_type=MEDIA_TYPE[fmt])


@router.get("/{collab_id}/events", response_class=StreamingResponse,
            responses=sse.COLLAB_EVENTS)
def collab_events(collab_id: CollabIdPath, ctx: Ctx,
                  after: Annotated[int, Query(ge=0, le=1_000_000_000,
                                              description="only the entries after this seq")]
                  = 0,
                  last_event_id: LastEventId = 0) -> StreamingResponse:
    """The transcript's entries after `after` (or `Last-Event-ID`), then those appended
    as they come, until the run stops."""
    entries = sse.primed(ctx.host.collab.follow(collab_id, max(after, last_event_id)))
    return sse.response(sse.model_events(entries, event_id=_seq))


def _seq(entry: TranscriptEntry) -> int:
    return entry.seq


@router.post("/{collab_id}/cancel")
def cancel_collab(collab_id: CollabIdPath, ctx: Ctx) -> CollabView:
    """Stop a collaboration after its current turn; one that does not run is cancelled
    now (409 if it has ended)."""
    return ctx.host.collab.cancel(collab_id)


@router.post("/{collab_id}/resume", status_code=202, responses=STARTED)
def resume_collab(collab_id: CollabIdPath, ctx: Ctx, response: Response) -> CollabView:
    """Go on with a paused, cancelled or failed collaboration in the background, from the
    turn it had not finished (409 if it completed or runs)."""
    svc = ctx.host.collab
    view = svc.show(collab_id)
    if view.status is CollabStatus.COMPLETED:
        raise Conflict(f"collaboration {collab_id} is complete ({view.end_reason}): "
                       "start a new one")
    if svc.running(collab_id):
        raise Conflict(f"collaboration {collab_id} is running: follow its events")
    fresh = not svc.transcript(collab_id).entries
    return _started(_run_in_background(ctx, "collab resume", collab_id, resume=not fresh),
                    response)
