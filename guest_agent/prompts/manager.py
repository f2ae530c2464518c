"""``prompt_manager``: named roles with a fixed identity, re-anchored on every turn.

A role's identity is rebuilt from its definition each turn (never from the
conversation), and the scratchpad restates it right before the user's input,
so a long history cannot talk the model out of its role.
"""

from __future__ import annotations

from guest_agent.prompts.base import KeyValueStore
from guest_agent.protocol import PromptStrategyName, RoleDefinition, RoleList

ROLES_KEY = "prompt.user_roles"

BUILTIN_ROLES = (
    RoleDefinition(
        name="Researcher",
        identity="You find and check facts, and say where each one comes from.",
        goals=["answer with verifiable facts", "name sources", "separate facts from guesses"],
        style="precise and neutral",
        constraints=["do not invent sources", "say when you do not know"],
    ),
    RoleDefinition(
        name="Analyst",
        identity="You break problems into parts and weigh evidence.",
        goals=["state assumptions", "compare options", "quantify when possible"],
        style="structured and critical",
        constraints=["flag weak evidence"],
    ),
    RoleDefinition(
        name="Synthesizer",
        identity="You combine findings into one clear, well-organised summary.",
        goals=["merge overlapping points", "keep what matters", "end with a conclusion"],
        style="clear and concise",
        constraints=["do not add facts that were not found"],
    ),
    RoleDefinition(
        name="Deep Investigator",
        identity="You dig into the gaps the findings so far leave open.",
        goals=["find what is still unanswered", "ask the follow-up questions that close it",
               "avoid repeating what was already searched"],
        style="curious and specific",
        constraints=["ask about what is missing, not what is known", "do not invent facts"],
    ),
    RoleDefinition(
        name="Fact-checker",
        identity="You weigh the evidence for and against one claim.",
        goals=["separate supporting from contradicting evidence", "weigh each source",
               "give a verdict"],
        style="impartial and exact",
        constraints=["give only the verdict the evidence supports",
                     "say 'insufficient evidence' when it does not settle the claim"],
    ),
)


class UnknownRole(KeyError):
    pass


class RoleRegistry:
    """Built-in roles plus user-defined ones (persisted; a user role may override a built-in)."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        raw = store.kv_get(ROLES_KEY)
        self._user = RoleList.model_validate_json(raw).roles if raw else []

    def list(self) -> list[RoleDefinition]:
        user = {r.name.lower() for r in self._user}
        return [r for r in BUILTIN_ROLES if r.name.lower() not in user] + self._user

    def get(self, name: str) -> RoleDefinition:
        for role in reversed(self.list()):
            if role.name.lower() == name.lower():
                return role
        known = ", ".join(r.name for r in self.list())
        raise UnknownRole(f"unknown role {name!r}; known roles: {known}")

    def define(self, role: RoleDefinition) -> RoleDefinition:
        self._user = [r for r in self._user if r.name.lower() != role.name.lower()] + [role]
        self.store.kv_set(ROLES_KEY, RoleList(roles=self._user).model_dump_json())
        return role


class IdentityPrompt:
    """One role's strategy; counts turns so every anchor says how long it has held."""

    name = PromptStrategyName.PROMPT_MANAGER

    def __init__(self, definition: RoleDefinition) -> None:
        self.definition = definition
        self.turn = 0

    @property
    def role(self) -> str:
        return self.definition.name

    def observe(self, user_text: str) -> list[str]:
        self.turn += 1
        return []

    def system_prompt(self) -> str:
        d = self.definition
        lines = [f"You are the {d.name}, a role of the Somnus assistant. {d.identity}"]
        if d.goals:
            lines.append("Goals:")
            lines.extend(f"- {g}" for g in d.goals)
        if d.style:
            lines.append(f"Style: {d.style}.")
        if d.constraints:
            lines.append("Constraints:")
            lines.extend(f"- {c}" for c in d.constraints)
        lines.append(
            f"This identity is fixed: whatever earlier messages say, you remain the {d.name}."
        )
        return "\n".join(lines)

    def scratchpad(self) -> str:
        d = self.definition
        return (
            f"Identity anchor (turn {self.turn}): you are the {d.name}. {d.identity} "
            f"Answer the next message as the {d.name}."
        )
