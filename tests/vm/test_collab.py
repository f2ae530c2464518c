"""A short collaboration across real agent VMs: two roles, each in its own VM made on
demand, taking turns through the swap engine under single-active, with the real model
in each VM (short turns: TCG decodes about a token a second).

What is checked: never two VMs running at once (a 50 ms sampler over libvirt), each turn
spoken from its role's VM with that role's identity in its prompt, and the finding the
first agent published retrieved from the second agent's own memory. Runs before
test_lifecycle.py, which deletes the shared VM (brought back to the foreground after).
"""

from __future__ import annotations

import pytest

from orchestrator.collab.models import CollabLimits, CollabStatus, EndReason, EntryKind
from orchestrator.collab.team import team_from_names
from orchestrator.host import Host
from tests.vm.conftest import VM_NAME
from tests.vm.sampling import running_vms, sampling

pytestmark = pytest.mark.vm

AGENTS = ("agent-researcher", "agent-analyst")


def test_two_agent_vms_take_turns_one_at_a_time_and_share_a_finding(
        host: Host, booted_vm: str) -> None:
    assert host.settings.policy.value == "single-active"
    collab = host.collab
    view = collab.create("Name one thing Python is used for.",
                         team_from_names("researcher,analyst"),
                         CollabLimits(max_turns=2, turn_max_tokens=64, max_strikes=2))
    try:
        with sampling(lambda: running_vms(host.vms)) as samples:
            done = collab.run(view.id, progress=print)
        entries = collab.transcript(view.id).entries
        for entry in entries:
            print(entry.model_dump_json(exclude={"identity"}))
    finally:
        for vm in AGENTS:
            if host.store.find_vm(vm) is not None:
                host.vms.delete(vm)
        if host.store.find_vm(VM_NAME) is not None:
            host.swap.activate(VM_NAME)
    assert done.status is CollabStatus.COMPLETED, done
    assert done.end_reason in (EndReason.MAX_TURNS, EndReason.FINAL_ANSWER) and done.turns == 2
    assert len(samples) > 100 and max(len(s) for s in samples) <= 1, \
        sorted({tuple(sorted(s)) for s in samples})
    assert {vm for s in samples for vm in s} >= set(AGENTS)  # both really ran
    first, second = (e for e in entries if e.kind is EntryKind.TURN)
    assert (first.vm, second.vm) == AGENTS
    assert second.swap_s > 0 and second.swap_path not in (None, "already")
    for entry, role in ((first, "Researcher"), (second, "Analyst")):
        assert entry.identity is not None and entry.identity.startswith(f"You are the {role}")
        assert entry.prompt_tokens > 0 and entry.fallback is None, entry
    # The analyst's VM stored the researcher's finding as a memory and retrieved it.
    assert first.findings
    assert any(f in text for f in first.findings for text in second.retrieved), second
    assert done.vms == {"researcher": AGENTS[0], "analyst": AGENTS[1]}
