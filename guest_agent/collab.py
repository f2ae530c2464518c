"""One agent's turn in a multi-agent collaboration (``POST /collab/turn``).

The host decides who speaks and keeps the transcript; this module makes one turn:

1. the inbox (findings other agents published) is stored as SHARED memories, tagged
   with the collaboration and the role that found them, so this agent can retrieve
   them now and in later collaborations;
2. the prompt is assembled from the role's identity (SYSTEM, rebuilt from its definition
   every turn, never from the transcript), what memory returns for the task and the
   last message (MEMORY), the transcript's tail (CONTEXT, the oldest line cut first),
   and the identity anchor (SCRATCHPAD) right before the instruction;
3. the answer is decoded under a JSON grammar whose ``action`` enum holds only the
   actions the host allows this turn, so ending the run is a structured choice, never a
   magic word; an answer that does not validate is asked for again, then replaced by a
   fallback that says so;
4. the turn's own findings are stored in this agent's memory too.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Protocol

from pydantic import BaseModel, Field, StringConstraints, ValidationError

from guest_agent.chat import memory_line
from guest_agent.prompts.manager import IdentityPrompt
from guest_agent.prompts.stack import ContextOverflow, LayerItem, PromptLayers, assemble
from guest_agent.protocol import (
    MemoryAddResponse,
    MemoryCreate,
    MemoryHit,
    MemoryImportance,
    MemoryScope,
    MemorySearchRequest,
    MemoryType,
    RoleDefinition,
)
from guest_agent.protocol.collab import (
    COLLAB_KEY,
    FROM_ROLE_KEY,
    MAX_FINDING_CHARS,
    MAX_FINDINGS,
    CollabAction,
    Finding,
    TurnRequest,
)
from guest_agent.protocol.collab import TurnReply as TurnReply
from guest_agent.structured import (
    MAX_ATTEMPTS,
    ChatRuntime,
    attempt_params,
    json_grammar,
    why_refused,
)

log = logging.getLogger(__name__)

Content = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=400)]
FindingText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3,
                                               max_length=MAX_FINDING_CHARS)]
# A memory must share words with the query or be this close in meaning to be shown.
MIN_SIMILARITY = 0.3


class NotAgentVM(RuntimeError):
    """Turns are taken in agent VMs only (their memory is the agent's own)."""


class RoleSource(Protocol):
    """What a turn needs from the role registry (``RoleRegistry``)."""

    def get(self, name: str) -> RoleDefinition: ...


class MemoryLike(Protocol):
    """What a turn needs from ``MemoryManager``."""

    @property
    def ready(self) -> bool: ...

    def add(self, item: MemoryCreate, background: bool = False) -> MemoryAddResponse: ...

    def search(self, request: MemorySearchRequest) -> list[MemoryHit]: ...


# What the JSON around a turn's strings costs in tokens, and how many characters of
# text a token holds at the least (SmolLM2 averages about four on English).
ANSWER_OVERHEAD_TOKENS = 24
MIN_CHARS_PER_TOKEN = 3


@dataclass(frozen=True)
class AnswerShape:
    """How long a turn's strings may be: sized from ``max_tokens``, so a whole answer
    always fits in it and the first decode can validate (a cut-off answer would cost
    the retries, minutes each in a TCG guest)."""

    content_chars: int
    finding_chars: int
    findings: int

    @classmethod
    def for_tokens(cls, max_tokens: int) -> AnswerShape:
        room = max(0, max_tokens - ANSWER_OVERHEAD_TOKENS) * MIN_CHARS_PER_TOKEN
        findings = 2 if room >= 240 else 1
        # Half the room for the content, half for the findings.
        return cls(content_chars=max(20, min(400, room // 2)),
                   finding_chars=max(12, min(MAX_FINDING_CHARS, room // 2 // findings)),
                   findings=findings)


def answer_schema(actions: list[CollabAction], shape: AnswerShape) -> dict[str, object]:
    """The JSON schema of a turn's answer: its content, its findings, an allowed action
    (last, so the model decides after it has written)."""
    return {
        "type": "object",
        "properties": {
            "content": {"type": "string", "minLength": 1, "maxLength": shape.content_chars},
            "findings": {"type": "array", "minItems": 1, "maxItems": shape.findings,
                         "items": {"type": "string", "minLength": 3,
                                   "maxLength": shape.finding_chars}},
            "action": {"type": "string", "enum": [a.value for a in actions]},
        },
        "required": ["content", "findings", "action"],
        "additionalProperties": False,
    }


class TurnAnswer(BaseModel):
    action: CollabAction
    content: Content
    findings: list[FindingText] = Field(min_length=1, max_length=MAX_FINDINGS)


def role_definition(base: RoleDefinition, request: TurnRequest) -> RoleDefinition:
    """The prompt role the team role speaks as, with the team's goal and constraints."""
    role = request.role
    goals = ([role.goal] if role.goal else []) + base.goals
    return base.model_copy(update={
        "goals": goals, "constraints": base.constraints + role.constraints})


def finding_memory(finding: Finding) -> MemoryCreate:
    return MemoryCreate(
        content=f"{finding.from_role} found: {finding.content}",
        memory_type=MemoryType.CORE_FACT, importance=MemoryImportance.HIGH,
        scope=MemoryScope.SHARED, tags=["collab", finding.collab_id, finding.from_role],
        metadata={COLLAB_KEY: finding.collab_id, FROM_ROLE_KEY: finding.from_role,
                  "turn": finding.turn}, conversation_id=finding.collab_id)


def instruction(request: TurnRequest) -> str:
    """The turn's USER layer: the task, whose turn it is, what to answer."""
    lines = [f"Task: {request.task}",
             f"Turn {request.turn}. As the {request.role.prompt_role}, add something new: "
             "say it briefly in \"content\" and list its facts in \"findings\"."]
    if CollabAction.FINAL_ANSWER in request.actions:
        lines.append("Choose the action \"final_answer\" when your content answers the "
                     "task, else \"say\".")
    lines.append("Answer in JSON.")
    return "\n".join(lines)


class CollabTurns:
    """Takes turns for whatever role a request names (several roles may share a VM)."""

    def __init__(self, runtime: ChatRuntime, roles: RoleSource, memory: MemoryLike) -> None:
        self.runtime = runtime
        self.roles = roles
        self.memory = memory
        self._grammars: dict[str, str] = {}
        self._identities: dict[str, IdentityPrompt] = {}

    def take(self, request: TurnRequest) -> TurnReply:
        """One turn; ``UnknownRole`` (a ``KeyError``) for a prompt role the VM lacks."""
        started = time.monotonic()
        definition = role_definition(self.roles.get(request.role.prompt_role), request)
        stored = self._store_inbox(request.inbox)
        identity = self._identity(request.role.name, definition)
        identity.observe(request.task)  # the anchor counts this role's turns
        hits = self._recall(request)
        layers = PromptLayers(
            system=identity.system_prompt(),
            user=instruction(request),
            memory=[LayerItem(memory_line(h.memory), priority=h.score, ref=h.memory.memory_id)
                    for h in hits],
            # The newest line matters most: the oldest is cut first.
            context=[LayerItem(f"{line.role} (turn {line.turn}): {line.content}",
                               priority=line.turn) for line in request.transcript],
            scratchpad=[LayerItem(identity.scratchpad())],
        )
        try:
            prompt = assemble(self.runtime, layers, self.runtime.n_ctx, request.max_tokens)
        except ContextOverflow as exc:
            return self._fallback(request, str(exc), started, stored)
        answer, attempts, problem = None, 0, ""
        prompt_tokens = completion_tokens = 0
        grammar = self._grammar(request.actions, AnswerShape.for_tokens(request.max_tokens))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            attempts = attempt
            params = attempt_params(self.runtime.config, attempt, request.max_tokens,
                                    prompt.stops, grammar)
            pieces = list(self.runtime.generate(prompt.tokens, params))
            text = "".join(p.text for p in pieces)
            prompt_tokens += len(prompt.tokens)
            completion_tokens += min(self.runtime.count_tokens(text), request.max_tokens)
            try:
                answer = TurnAnswer.model_validate_json(text)
            except ValidationError as exc:
                problem = why_refused(exc, pieces)
                continue
            if answer.action in request.actions:
                break
            problem, answer = f"action {answer.action.value} is not allowed this turn", None
        inspection = prompt.inspection(identity.name, definition.name)
        if answer is None:
            reply = self._fallback(request, f"{MAX_ATTEMPTS} answers did not validate "
                                            f"({problem})", started, stored)
        else:
            reply = TurnReply(action=answer.action, content=answer.content,
                              findings=list(dict.fromkeys(answer.findings)))
        self._store_own(request, reply.findings)
        return reply.model_copy(update={
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "attempts": attempts, "stored": stored,
            "seconds": round(time.monotonic() - started, 3),
            "retrieved": [h.memory.content for h in hits], "prompt": inspection})

    # -- memory -----------------------------------------------------------------------------

    def _store_inbox(self, inbox: list[Finding]) -> int:
        """Store the findings others published (deduplicated by content); how many are new.
        Embedded now, so this very turn can retrieve them."""
        if not self.memory.ready:
            return 0
        return sum(0 if self.memory.add(finding_memory(f)).deduplicated else 1 for f in inbox)

    def _store_own(self, request: TurnRequest, findings: list[str]) -> None:
        if not self.memory.ready:
            return
        for text in findings:
            self.memory.add(finding_memory(Finding(
                collab_id=request.collab_id, turn=request.turn, from_role=request.role.name,
                content=text[:MAX_FINDING_CHARS])), background=True)

    def _recall(self, request: TurnRequest) -> list[MemoryHit]:
        """This collaboration's findings nearest to the task and the last line (all of
        them are on topic), then other memories (earlier collaborations) kept when they
        share words with the query or are close in meaning: the nearest of nothing
        relevant is still nearest."""
        k = request.memory_top_k
        if not self.memory.ready or k == 0:
            return []
        query = request.task
        if request.transcript:
            query += "\n" + request.transcript[-1].content
        query = query[:2000]
        hits = self.memory.search(MemorySearchRequest(query=query, top_k=k,
                                                      conversation_id=request.collab_id))
        seen = {h.memory.memory_id for h in hits}
        hits += [h for h in self.memory.search(MemorySearchRequest(query=query, top_k=k))
                 if h.memory.memory_id not in seen
                 and (h.keyword_score is not None or (h.similarity or 0.0) >= MIN_SIMILARITY)]
        return hits[:k]

    # -- helpers ----------------------------------------------------------------------------

    def _identity(self, role: str, definition: RoleDefinition) -> IdentityPrompt:
        """One identity per team role; rebuilt when its definition changes."""
        current = self._identities.get(role)
        if current is None or current.definition != definition:
            current = self._identities[role] = IdentityPrompt(definition)
        return current

    def _grammar(self, actions: list[CollabAction], shape: AnswerShape) -> str:
        key = json.dumps(answer_schema(actions, shape), sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = json_grammar(key)
        return self._grammars[key]

    def _fallback(self, request: TurnRequest, why: str, started: float,
                  stored: int) -> TurnReply:
        """A turn the model could not make: it says so, and adds nothing (a no-progress
        strike on the host)."""
        log.warning("collab %s turn %d: fallback: %s", request.collab_id, request.turn, why)
        return TurnReply(action=CollabAction.SAY, content="(no answer: the model's answers "
                         "did not validate)", fallback=why[:300], stored=stored,
                         seconds=round(time.monotonic() - started, 3))
