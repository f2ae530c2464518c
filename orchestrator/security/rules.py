"""The rule engine: samples in, firings out. Pure (no clock, no I/O), so it is unit-tested
on made-up series.

Per VM and rule it remembers when the current breach began and whether the rule has
fired. A sample above the threshold starts (or continues) a breach; once the breach
has lasted the rule's ``for_s`` it fires, once. A sample at or below ``clear_below``
ends the breach and re-arms the rule; one between the two keeps a fired rule fired
and ends an unfired breach (the metric must stay above the threshold the whole
grace period). A metric missing from a sample (a paused guest reports nothing)
changes nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from orchestrator.security.policy import Metric, Policy, Rule

# Evidence kept per VM and metric: the samples that led to a firing.
EVIDENCE_SAMPLES = 12


@dataclass(frozen=True)
class Firing:
    """A rule whose condition held long enough: act on it."""

    vm: str
    rule: Rule
    value: float
    at: float
    breach_started: float
    evidence: list[tuple[float, float]]  # (time, value), oldest first


@dataclass
class _RuleState:
    breach_since: float | None = None
    fired: bool = False


@dataclass
class _VMState:
    rules: dict[str, _RuleState] = field(default_factory=dict)
    series: dict[Metric, deque[tuple[float, float]]] = field(default_factory=dict)


class RuleEngine:
    """Evaluates a policy's rules against each VM's samples as they arrive."""

    def __init__(self, policy: Policy) -> None:
        self._vms: dict[str, _VMState] = {}
        self._set(policy)

    def _set(self, policy: Policy) -> None:
        self.policy = policy
        self._keyed = [(_key(r), r) for r in policy.rules]  # once per policy, not per sample

    def replace_policy(self, policy: Policy) -> None:
        """New rules; a rule kept as it was keeps its breach and fired state."""
        if policy == self.policy:
            return
        self._set(policy)
        keys = {key for key, _ in self._keyed}
        for vm in self._vms.values():
            vm.rules = {k: s for k, s in vm.rules.items() if k in keys}

    def forget(self, vm: str) -> None:
        """Drop a VM's state (deleted, or released by the user: its rules re-arm)."""
        self._vms.pop(vm, None)

    def rearm(self, vm: str, rule: Rule) -> None:
        """Let ``rule`` fire again on the next breaching sample (its action failed)."""
        state = self._vms.get(vm)
        if state is not None and _key(rule) in state.rules:
            state.rules[_key(rule)].fired = False

    def fired(self, vm: str) -> list[str]:
        """The names of the rules currently fired (not yet re-armed) for ``vm``."""
        state = self._vms.get(vm)
        if state is None:
            return []
        return sorted(r.name for key, r in self._keyed
                      if (s := state.rules.get(key)) is not None and s.fired)

    def observe(self, vm: str, at: float, metrics: dict[Metric, float]) -> list[Firing]:
        """One sample of ``vm`` at time ``at``; returns the rules that fire now."""
        state = self._vms.setdefault(vm, _VMState())
        for metric, reading in metrics.items():
            state.series.setdefault(metric, deque(maxlen=EVIDENCE_SAMPLES)).append((at, reading))
        firings = []
        for key, rule in self._keyed:
            value = metrics.get(rule.metric)
            if value is None:
                continue
            rs = state.rules.setdefault(key, _RuleState())
            if value > rule.above:
                if rs.breach_since is None:
                    rs.breach_since = at
                if not rs.fired and at - rs.breach_since >= rule.for_s:
                    rs.fired = True
                    firings.append(Firing(vm, rule, value, at, rs.breach_since,
                                          list(state.series[rule.metric])))
            elif value <= rule.rearm_at:
                rs.breach_since = None
                rs.fired = False
            elif not rs.fired:
                rs.breach_since = None
        return firings


def _key(rule: Rule) -> str:
    """A rule's state is kept under its whole definition: rules may share a name, and an
    edited rule starts afresh."""
    return rule.model_dump_json()
