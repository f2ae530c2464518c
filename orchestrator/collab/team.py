"""Teams: from ``--roles a,b,c`` or a team file (YAML), checked before anything runs.

A team file::

    order: graph            # or round-robin (the default)
    moderator: lead         # optional: speaks after every other turn
    roles:
      - name: researcher    # lowercase; its VM is agent-researcher
        prompt_role: Researcher   # the identity-stabilised role it speaks as
        goal: find the facts
        constraints: [cite what you use]
        next: [analyst]     # who may speak after it (graph order)
        can_finish: false   # may give the final answer

A role named after a built-in prompt role (researcher, analyst, synthesizer,
deep-investigator, fact-checker) speaks as it without ``prompt_role``. Unless a role
says ``can_finish``, the moderator (or else the last role) is the one that may finish.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from core.errors import InvalidInput
from guest_agent.protocol.collab import MAX_ROLE_NAME, ROLE_NAME_RE, AgentRole
from orchestrator.collab.models import Team, TurnOrder

# Role names that speak as a built-in prompt role (guest_agent.prompts.manager).
BUILTIN_PROMPT_ROLES = {"researcher": "Researcher", "analyst": "Analyst",
                        "synthesizer": "Synthesizer", "deep-investigator": "Deep Investigator",
                        "fact-checker": "Fact-checker"}
DEFAULT_ROLES = "researcher,analyst,synthesizer"


def _one_line(exc: ValidationError, what: str) -> InvalidInput:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return InvalidInput(f"{what}: {where + ': ' if where else ''}{first['msg']}")


def prompt_role_for(name: str) -> str:
    return BUILTIN_PROMPT_ROLES.get(name, name.replace("-", " ").title())


def team_from_names(names: str, order: TurnOrder = TurnOrder.ROUND_ROBIN) -> Team:
    """``researcher,analyst,synthesizer``: round-robin, the last one finishes."""
    if order is TurnOrder.GRAPH:
        raise InvalidInput("--order graph needs a team file (--team FILE) naming each "
                           "role's 'next'")
    roles = [n.strip().lower() for n in names.split(",") if n.strip()]
    if not roles:
        raise InvalidInput("--roles names no role: give e.g. --roles researcher,analyst")
    for name in roles:
        if not ROLE_NAME_RE.match(name) or len(name) > MAX_ROLE_NAME:
            raise InvalidInput(f"role name {name!r}: lowercase letters, digits and single "
                               f"'-' between them, starting with a letter, at most "
                               f"{MAX_ROLE_NAME}")
    try:
        team = Team(roles=[AgentRole(name=n, prompt_role=prompt_role_for(n)) for n in roles],
                    order=order)
    except ValidationError as exc:
        raise _one_line(exc, "--roles") from None
    return checked(team)


def load_team(path: Path) -> Team:
    """A team file; a missing file or a bad field is one InvalidInput line."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"no team file {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(f"team file {path}: {detail}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("roles"), list):
        raise InvalidInput(f"team file {path}: needs a 'roles' list")
    for entry in raw["roles"]:
        if isinstance(entry, dict) and "prompt_role" not in entry and "name" in entry:
            entry["prompt_role"] = prompt_role_for(str(entry["name"]))
    try:
        team = Team.model_validate(raw)
    except ValidationError as exc:
        raise _one_line(exc, f"team file {path}") from None
    return checked(team)


def checked(team: Team) -> Team:
    """Names unique, every ``next`` and the moderator known, someone able to finish."""
    names = [r.name for r in team.roles]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInput(f"role {dupes[0]!r} is named twice")
    if team.moderator is not None and team.moderator not in names:
        raise InvalidInput(f"moderator {team.moderator!r} is not one of the roles "
                           f"({', '.join(names)})")
    for role in team.roles:
        for after in role.next or []:
            if after not in names:
                raise InvalidInput(f"role {role.name!r}: next {after!r} is not one of the "
                                   f"roles ({', '.join(names)})")
        if role.next == []:
            raise InvalidInput(f"role {role.name!r}: 'next' is empty (leave it out: any role)")
    if not any(r.can_finish for r in team.roles):
        finisher = team.moderator or names[-1]
        team = team.model_copy(update={"roles": [
            r.model_copy(update={"can_finish": r.name == finisher}) for r in team.roles]})
    return team
