"""Model calls for research: hard budgets, and structured answers that always arrive.

``Budget`` counts the whole run (calls, tokens, minutes, sources), restored from the run's
folder after a restart. Budgets are code: the model is never told about them, it is just
not called once one is reached, and every later call returns its fallback.

``ResearchModel.ask`` builds the prompt from a role's identity (re-anchored every call),
the call's context (cut to fit the window) and its instruction; decodes under the answer
schema's grammar, so even a 135M model answers JSON that parses; validates the content
(lengths, enums) with the schema; asks again (at most ``MAX_ATTEMPTS`` times in all,
sampling after the first greedy try), and then falls back to a deterministic answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from guest_agent.prompts.manager import IdentityPrompt
from guest_agent.prompts.stack import ContextOverflow, LayerItem, PromptLayers, assemble
from guest_agent.protocol.research import (
    ResearchEventKind,
    ResearchRequest,
    ResearchStage,
    ResearchUsage,
    StopReason,
)
from guest_agent.research.folder import Cancelled, RunFolder
from guest_agent.research.modes import RoleLookup
from guest_agent.structured import (
    MAX_ATTEMPTS,
    ChatRuntime,
    attempt_params,
    json_grammar,
    why_refused,
)

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

BUDGET_FILE = "budget.json"
JSON_INSTRUCTION = "Answer in JSON."
CALL_BUDGETS = frozenset({StopReason.MODEL_CALLS, StopReason.TOKENS, StopReason.TIME})


class BudgetState(BaseModel):
    """``budget.json``: the budgets reached, in order (they stay reached)."""

    reached: list[StopReason] = Field(default_factory=list)


class Budget:
    """The run's hard limits, over the whole run (restarts included)."""

    def __init__(self, request: ResearchRequest, folder: RunFolder,
                 clock: Callable[[], float] = time.time) -> None:
        self.request = request
        self.folder = folder
        self.clock = clock
        self.usage: ResearchUsage = folder.view().usage.model_copy()
        state = folder.read_json(BUDGET_FILE, BudgetState) or BudgetState()
        self.reached: list[StopReason] = list(state.reached)
        self._base_s = self.usage.elapsed_s  # time spent before this restart
        self._started = clock()

    @property
    def elapsed_s(self) -> float:
        return self._base_s + max(0.0, self.clock() - self._started)

    @property
    def exhausted(self) -> StopReason | None:
        """The call budget reached (no more model calls), or None."""
        return next((r for r in self.reached if r in CALL_BUDGETS), None)

    @property
    def stop_reason(self) -> StopReason | None:
        """The first budget reached: gathering stops there. None: none reached."""
        return self.reached[0] if self.reached else None

    def check_call(self, prompt_tokens: int, max_tokens: int) -> StopReason | None:
        """Whether one more call of this size would break a budget (and which)."""
        if self.exhausted is not None:
            return self.exhausted
        r, u = self.request, self.usage
        if u.model_calls + 1 > r.max_model_calls:
            return StopReason.MODEL_CALLS
        if u.tokens + prompt_tokens + max_tokens > r.budget_tokens:
            return StopReason.TOKENS
        return self.check_time()

    def check_time(self) -> StopReason | None:
        return StopReason.TIME if self.elapsed_s >= self.request.budget_minutes * 60 else None

    def reach(self, reason: StopReason, stage: ResearchStage | None = None) -> None:
        """Mark a budget reached; the first time, one BUDGET event says so."""
        if reason in self.reached or (reason in CALL_BUDGETS and self.exhausted is not None):
            return  # one call budget is enough to stop the calls
        if reason is StopReason.SOURCES:
            message = f"{self.request.max_sources} sources reached: no new sources"
        elif reason in CALL_BUDGETS:
            message = f"{reason.value} budget reached: no more model calls"
        else:
            raise ValueError(f"{reason.value} is not a budget")
        self.reached.append(reason)
        self.folder.write_json(BUDGET_FILE, BudgetState(reached=self.reached))
        self.folder.emit(ResearchEventKind.BUDGET, message, stage, reason=reason.value)
        self.save()

    def record_call(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.usage.model_calls += 1
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        self.save()

    def save(self) -> None:
        """Write the usage (and the time spent so far) to the run's view."""
        self.usage.elapsed_s = round(self.elapsed_s, 3)
        self.folder.update(usage=self.usage.model_copy())


class ResearchModel:
    """Structured model calls in named roles. One per agent; ``for_run`` binds a run."""

    def __init__(self, runtime: ChatRuntime, roles: RoleLookup) -> None:
        self.runtime = runtime
        self.roles = roles
        self._grammars: dict[str, str] = {}
        self._identities: dict[str, IdentityPrompt] = {}
        self.folder: RunFolder | None = None
        self.budget: Budget | None = None
        self.stage: ResearchStage | None = None  # what events are tagged with

    def for_run(self, folder: RunFolder, budget: Budget) -> ResearchModel:
        """A copy bound to one run (its folder for events and cancel, its budget); the
        runtime and the grammar cache are shared."""
        bound = ResearchModel(self.runtime, self.roles)
        bound._grammars = self._grammars
        bound.folder, bound.budget = folder, budget
        return bound

    def _grammar(self, schema: type[BaseModel]) -> str:
        key = json.dumps(schema.model_json_schema(), sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = json_grammar(key)
        return self._grammars[key]

    def _identity(self, role: str) -> IdentityPrompt:
        definition = self.roles.get(role)
        current = self._identities.get(definition.name.lower())
        if current is None or current.definition != definition:
            current = self._identities[definition.name.lower()] = IdentityPrompt(definition)
        return current

    def ask(self, role: str, purpose: str, instruction: str, context: list[str],
            schema: type[T], fallback: Callable[[], T], max_tokens: int) -> T:
        """The role's answer to ``instruction`` as ``schema``, or ``fallback()`` when a
        budget is reached or ``MAX_ATTEMPTS`` answers did not validate.

        Raises ``Cancelled`` when the run's cancel flag is set."""
        folder, budget = self.folder, self.budget
        if folder is None or budget is None:
            raise RuntimeError("ResearchModel.ask needs a run: use model.for_run(folder, budget)")
        if folder.cancel_requested():
            raise Cancelled(folder.run_id)
        if budget.exhausted is not None:
            return self._fall_back(fallback, role, purpose, f"{budget.exhausted.value} budget")
        identity = self._identity(role)
        identity.observe(instruction)  # the anchor counts the role's calls
        layers = PromptLayers(
            system=identity.system_prompt(),
            user=f"{instruction}\n\n{JSON_INSTRUCTION}",
            # Earlier items matter more: the last one is cut first.
            context=[LayerItem(text, priority=-i) for i, text in enumerate(context) if text],
            scratchpad=[LayerItem(identity.scratchpad())],
        )
        try:
            prompt = assemble(self.runtime, layers, self.runtime.n_ctx, max_tokens)
        except ContextOverflow as exc:
            return self._fall_back(fallback, role, purpose, str(exc))
        cfg = self.runtime.config
        grammar = self._grammar(schema)
        problem = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if folder.cancel_requested():
                raise Cancelled(folder.run_id)
            reason = budget.check_call(len(prompt.tokens), max_tokens)
            if reason is not None:
                budget.reach(reason, self.stage)
                return self._fall_back(fallback, role, purpose, f"{reason.value} budget")
            params = attempt_params(cfg, attempt, max_tokens, prompt.stops, grammar)
            pieces = list(self.runtime.generate(prompt.tokens, params))
            text = "".join(p.text for p in pieces)
            # Generated tokens never exceed max_tokens; re-tokenizing the text can differ
            # by a token or two, which must not break the token budget's arithmetic.
            completion = min(self.runtime.count_tokens(text), max_tokens)
            budget.record_call(len(prompt.tokens), completion)
            folder.emit(ResearchEventKind.MODEL_CALL, f"{role}: {purpose}", self.stage,
                        role=role, purpose=purpose, prompt_tokens=len(prompt.tokens),
                        completion_tokens=completion, attempt=attempt)
            try:
                return schema.model_validate_json(text)
            except ValidationError as exc:
                problem = why_refused(exc, pieces)
            if attempt < MAX_ATTEMPTS:
                budget.usage.retries += 1
                folder.emit(ResearchEventKind.RETRY, f"{purpose}: {problem}", self.stage,
                            role=role, purpose=purpose, attempt=attempt)
        return self._fall_back(fallback, role, purpose,
                               f"{MAX_ATTEMPTS} answers did not validate ({problem})")

    def _fall_back(self, fallback: Callable[[], T], role: str, purpose: str, why: str) -> T:
        assert self.folder is not None and self.budget is not None
        self.budget.usage.fallbacks += 1
        self.budget.save()
        self.folder.emit(ResearchEventKind.FALLBACK, f"{purpose}: {why}"[:300], self.stage,
                         role=role, purpose=purpose)
        return fallback()

