"""Who speaks next, by rule: round-robin, or the team's transition graph; with a
moderator, the moderator speaks after every other turn. Never the model's choice.

Pure: it reads the roles that have spoken, in order, and nothing else, so a resumed
collaboration picks up the same order.
"""

from __future__ import annotations

from guest_agent.protocol.collab import CollabAction
from orchestrator.collab.models import Team, TurnOrder


def next_speaker(team: Team, spoken: list[str]) -> str:
    """The role whose turn it is after the roles in ``spoken`` (oldest first)."""
    names = [r.name for r in team.roles]
    moderator = team.moderator
    if moderator is not None:
        if not spoken:
            return moderator
        if spoken[-1] != moderator:
            return moderator
        others = [n for n in names if n != moderator] or [moderator]
        spoken = [s for s in spoken if s != moderator]  # the others' own rotation
        if team.order is TurnOrder.ROUND_ROBIN or not spoken:
            return others[len(spoken) % len(others)]
        return _by_graph(team, spoken, others)
    if not spoken:
        return names[0]
    if team.order is TurnOrder.ROUND_ROBIN:
        return names[len(spoken) % len(names)]
    return _by_graph(team, spoken, names)


def _by_graph(team: Team, spoken: list[str], among: list[str]) -> str:
    """Among the roles the last speaker lets speak after it, the one that has waited
    longest (never spoken first, then the least recent; ties by the team's order)."""
    allowed = team.role(spoken[-1]).next or among
    allowed = [n for n in among if n in allowed] or allowed
    last_spoke = {name: i for i, name in enumerate(spoken)}
    return min(allowed, key=lambda n: (last_spoke.get(n, -1), among.index(n)
                                       if n in among else len(among)))


def allowed_actions(team: Team, role: str) -> list[CollabAction]:
    """What the role may do: speak, and finish if the team lets it."""
    if team.role(role).can_finish:
        return [CollabAction.SAY, CollabAction.FINAL_ANSWER]
    return [CollabAction.SAY]
