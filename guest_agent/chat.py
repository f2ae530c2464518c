"""One chat turn: choose the strategy, fill the layers, fit, generate, remember.

Streaming and non-streaming share one path (``Turn``): the non-streaming
answer is the joined stream, so both give the same text for the same prompt.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from guest_agent.memory.manager import MemoryManager
from guest_agent.prompts.base import PromptStrategy
from guest_agent.prompts.bridge import PromptBridge
from guest_agent.prompts.screening import quote_untrusted, screen
from guest_agent.prompts.stack import AssembledPrompt, LayerItem, PromptLayers, assemble
from guest_agent.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ChatRole,
    MemoryCreate,
    MemoryImportance,
    MemoryRecord,
    MemorySearchRequest,
    MemoryType,
    PromptInspection,
    SomnusChatOptions,
    SomnusReport,
    Timings,
    Usage,
)
from guest_agent.protocol.security import ContentSource, ScreeningResult
from guest_agent.runtime import ModelRuntime, SamplingParams
from guest_agent.structured import BadSchema, grammar_for

USER_PREFIX, ASSISTANT_PREFIX = "User: ", "\nAssistant: "


class BadChatRequest(ValueError):
    pass


def turn_text(user: str, answer: str) -> str:
    """How a conversation turn is stored as one memory."""
    return f"{USER_PREFIX}{user}{ASSISTANT_PREFIX}{answer}"


def split_turn(content: str) -> tuple[str, str] | None:
    """Inverse of ``turn_text`` (None for content stored some other way)."""
    if not content.startswith(USER_PREFIX) or ASSISTANT_PREFIX not in content:
        return None
    user, answer = content[len(USER_PREFIX) :].split(ASSISTANT_PREFIX, 1)
    return user, answer


def memory_line(record: MemoryRecord) -> str:
    """A dated, labelled line for the MEMORY layer."""
    day = datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d")
    return f"- [{day}] ({record.memory_type.value}) {record.content}"


@dataclass
class Turn:
    """A prepared turn; iterate it for the answer's text, then read ``result``."""

    id: str
    created: int
    model: str
    request: ChatCompletionRequest
    user_text: str
    conversation_id: str
    strategy: PromptStrategy
    prompt: AssembledPrompt
    params: SamplingParams
    engine: ChatEngine
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    stored_memory_id: str | None = None
    screening: list[ScreeningResult] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        start = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        for piece in self.engine.runtime.generate(self.prompt.tokens, self.params):
            if piece.text:
                first = first or time.perf_counter()
                parts.append(piece.text)
                yield piece.text
            if piece.finish_reason:
                self.finish_reason = piece.finish_reason
        end = time.perf_counter()
        self.text = "".join(parts)
        completion = self.engine.runtime.count_tokens(self.text)
        prompt_n = len(self.prompt.tokens)
        first = first or end
        self.usage = Usage(
            prompt_tokens=prompt_n, completion_tokens=completion, total_tokens=prompt_n + completion
        )
        decode_s = end - first
        self.timings = Timings(
            prompt_n=prompt_n,
            prompt_ms=(first - start) * 1000,
            predicted_n=completion,
            predicted_ms=decode_s * 1000,
            # The first token's time is prompt time (llama-server counts it the same way).
            predicted_per_second=(completion - 1) / decode_s if decode_s > 0 else 0.0,
        )
        self.prompt.window.assistant_tokens = completion
        self.stored_memory_id = self.engine.remember(self)

    def report(self) -> SomnusReport:
        return SomnusReport(
            strategy=self.strategy.name,
            role=self.strategy.role,
            layers=self.prompt.usage,
            truncated=self.prompt.truncated,
            context_window=self.prompt.window,
            memories_used=self.prompt.memory_refs,
            stored_memory_id=self.stored_memory_id,
            conversation_id=self.conversation_id,
            screening=self.screening,
        )


class ChatEngine:
    """Builds and runs turns against one runtime, memory and prompt bridge.

    ``on_flagged`` hears of each prompt item that screening flagged (the security log).
    """

    def __init__(
        self,
        runtime: ModelRuntime,
        memory: MemoryManager,
        bridge: PromptBridge,
        on_flagged: Callable[[ScreeningResult], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.memory = memory
        self.bridge = bridge
        self.on_flagged = on_flagged
        self.last_prompt: PromptInspection | None = None

    def prepare(self, request: ChatCompletionRequest) -> Turn:
        """Everything up to generation; raises ContextOverflow, UnknownRole, BadChatRequest."""
        *history, last = request.messages
        if last.role is not ChatRole.USER:
            raise BadChatRequest("the last message must come from the user")
        opts = request.somnus
        cfg = self.runtime.config
        try:
            grammar = grammar_for(request.response_format)
        except BadSchema as exc:
            raise BadChatRequest(str(exc)) from None
        strategy = self.bridge.select(opts.role)
        # The self-modifying prompt learns nothing from a message that looks like an
        # injection (a pasted document telling the model what to become).
        suspect = screen(last.content, ContentSource.USER_INPUT) is not None
        new_directives = [] if suspect else strategy.observe(last.content)
        if opts.store and self.memory.ready:
            for directive in new_directives:
                self.memory.add(
                    MemoryCreate(
                        content=directive,
                        memory_type=MemoryType.USER_DIRECTIVE,
                        importance=MemoryImportance.HIGH,
                    )
                )
        conversation_id = opts.conversation_id or uuid.uuid4().hex
        working, working_ids = self._working_memory(history, conversation_id, opts)
        layers = PromptLayers(
            system=strategy.system_prompt(),
            user=last.content,
            memory=self._memory_items(last.content, opts.memory_top_k, working_ids, opts),
            context=[
                LayerItem(text, priority=-i)
                for i, text in enumerate(
                    [m.content for m in history if m.role is ChatRole.SYSTEM] + opts.context
                )
            ],
            working=working,
            scratchpad=[LayerItem(strategy.scratchpad())],
        )
        screening = self._screen(layers)
        max_tokens = request.max_tokens or cfg.max_new_tokens
        prompt = assemble(self.runtime, layers, self.runtime.n_ctx, max_tokens)
        self.last_prompt = prompt.inspection(strategy.name, strategy.role)
        extra_stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
        params = SamplingParams(
            temperature=cfg.temperature if request.temperature is None else request.temperature,
            top_p=request.top_p or cfg.top_p,
            top_k=cfg.top_k if request.top_k is None else request.top_k,
            max_tokens=max_tokens,
            repeat_penalty=request.repeat_penalty or cfg.repetition_penalty,
            seed=cfg.seed if request.seed is None else request.seed,
            stop=prompt.stops + extra_stops,
            grammar=grammar,
        )
        return Turn(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=self.runtime.model_id,
            request=request,
            user_text=last.content,
            conversation_id=conversation_id,
            strategy=strategy,
            prompt=prompt,
            params=params,
            engine=self,
            screening=screening,
        )

    def _screen(self, layers: PromptLayers) -> list[ScreeningResult]:
        """Screen the user's message and every memory, context item and history turn for
        prompt injection; a flagged one stays in its layer, quoted as data."""
        flagged: list[ScreeningResult] = []

        def guard(text: str, source: ContentSource, ref: str | None) -> str:
            result = screen(text, source, ref)
            if result is None:
                return text
            flagged.append(result)
            if self.on_flagged is not None:
                self.on_flagged(result)
            return quote_untrusted(text, result)

        layers.user = guard(layers.user, ContentSource.USER_INPUT, None)
        layers.memory = [replace(i, text=guard(i.text, ContentSource.MEMORY, i.ref))
                         for i in layers.memory]
        layers.context = [replace(i, text=guard(i.text, ContentSource.CONTEXT, str(n)))
                          for n, i in enumerate(layers.context)]
        layers.working = [replace(i, text=guard(i.text, ContentSource.HISTORY, str(n)))
                          for n, i in enumerate(layers.working)]
        return flagged

    def _working_memory(
        self, history: list[ChatMessage], conversation_id: str, opts: SomnusChatOptions
    ) -> tuple[list[LayerItem], set[str]]:
        """Recent turns: the request's own history, else this conversation's stored turns."""
        turns = [m for m in history if m.role is not ChatRole.SYSTEM]
        if turns:
            return [
                LayerItem(m.content, role=m.role.value, priority=i) for i, m in enumerate(turns)
            ], set()
        if not opts.conversation_id or opts.working_memory_turns == 0:
            return [], set()
        items: list[LayerItem] = []
        ids: set[str] = set()
        for record in self.memory.recent_turns(conversation_id, opts.working_memory_turns):
            pair = split_turn(record.content)
            if pair is None:
                continue
            ids.add(record.memory_id)
            # A stored turn is cut as a whole: its two messages share one priority.
            items.append(LayerItem(pair[0], role="user", priority=len(items) // 2))
            items.append(LayerItem(pair[1], role="assistant", priority=(len(items) - 1) // 2))
        return items, ids

    def _memory_items(
        self, query: str, top_k: int, exclude: set[str], opts: SomnusChatOptions
    ) -> list[LayerItem]:
        """Memories nearest to the user's message, excluding turns already in working memory."""
        if not opts.use_memory or top_k == 0 or not self.memory.ready:
            return []
        hits = self.memory.search(MemorySearchRequest(query=query, top_k=top_k), exclude)
        return [
            LayerItem(memory_line(h.memory), priority=h.score, ref=h.memory.memory_id) for h in hits
        ]

    def remember(self, turn: Turn) -> str | None:
        """Store the finished turn (user message + answer) as a conversation memory.

        It is embedded in the background, so the answer ends without waiting for that
        (minutes under TCG). The worker wakes at once and holds the runtime's embedding
        lock before a next request can arrive, so the next turn's search, queued behind
        it on that lock, finds this turn.
        """
        if not turn.request.somnus.store or not self.memory.ready:
            return None
        added = self.memory.add(
            MemoryCreate(
                content=turn_text(turn.user_text, turn.text),
                memory_type=MemoryType.CONVERSATION,
                importance=MemoryImportance.MEDIUM,
                conversation_id=turn.conversation_id,
                metadata={"strategy": turn.strategy.name.value, "role": turn.strategy.role},
            ),
            background=True,
        )
        return added.memory.memory_id
