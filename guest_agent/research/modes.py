"""The research modes as data: how deep and wide each goes, whether it outlines, who plays
which part. The pipeline has one code path; a mode only changes these numbers and names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from guest_agent.prompts.manager import UnknownRole
from guest_agent.protocol import RoleDefinition
from guest_agent.protocol.research import ResearchMode, ResearchRequest, RoleSlot

M, S = ResearchMode, RoleSlot
MAX_SUBJECTS = 6


class BadResearchRequest(ValueError):
    """A request the pipeline cannot run; the message is one line naming the fix."""


class RoleLookup(Protocol):
    """What casting needs from the role registry (``RoleRegistry``)."""

    def get(self, name: str) -> RoleDefinition: ...

    def list(self) -> list[RoleDefinition]: ...


@dataclass(frozen=True)
class ModePlan:
    depth_cap: int | None  # rounds at most (None: the request's depth)
    breadth_cap: int | None  # queries per round at most (None: the request's breadth)
    outline: bool  # an outline stage; without it the report is one section
    roles: dict[RoleSlot, str] = field(default_factory=dict)

    def depth(self, requested: int) -> int:
        return requested if self.depth_cap is None else min(requested, self.depth_cap)

    def breadth(self, requested: int) -> int:
        return requested if self.breadth_cap is None else min(requested, self.breadth_cap)


_STANDARD_CAST = {S.PLANNER: "Researcher", S.INVESTIGATOR: "Researcher",
                  S.ANALYST: "Analyst", S.SYNTHESIZER: "Synthesizer"}

MODES: dict[ResearchMode, ModePlan] = {
    M.QUICK: ModePlan(depth_cap=1, breadth_cap=2, outline=False, roles=dict(_STANDARD_CAST)),
    M.STANDARD: ModePlan(depth_cap=2, breadth_cap=None, outline=True,
                         roles=dict(_STANDARD_CAST)),
    M.DEEP: ModePlan(depth_cap=None, breadth_cap=None, outline=True,
                     roles={**_STANDARD_CAST, S.INVESTIGATOR: "Deep Investigator"}),
    M.FACT_CHECK: ModePlan(depth_cap=2, breadth_cap=None, outline=True,
                           roles={**_STANDARD_CAST, S.FACT_CHECKER: "Fact-checker"}),
    M.COMPARE: ModePlan(depth_cap=2, breadth_cap=None, outline=True,
                        roles=dict(_STANDARD_CAST)),
}


def cast(request: ResearchRequest, roles: RoleLookup | None = None) -> dict[RoleSlot, str]:
    """The mode's cast with the request's recasting applied.

    Given the registry, every role is looked up, so a misspelt one fails now, in one
    line naming the known roles, and not halfway through the run."""
    chosen = {**MODES[request.mode].roles, **request.roles}
    if roles is not None:
        for slot, name in chosen.items():
            try:
                chosen[slot] = roles.get(name).name
            except UnknownRole:
                known = ", ".join(r.name for r in roles.list())
                raise BadResearchRequest(
                    f"roles.{slot.value}: unknown role {name!r}; known roles: {known} "
                    "(define it with POST /prompt/roles)") from None
    return chosen


def round_breadth(breadth: int, round_: int) -> int:
    """Queries in round ``round_`` (1-based): ``breadth``, then halved per level but not
    below 2 (GPT-Researcher's ``max(2, breadth // 2)``), and never above ``breadth``."""
    width = breadth
    for _ in range(round_ - 1):
        width = max(2, width // 2)
    return min(breadth, width)


_LEADING = re.compile(
    r"^(?:please\s+)?(?:compare|comparing|comparison\s+of|contrast|"
    r"(?:what\s+(?:is|are)\s+the\s+)?differences?\s+between|which\s+is\s+better[,:]?)\s+",
    re.IGNORECASE)
_STRONG = re.compile(r"\s+(?:vs\.?|versus)\s+", re.IGNORECASE)
_WEAK = re.compile(r"\s*,\s*(?:and\s+|or\s+)?|\s+(?:or|and)\s+", re.IGNORECASE)


def subjects(request: ResearchRequest) -> list[str]:
    """The subjects a compare run puts side by side: ``request.subjects``, else read from
    the question ("A vs B", "A versus B", "A, B or C", "compare A and B")."""
    if request.subjects:
        found = [s.strip() for s in request.subjects if s.strip()]
    else:
        question = _LEADING.sub("", request.question.strip().rstrip("?.! "))
        question = question.split(":", 1)[0] if ":" in question else question
        parts = _STRONG.split(question)
        if len(parts) < 2:
            parts = _WEAK.split(question)
        found = [p.strip(" \"'") for p in parts if p.strip(" \"'")]
    unique = list(dict.fromkeys(found))
    if len(unique) < 2:
        raise BadResearchRequest(
            "compare mode needs two or more subjects: pass subjects, or ask 'A vs B'")
    return unique[:MAX_SUBJECTS]
