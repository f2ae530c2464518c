"""The security monitor: sample every VM, keep the series, fire rules, act, log.

One round (:meth:`SecurityMonitor.sample`) reads libvirt's bulk statistics of every
domain in one call (NOWAIT: a save in progress does not block it) and, every
``guest_interval_s``, asks each running VM's agent for its own report
(``GET /security``). The readings become metrics (``orchestrator.security.metrics``),
a bounded series in SQLite, and input to the rule engine. A firing is carried out
through the lifecycle (the one owner of VM state) under the home's lock, and logged
with its evidence. ``somnus serve`` runs the rounds in a thread; ``somnus security
watch`` runs them in the foreground.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import SomnusError
from guest_agent.protocol.security import GuestEventKind, GuestMetrics
from orchestrator.budget import projected_mib
from orchestrator.models import VMRecord
from orchestrator.security.metrics import MetricDeriver, unexpected_listeners
from orchestrator.security.policy import Action, Metric, Policy
from orchestrator.security.rules import Firing, RuleEngine
from orchestrator.security.tables import EventKind, EventRow, Level, SecurityStore
from orchestrator.vms import VMService

log = logging.getLogger(__name__)
SSH_GUEST_PORT = 22
_RUNNING = 1  # libvirt's VIR_DOMAIN_RUNNING, as ``state.state`` reports it
_LEVEL = {Action.WARN: Level.WARNING, Action.SUSPEND: Level.CRITICAL,
          Action.TERMINATE: Level.CRITICAL}
_GUEST_LEVEL = {GuestEventKind.AUTH_FAILURE: Level.WARNING,
                GuestEventKind.PROMPT_INJECTION: Level.WARNING,
                GuestEventKind.SANDBOX_LIMIT: Level.INFO,
                GuestEventKind.SANDBOX_ESCAPE: Level.CRITICAL,
                GuestEventKind.SECRET_REDACTED: Level.INFO}


@dataclass
class Round:
    """What one round saw and did (for ``watch``, tests and the benchmark)."""

    at: float
    sampled: dict[str, dict[str, float]]
    events: list[EventRow]
    cpu_s: float  # this process's CPU time spent on the round


class SecurityMonitor:
    """Samples, evaluates and enforces one policy over one home's VMs."""

    def __init__(self, vms: VMService, store: SecurityStore, policy: Callable[[], Policy],
                 clock: Callable[[], float] = time.time) -> None:
        self.vms = vms
        self.store = store
        self._policy = policy
        self.clock = clock
        self.engine = RuleEngine(policy())
        self.deriver = MetricDeriver()
        self._guest_due: dict[str, float] = {}
        self._cursor: dict[str, tuple[float, int]] = {}  # vm -> (agent started, last seq)
        self._listeners: dict[str, list[str]] = {}  # vm -> unexpected listeners last seen

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    def reload(self) -> None:
        """Re-read the policy (the file may have been edited, or replaced over the API)."""
        self.engine.replace_policy(self._policy())

    def forwarded_ports(self, record: VMRecord) -> set[int]:
        """The guest ports a forward leads to: SSH, the agent, the artifacts VM's web port."""
        s = self.vms.settings
        ports = {SSH_GUEST_PORT, s.agent_guest_port}
        if record.web_port is not None:
            ports.add(s.web_guest_port)
        return ports

    # -- one round ------------------------------------------------------------------------

    def sample(self) -> Round:
        cpu_before = time.process_time()
        at = self.clock()
        stats = self.vms.hv.bulk_stats(self.vms.settings.domain_prefix)
        sampled: dict[str, dict[str, float]] = {}
        events: list[EventRow] = []
        for record in self.vms.list_vms():
            entry = stats.get(record.domain_name)
            if entry is None:  # no QEMU: nothing to measure, rates start over next time
                self.deriver.forget(record.name)
                continue
            share = projected_mib(record, self.vms.settings)
            metrics = self.deriver.host(record.name, at, entry, share)
            if entry.get("state.state") == _RUNNING and self._guest_is_due(record.name, at):
                report = self._guest_report(record)
                if report is not None:
                    metrics.update(self.deriver.guest(record.name, report,
                                                      self.forwarded_ports(record)))
                    events.extend(self._log_guest_events(record, report))
            sampled[record.name] = {m.value: round(v, 3) for m, v in metrics.items()}
            self.store.add_sample(record.name, at, sampled[record.name],
                                  self.policy.keep_samples)
            if record.security_hold:
                continue  # already held: nothing more to do until the user releases it
            for firing in self.engine.observe(record.name, at, metrics):
                if (event := self._act(record, firing)) is not None:
                    events.append(event)
        return Round(at, sampled, events, time.process_time() - cpu_before)

    def _guest_is_due(self, vm: str, at: float) -> bool:
        if at < self._guest_due.get(vm, 0.0):
            return False
        self._guest_due[vm] = at + self.policy.guest_interval_s
        return True

    def _guest_report(self, record: VMRecord) -> GuestMetrics | None:
        """The agent's report, with only the events the log does not hold yet."""
        epoch, seq = self._cursor.get(record.name, (None, 0))
        try:
            report = self.vms.agent(record).security(since=seq, timeout_s=3.0)
            if report.agent_started != epoch:
                # A new agent (or a new monitor): go on after what the log already holds.
                logged = self.store.last_guest_seq(record.name, report.agent_started)
                if logged != seq:
                    report = self.vms.agent(record).security(since=logged, timeout_s=3.0)
                seq = logged
        except SomnusError as exc:  # a busy or restarting agent: host metrics still count
            log.debug("no guest report from '%s': %s", record.name, exc)
            return None
        report.events = [e for e in report.events if e.seq > seq]
        self._cursor[record.name] = (report.agent_started,
                                     max([seq, *(e.seq for e in report.events)]))
        self._listeners[record.name] = unexpected_listeners(report, self.forwarded_ports(record))
        return report

    def _log_guest_events(self, record: VMRecord, report: GuestMetrics) -> list[EventRow]:
        return [self.store.add_event(EventRow(
            vm_name=record.name, kind=EventKind.GUEST, level=_GUEST_LEVEL[e.kind],
            action=e.kind.value, detail=e.detail[:1000], guest_epoch=report.agent_started,
            guest_seq=e.seq)) for e in report.events]

    # -- enforcement ----------------------------------------------------------------------

    def _act(self, record: VMRecord, firing: Firing) -> EventRow | None:
        """Carry out a firing and log it; None: deferred to the next round (the home is
        busy with another change, e.g. a swap, which the action must not cut into)."""
        rule = firing.rule
        why = (f"rule '{rule.name}' ({rule.metric.value} {firing.value:g} > {rule.above:g}"
               + (f" for {rule.for_s:g} s" if rule.for_s else "") + ")")
        event = EventRow(vm_name=record.name, kind=EventKind.RULE, level=_LEVEL[rule.action],
                         rule=rule.name, metric=rule.metric.value, value=firing.value,
                         threshold=rule.above, action=rule.action.value,
                         detail=self._detail(record.name, firing),
                         evidence=json.dumps(firing.evidence))
        try:
            if not self._enforce(record, rule.action, why):
                self.engine.rearm(record.name, rule)
                log.info("security: VM '%s': %s; the home is busy, acting next round",
                         record.name, why)
                return None
        except SomnusError as exc:
            # Not carried out (libvirt refused, the VM vanished): log it, try again.
            self.engine.rearm(record.name, rule)
            event.kind, event.level = EventKind.FAILURE, Level.CRITICAL
            event.detail = f"{rule.action.value} failed: {exc}"
        log.warning("security: VM '%s': %s -> %s", record.name, why, event.detail)
        return self.store.add_event(event)

    def _detail(self, vm: str, firing: Firing) -> str:
        if firing.rule.metric is Metric.UNEXPECTED_LISTENERS and self._listeners.get(vm):
            return f"{firing.rule.description}: {', '.join(self._listeners[vm])}"
        return firing.rule.description

    def _enforce(self, record: VMRecord, action: Action, why: str) -> bool:
        """Suspend or terminate through the lifecycle; False when the home's lock is
        taken (the monitor never waits on it: other VMs must still be watched)."""
        if action is Action.WARN:
            return True
        with self.vms.lock(wait=False) as got:
            if not got:
                return False
            current = self.vms.store.get_vm(record.name)
            if action is Action.SUSPEND:
                self.vms.lifecycle.hold_suspended(current, why)
            else:
                self.vms.lifecycle.hold_terminated(current, why)
        self.deriver.forget(record.name)
        return True

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event, on_round: Callable[[Round], None] | None = None) -> None:
        """Sample every ``interval_s`` until ``stop`` is set; a failed round is logged and
        the next one tried (libvirtd restarting must not end monitoring)."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.reload()
                done = self.sample()
                if on_round is not None:
                    on_round(done)
            except SomnusError as exc:
                log.warning("security monitor round failed: %s", exc)
            stop.wait(max(0.0, self.policy.interval_s - (time.monotonic() - started)))

    def start(self) -> tuple[threading.Thread, threading.Event]:
        """Run the loop in a daemon thread; set the event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="security-monitor",
                                  daemon=True)
        thread.start()
        return thread, stop
