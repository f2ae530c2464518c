"""``prompt_bridge``: which strategy builds the prompt for a subsystem or an explicit role."""

from __future__ import annotations

from guest_agent.prompts.base import KeyValueStore, PromptStrategy
from guest_agent.prompts.manager import IdentityPrompt, RoleRegistry
from guest_agent.prompts.modifying import AdaptivePrompt
from guest_agent.protocol import Subsystem

DEFAULT_ROLE = {Subsystem.RESEARCH: "Researcher"}


class PromptBridge:
    """Research VMs use identity-stabilised roles; the others the adaptive prompt.

    An explicit role (per request) always selects ``prompt_manager`` with it.
    """

    def __init__(self, store: KeyValueStore, subsystem: Subsystem) -> None:
        self.subsystem = subsystem
        self.roles = RoleRegistry(store)
        self.adaptive = AdaptivePrompt(store, subsystem)
        self._identities: dict[str, IdentityPrompt] = {}

    def select(self, role: str | None = None) -> PromptStrategy:
        name = role or DEFAULT_ROLE.get(self.subsystem)
        if name is None:
            return self.adaptive
        definition = self.roles.get(name)
        key = definition.name.lower()
        current = self._identities.get(key)
        if current is None or current.definition != definition:
            current = self._identities[key] = IdentityPrompt(definition)
        return current
