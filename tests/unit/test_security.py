"""Security on the host: the rule engine (thresholds, grace periods, hysteresis), the policy
file, readings turned into metrics, and the monitor acting through the lifecycle on
libvirt's test driver (suspend and release, terminate, the anomaly log)."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.errors import InvalidInput, SecurityHold
from guest_agent.protocol import Subsystem
from guest_agent.protocol.security import (
    GuestEventKind,
    GuestMetrics,
    GuestSecurityEvent,
    ListeningPort,
)
from orchestrator.host import Host
from orchestrator.models import VMState
from orchestrator.security.metrics import MetricDeriver, unexpected_listeners
from orchestrator.security.monitor import SecurityMonitor
from orchestrator.security.policy import (
    DEFAULT_RULES,
    Action,
    Metric,
    Policy,
    Rule,
    default_policy,
    load_policy,
    parse_policy,
    policy_yaml,
    save_policy,
)
from orchestrator.security.rules import RuleEngine
from orchestrator.views import fleet_view, vm_detail
from tests.fakes import StandInAgents

M = Metric


def rule(**kw: object) -> Rule:
    fields: dict[str, object] = {"name": "r", "metric": M.CPU_PERCENT, "above": 90.0,
                                 "action": Action.WARN}
    return Rule.model_validate({**fields, **kw})


def engine(*rules: Rule) -> RuleEngine:
    return RuleEngine(Policy(rules=list(rules)))


# -- the rule engine ---------------------------------------------------------------------


def test_a_rule_fires_once_its_metric_stayed_above_for_the_grace_period() -> None:
    e = engine(rule(for_s=10))
    assert e.observe("vm", 0, {M.CPU_PERCENT: 99}) == []
    assert e.observe("vm", 5, {M.CPU_PERCENT: 99}) == []
    (fired,) = e.observe("vm", 10, {M.CPU_PERCENT: 97})
    assert (fired.vm, fired.rule.name, fired.value, fired.breach_started) == ("vm", "r", 97, 0)
    assert fired.evidence == [(0, 99), (5, 99), (10, 97)]
    assert e.observe("vm", 20, {M.CPU_PERCENT: 99}) == []  # fired once, not every sample


def test_a_spike_shorter_than_the_grace_period_does_not_fire() -> None:
    e = engine(rule(for_s=10))
    e.observe("vm", 0, {M.CPU_PERCENT: 99})
    e.observe("vm", 5, {M.CPU_PERCENT: 50})  # the breach ends
    assert e.observe("vm", 11, {M.CPU_PERCENT: 99}) == []
    assert e.observe("vm", 20, {M.CPU_PERCENT: 99}) == []
    assert len(e.observe("vm", 21, {M.CPU_PERCENT: 99})) == 1


def test_hysteresis_a_fired_rule_rearms_only_below_clear_below() -> None:
    e = engine(rule(clear_below=50))
    assert len(e.observe("vm", 0, {M.CPU_PERCENT: 95})) == 1
    assert e.observe("vm", 1, {M.CPU_PERCENT: 80}) == []  # between: still fired
    assert e.observe("vm", 2, {M.CPU_PERCENT: 95}) == []  # no flapping
    assert e.fired("vm") == ["r"]
    e.observe("vm", 3, {M.CPU_PERCENT: 40})  # re-armed
    assert e.fired("vm") == []
    assert len(e.observe("vm", 4, {M.CPU_PERCENT: 95})) == 1


def test_between_the_thresholds_an_unfired_breach_ends() -> None:
    e = engine(rule(for_s=5, clear_below=50))
    e.observe("vm", 0, {M.CPU_PERCENT: 95})
    e.observe("vm", 3, {M.CPU_PERCENT: 70})
    assert e.observe("vm", 6, {M.CPU_PERCENT: 95}) == []  # a new breach started at 6
    assert len(e.observe("vm", 11, {M.CPU_PERCENT: 95})) == 1


def test_a_missing_metric_changes_nothing_and_vms_are_separate() -> None:
    e = engine(rule(for_s=5))
    e.observe("a", 0, {M.CPU_PERCENT: 99})
    e.observe("a", 3, {})  # a paused guest reports nothing
    e.observe("b", 4, {M.CPU_PERCENT: 10})
    assert [f.vm for f in e.observe("a", 5, {M.CPU_PERCENT: 99})] == ["a"]


def test_rules_sharing_a_name_are_separate_and_clear_below_is_at_most_above() -> None:
    e = engine(rule(above=90), rule(above=50, clear_below=70))
    assert len(e.observe("vm", 0, {M.CPU_PERCENT: 95})) == 2
    e.observe("vm", 1, {M.CPU_PERCENT: 60})  # re-arms the first; the second re-arms at 50
    assert e.fired("vm") == ["r"]
    assert len(e.observe("vm", 2, {M.CPU_PERCENT: 95})) == 1
    e.observe("vm", 3, {M.CPU_PERCENT: 40})
    assert e.fired("vm") == []


def test_rearm_lets_a_rule_whose_action_failed_fire_again() -> None:
    e = engine(rule())
    assert e.observe("vm", 0, {M.CPU_PERCENT: 99})
    e.rearm("vm", rule())
    assert e.observe("vm", 1, {M.CPU_PERCENT: 99})


def test_replacing_the_policy_keeps_the_state_of_rules_kept_by_name() -> None:
    e = engine(rule(), rule(name="other", metric=M.RSS_MIB, above=1))
    e.observe("vm", 0, {M.CPU_PERCENT: 99, M.RSS_MIB: 5})
    e.replace_policy(Policy(rules=[rule()]))
    assert e.fired("vm") == ["r"]


# -- the policy file ----------------------------------------------------------------------


def test_the_defaults_follow_the_issue_and_survive_a_round_trip(tmp_path: Path) -> None:
    policy = default_policy()
    by_name = {r.name: r for r in policy.rules}
    assert (by_name["cpu-hog"].above, by_name["cpu-hog"].for_s,
            by_name["cpu-hog"].action) == (95, 120, Action.WARN)
    assert by_name["auth-flood"].action is Action.SUSPEND
    assert by_name["unexpected-listener"].action is Action.TERMINATE
    assert load_policy(tmp_path) == policy  # no file: the defaults
    save_policy(tmp_path, policy.model_copy(update={"interval_s": 1.0}))
    assert load_policy(tmp_path).interval_s == 1.0
    assert parse_policy(policy_yaml(policy), "x") == policy
    assert len(DEFAULT_RULES) == len(policy.rules)


@pytest.mark.parametrize(("text", "words"), [
    ("rules: [", "not YAML"),
    ("- a list", "expected a mapping"),
    ("rules:\n- {name: x, metric: nope, above: 1, action: warn}", "rules.0.metric"),
    ("rules:\n- {name: x, metric: cpu_percent, above: 1, action: explode}", "rules.0.action"),
    ("rules:\n- {name: x, metric: cpu_percent, above: false, action: warn}", "rules.0.above"),
    ("interval_s: '2'\nrules: []", "interval_s"),
    ("rules:\n- {name: X, metric: cpu_percent, above: 1, action: warn}", "rules.0.name"),
])
def test_a_bad_policy_is_one_line_naming_the_file_and_the_field(text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as caught:
        parse_policy(text, "/home/x/security-policy.yaml")
    assert "\n" not in str(caught.value) and "security-policy.yaml" in str(caught.value)


# -- readings to metrics ------------------------------------------------------------------


def report(at: float, **kw: object) -> GuestMetrics:
    fields: dict[str, object] = {
        "vm_name": "vm", "at": at, "agent_started": 100.0, "process_count": 50,
        "top_processes": [], "listening": [], "net_rx_bytes": 0, "net_tx_bytes": 0,
        "disk_used_percent": 10.0, "failed_ssh_logins": 0, "failed_agent_auths": 0,
        "prompt_injections": 0, "sandbox_limit_hits": 0, "sandbox_escape_attempts": 0}
    return GuestMetrics.model_validate({**fields, **kw})


def test_cpu_percent_is_cpu_time_over_wall_time_per_vcpu() -> None:
    d = MetricDeriver()
    first = d.host("vm", 0.0, {"cpu.time": 0, "vcpu.current": 2, "balloon.rss": 512 * 1024},
                   share_mib=1024)
    assert M.CPU_PERCENT not in first  # a baseline
    assert first[M.MEMORY_SHARE_PERCENT] == 50.0
    later = d.host("vm", 2.0, {"cpu.time": 3 * 10**9, "vcpu.current": 2,
                               "block.count": 1, "block.0.wr.bytes": 4096}, share_mib=1024)
    assert later[M.CPU_PERCENT] == 75.0
    assert later[M.BLOCK_WRITE_BPS] == 2048.0


def test_auth_failures_count_over_the_trailing_minute_and_a_restart_rebases() -> None:
    d = MetricDeriver()
    assert d.guest("vm", report(0), set())[M.AUTH_FAILURES_PER_MIN] == 0
    assert d.guest("vm", report(10, failed_agent_auths=6), set())[M.AUTH_FAILURES_PER_MIN] == 6
    out = d.guest("vm", report(20, failed_agent_auths=9, failed_ssh_logins=3), set())
    assert out[M.AUTH_FAILURES_PER_MIN] == 12
    assert d.guest("vm", report(75, failed_agent_auths=9, failed_ssh_logins=3),
                   set())[M.AUTH_FAILURES_PER_MIN] == 6  # the first 6 are over a minute old
    restarted = report(80, agent_started=200.0, failed_agent_auths=1)
    assert d.guest("vm", restarted, set())[M.AUTH_FAILURES_PER_MIN] == 0


def test_listeners_on_loopback_or_a_forwarded_port_are_expected() -> None:
    seen = report(0, listening=[
        ListeningPort(port=22, address="0.0.0.0"), ListeningPort(port=8700, address="::"),
        ListeningPort(port=5432, address="127.0.0.1"), ListeningPort(port=9999, address="::1"),
        ListeningPort(port=4444, address="0.0.0.0", process="nc")])
    assert unexpected_listeners(seen, {22, 8700}) == ["0.0.0.0:4444"]
    assert MetricDeriver().guest("vm", seen, {22, 8700})[M.UNEXPECTED_LISTENERS] == 1


# -- the monitor on the test driver --------------------------------------------------------


def fast_policy(*rules: Rule) -> Policy:
    return Policy(interval_s=0.2, guest_interval_s=0.2, rules=list(rules))


def monitor_for(host: Host, policy: Policy) -> SecurityMonitor:
    """A monitor whose clock moves a second per round: the guest is asked every round."""
    ticks = itertools.count(time.time())
    return SecurityMonitor(host.vms, host.security.store, lambda: policy,
                           clock=lambda: float(next(ticks)))


def test_an_auth_flood_suspends_the_vm_which_stays_held_until_released(
        host: Host, agents: StandInAgents) -> None:
    host.vms.create("chat", Subsystem.CHAT, memory_mib=512, wait=False)
    host.vms.lifecycle.mark_ready(host.store.get_vm("chat"))
    policy = fast_policy(*(r for r in DEFAULT_RULES if r.name == "auth-flood"))
    monitor = monitor_for(host, policy)
    agent = agents.made.get("chat") or agents(host.store.get_vm("chat"))
    agent.guest = report(time.time(), vm_name="chat")
    assert monitor.sample().events == []
    agent.guest = report(time.time() + 1, vm_name="chat", failed_agent_auths=25)
    (event,) = monitor.sample().events
    assert (event.rule, event.action, event.value, event.level) == (
        "auth-flood", "suspend", 25, "critical")
    record = host.store.get_vm("chat")
    assert host.vms.observe(record).state is VMState.PAUSED
    assert record.security_hold and "auth-flood" in record.security_hold
    with pytest.raises(SecurityHold, match="somnus security release chat"):
        host.lifecycle.resume(record, "test")
    (status,) = host.security.status("chat")
    assert status.status == "held" and status.metrics["auth_failures_per_min"] == 25
    original = status.security_metrics  # the original design's fields, filled in at last
    assert (original.rate_limit_violations, original.threat_score) == (1, 0.9)
    assert original.suspicious_activities[0].startswith("auth-flood: ")
    assert fleet_view(host.vms).vms[0].security == "held"
    assert vm_detail(host.vms, "chat").security_report.metrics["auth_failures_per_min"] == 25
    released = host.security.release("chat")
    assert released.state is VMState.RUNNING and released.hold is None
    kinds = [e.kind for e in host.security.events("chat")]
    assert kinds == ["release", "rule"]  # newest first, kept in SQLite


def test_a_terminate_rule_powers_off_and_keeps_the_disk(host: Host, agents: StandInAgents) -> None:
    host.vms.create("proj", Subsystem.PROJECT, memory_mib=512, wait=False)
    record = host.vms.lifecycle.mark_ready(host.store.get_vm("proj"))
    monitor = monitor_for(host, fast_policy(
        *(r for r in DEFAULT_RULES if r.name == "unexpected-listener")))
    agent = agents(record)
    agent.guest = report(time.time(), vm_name="proj",
                         listening=[ListeningPort(port=4444, address="0.0.0.0", process="nc")])
    (event,) = monitor.sample().events
    assert event.action == "terminate" and "0.0.0.0:4444" in event.detail
    record = host.store.get_vm("proj")
    assert host.vms.observe(record).state is VMState.STOPPED
    assert host.vms.paths("proj").overlay.exists()
    with pytest.raises(SecurityHold):
        host.vms.start("proj", wait=False)
    host.security.release("proj")
    host.vms.start("proj", wait=False)


def test_guest_events_are_logged_once_even_by_a_new_monitor(
        host: Host, agents: StandInAgents) -> None:
    host.vms.create("chat", Subsystem.CHAT, memory_mib=512, wait=False)
    record = host.vms.lifecycle.mark_ready(host.store.get_vm("chat"))
    events = [GuestSecurityEvent(seq=i, at=1.0, kind=GuestEventKind.PROMPT_INJECTION,
                                 detail=f"flagged {i}") for i in (1, 2)]
    agents(record).guest = report(time.time(), vm_name="chat", events=events)
    policy = fast_policy()
    assert len(monitor_for(host, policy).sample().events) == 2
    assert monitor_for(host, policy).sample().events == []  # the log already holds them
    assert [e.detail for e in host.security.events("chat")] == ["flagged 2", "flagged 1"]


def test_a_dead_agent_leaves_host_metrics_and_a_failed_action_is_logged_and_retried(
        host: Host, agents: StandInAgents, monkeypatch: pytest.MonkeyPatch) -> None:
    host.vms.create("chat", Subsystem.CHAT, memory_mib=512, wait=False)
    record = host.vms.lifecycle.mark_ready(host.store.get_vm("chat"))
    agents(record).broken = True
    monitor = monitor_for(host, fast_policy(rule(name="any", metric=M.CPU_PERCENT, above=-1,
                                                 action=Action.SUSPEND)))
    assert monitor.sample().sampled == {"chat": {}}  # baseline: no rate yet, no guest

    def refuse(*_: object) -> None:
        raise SecurityHold("libvirt said no")

    monkeypatch.setattr(host.vms.lifecycle, "hold_suspended", refuse)
    (failed,) = monitor.sample().events
    assert failed.kind == "failure" and "libvirt said no" in failed.detail
    monkeypatch.undo()
    (done,) = monitor.sample().events
    assert done.kind == "rule" and host.store.get_vm("chat").security_hold


def test_the_cli_shows_status_events_and_the_policy(
        host: Host, agents: StandInAgents, fresh_cli_host: None, tmp_path: Path) -> None:
    from cli import app

    runner = CliRunner()
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text("interval_s: 1\nrules:\n- {name: hot, metric: cpu_percent, above: 50,"
                           " action: warn}\n")
    saved = runner.invoke(app, ["security", "policy", "--set", str(policy_file)])
    assert saved.exit_code == 0, saved.output
    shown = runner.invoke(app, ["security", "policy", "--json"])
    assert json.loads(shown.stdout)["rules"][0]["name"] == "hot"
    bad = runner.invoke(app, ["security", "policy", "--set", "-"], input="rules: [")
    assert isinstance(bad.exception, InvalidInput) and "not YAML" in str(bad.exception)
    assert json.loads(runner.invoke(app, ["security", "status", "--json"]).stdout) == []
    since = runner.invoke(app, ["security", "events", "--since", "5x"])
    assert isinstance(since.exception, InvalidInput) and "30m" in str(since.exception)
    assert "no security events" in runner.invoke(app, ["security", "events"]).stdout


def test_an_action_waits_for_a_busy_home_without_blocking_the_monitor(
        host: Host, agents: StandInAgents) -> None:
    host.vms.create("chat", Subsystem.CHAT, memory_mib=512, wait=False)
    host.vms.lifecycle.mark_ready(host.store.get_vm("chat"))
    monitor = monitor_for(host, fast_policy(rule(name="any", metric=M.CPU_PERCENT, above=-1,
                                                 action=Action.SUSPEND)))
    monitor.sample()
    holding, done = threading.Event(), threading.Event()

    def swap_in_progress() -> None:
        with host.vms.lock():
            holding.set()
            done.wait(10)

    other = threading.Thread(target=swap_in_progress)
    other.start()
    try:
        assert holding.wait(5)
        assert monitor.sample().events == []  # deferred, not waited for, not a failure
        assert host.store.get_vm("chat").security_hold is None
    finally:
        done.set()
        other.join()
    (event,) = monitor.sample().events
    assert event.kind == "rule" and host.store.get_vm("chat").security_hold


def test_the_policy_is_read_again_only_when_its_file_changes(host: Host) -> None:
    service = host.security
    assert service.policy() is service.policy() == default_policy()  # parsed once
    path = service.vms.settings.home / "security-policy.yaml"
    path.write_text("rules:\n- {name: hot, metric: cpu_percent, above: 50, action: warn}\n")
    os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert [r.name for r in service.policy().rules] == ["hot"]
    monitor = service.monitor()
    monitor.reload()
    assert [r.name for r in monitor.policy.rules] == ["hot"]
