"""What every prompt strategy provides to the stack, and where it keeps its state."""

from __future__ import annotations

from typing import Protocol

from guest_agent.protocol import PromptStrategyName


class KeyValueStore(Protocol):
    """Small persistent state, kept in the VM's memory database."""

    def kv_get(self, key: str) -> str | None: ...

    def kv_set(self, key: str, value: str) -> None: ...


class PromptStrategy(Protocol):
    """Fills SYSTEM/IDENTITY and the per-response INTERNAL_SCRATCHPAD."""

    name: PromptStrategyName

    @property
    def role(self) -> str | None: ...

    def observe(self, user_text: str) -> list[str]:
        """Learn from the user's message; returns new directives worth remembering."""
        ...

    def system_prompt(self) -> str: ...

    def scratchpad(self) -> str: ...
