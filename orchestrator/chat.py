"""Chat and memory with a VM's agent, as the CLI and the API offer them.

Chatting with a VM that is not in the foreground activates it first. The host
keeps each VM's conversation id (the system cache), so a conversation continues
where it left off after the VM was swapped out and back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

from core.errors import Conflict
from core.types import Progress
from guest_agent.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatRole,
    SomnusChatOptions,
    Subsystem,
)
from orchestrator.agent_client import AgentClient
from orchestrator.models import SystemCache, VMRecord
from orchestrator.swap import SwapEngine
from orchestrator.vms import VMService

# A project's pending note for the VM it lives in (e.g. "the last change was undone").
NoteSource = Callable[[str], str | None]


class ChatService:
    """Conversations with the agents of Somnus VMs."""

    def __init__(self, service: VMService, swap: SwapEngine,
                 notes: NoteSource | None = None) -> None:
        self.svc = service
        self.swap = swap
        self.notes = notes

    def target(self, ref: str | None, progress: Progress | None = None) -> VMRecord:
        """The VM to talk to (default: the foreground one), activated when not running."""
        if ref is None:
            ref = self.svc.store.foreground()
            if ref is None:
                raise Conflict("no VM in the foreground: 'somnus activate chat' or name a VM")
        record = self.swap.resolve(ref)
        if not self.svc.hv.is_running(record.domain_name):
            self.swap.activate(record.name, progress=progress)
        return record

    def agent(self, ref: str | None, progress: Progress | None = None) -> AgentClient:
        return self.svc.agent(self.target(ref, progress))

    def conversation_id(self, record: VMRecord, new: bool = False) -> str:
        cached = self.svc.store.cache(record.name)
        if cached is None or new:
            cached = SystemCache(vm_name=record.name, conversation_id=uuid.uuid4().hex[:16])
            self.svc.store.save_cache(cached)
        return cached.conversation_id

    def _request(self, record: VMRecord, message: str, new: bool,
                 **sampling: float | int | None) -> ChatCompletionRequest:
        # A project's pending note (e.g. an undo) reaches the model once, in CONTEXT.
        note = (self.notes(record.name)
                if self.notes and record.subsystem is Subsystem.PROJECT else None)
        return ChatCompletionRequest.model_validate({
            "messages": [ChatMessage(role=ChatRole.USER, content=message)],
            "somnus": SomnusChatOptions(conversation_id=self.conversation_id(record, new),
                                        context=[note] if note else []),
            **{k: v for k, v in sampling.items() if v is not None},
        })

    def _remember(self, record: VMRecord, conversation_id: str, prompt: str,
                  answer: str) -> None:
        self.svc.store.save_cache(SystemCache(vm_name=record.name,
                                              conversation_id=conversation_id,
                                              last_prompt=prompt, last_answer=answer))

    def ask(self, ref: str | None, message: str, new: bool = False,
            progress: Progress | None = None,
            **sampling: float | int | None) -> tuple[VMRecord, ChatCompletionResponse]:
        """One answer, whole."""
        record = self.target(ref, progress)
        request = self._request(record, message, new, **sampling)
        response = self.svc.agent(record).chat(request)
        self._remember(record, request.somnus.conversation_id or "", message,
                       response.choices[0].message.content)
        return record, response

    def stream(self, ref: str | None, message: str, new: bool = False,
               progress: Progress | None = None,
               **sampling: float | int | None) -> Iterator[ChatCompletionChunk]:
        """The answer as it is generated; the last chunk carries usage and the report."""
        record = self.target(ref, progress)
        request = self._request(record, message, new, **sampling)
        parts: list[str] = []
        for chunk in self.svc.agent(record).chat_stream(request):
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
            yield chunk
        self._remember(record, request.somnus.conversation_id or "", message, "".join(parts))
