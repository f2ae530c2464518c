"""A multi-agent collaboration across real agent VMs: where the time goes.

A three-role team (researcher, analyst, synthesizer) runs ``--turns`` turns under
single-active, each role in its own agent VM (every turn a swap: the speaker comes to the
foreground, the previous one leaves RAM); then the same team with every role in one VM
(no swaps), side by side. Per placement: the total wall time, the share of it spent
bringing VMs to the foreground, the swap time per turn (p50/p95), tokens and seconds per
turn. The agent VMs are made first and not counted. No role may give the final answer,
so each run takes all its turns.

Prints one JSON line. Usage: python -m bench.collab [--turns 6] [--turn-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.swap import percentile
from bench.vmhome import log, scratch_host
from orchestrator.collab.models import CollabLimits, EntryKind, Placement, TranscriptEntry
from orchestrator.collab.service import SHARED_VM, CollabService, role_vm
from orchestrator.collab.team import DEFAULT_ROLES, team_from_names

TASK = "How can a Python program use more than one CPU core?"


def one_run(collab: CollabService, placement: Placement, turns: int,
            turn_tokens: int) -> dict[str, object]:
    named = team_from_names(DEFAULT_ROLES)
    team = named.model_copy(update={"roles": [r.model_copy(update={"can_finish": False})
                                              for r in named.roles]})
    view = collab.create(TASK, team, CollabLimits(max_turns=turns, turn_max_tokens=turn_tokens,
                                                  max_strikes=turns),
                         placement=placement)
    started = time.perf_counter()
    done = collab.run(view.id, progress=log)
    wall = time.perf_counter() - started
    entries: list[TranscriptEntry] = [e for e in collab.transcript(view.id).entries
                                      if e.kind is EntryKind.TURN]
    swaps = [e.swap_s for e in entries]
    return {
        "turns": len(entries), "end_reason": done.end_reason, "wall_s": round(wall, 1),
        "swap_share": round(sum(swaps) / wall, 3) if wall else None,
        "swap_s_p50": round(statistics.median(swaps), 2) if swaps else None,
        "swap_s_p95": round(percentile(swaps, 0.95), 2) if swaps else None,
        "swap_paths": sorted({e.swap_path or "" for e in entries}),
        "turn_s_p50": round(statistics.median(e.turn_s for e in entries), 1) if entries else None,
        "tokens_per_turn": round(statistics.mean(e.tokens for e in entries)) if entries else None,
        "fallbacks": sum(e.fallback is not None for e in entries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--turn-tokens", type=int, default=96,
                        help="max tokens a turn may write (about a second each under TCG)")
    args = parser.parse_args()
    result: dict[str, object] = {"bench": "collab", "roles": DEFAULT_ROLES,
                                 "turns": args.turns, "turn_tokens": args.turn_tokens}
    with scratch_host() as host:
        result["policy"] = host.settings.policy.value
        for vm in [*(role_vm(r) for r in DEFAULT_ROLES.split(",")), SHARED_VM]:
            log(f"making {vm}")
            host.collab.hosts.ensure(vm, log)
        for placement in (Placement.PER_ROLE, Placement.SHARED):
            log(f"-- {placement.value}")
            result[placement.value] = one_run(host.collab, placement, args.turns,
                                              args.turn_tokens)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
