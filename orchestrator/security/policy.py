"""Security policy: rules of the form *metric above threshold for so long -> action*.

The policy lives in one YAML file under ``SOMNUS_HOME`` (``security-policy.yaml``);
without one the shipped :data:`DEFAULT_RULES` apply. Actions form a ladder, after the
kubelet's eviction signals: ``warn`` (an event), ``suspend`` (pause, RAM kept for
inspection), ``terminate`` (power off, disk kept). A rule fires once its metric stayed
above ``above`` for ``for_s`` seconds (its grace period), and re-arms only once the
metric fell to ``clear_below`` (hysteresis), so a spike neither fires nor flaps.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, Field, Strict, StrictFloat, StrictStr, ValidationError

from core.errors import InvalidInput
from core.types import WHOLE

POLICY_FILE = "security-policy.yaml"


class Metric(StrEnum):
    """What a rule can watch; host metrics come from libvirt, guest ones from the agent."""

    CPU_PERCENT = "cpu_percent"  # host: guest CPU time over wall time, per vCPU
    RSS_MIB = "rss_mib"  # host: the QEMU process's resident memory
    MEMORY_SHARE_PERCENT = "memory_share_percent"  # host: RSS over the VM's budget share
    BLOCK_READ_BPS = "block_read_bps"
    BLOCK_WRITE_BPS = "block_write_bps"
    PROCESS_COUNT = "process_count"  # guest, from here on
    NET_RX_BPS = "net_rx_bps"
    NET_TX_BPS = "net_tx_bps"
    DISK_USED_PERCENT = "disk_used_percent"
    AUTH_FAILURES_PER_MIN = "auth_failures_per_min"  # agent and SSH, trailing minute
    UNEXPECTED_LISTENERS = "unexpected_listeners"  # TCP ports open to the NIC, not forwarded
    PROMPT_INJECTIONS = "prompt_injections"  # new since the last sample
    SANDBOX_LIMIT_HITS = "sandbox_limit_hits"  # new since the last sample
    SANDBOX_ESCAPE_ATTEMPTS = "sandbox_escape_attempts"  # new since the last sample


class Action(StrEnum):
    """The ladder, mildest first."""

    WARN = "warn"
    SUSPEND = "suspend"
    TERMINATE = "terminate"


ACTION_ORDER = {Action.WARN: 0, Action.SUSPEND: 1, Action.TERMINATE: 2}


class Rule(BaseModel):
    """Fire ``action`` once ``metric`` stayed above ``above`` for ``for_s`` seconds."""

    model_config = {"extra": "forbid"}

    # Strict numbers and text: a policy is JSON or YAML a person wrote; "false" is not a
    # threshold, and "2" is not a duration.
    name: StrictStr = Field(pattern=r"^[a-z][a-z0-9-]{0,47}$")
    metric: Metric
    above: StrictFloat
    for_s: StrictFloat = Field(default=0.0, ge=0.0, le=86400.0)
    action: Action
    # Re-armed once the metric is at or below this (default, and at most: ``above``).
    clear_below: StrictFloat | None = None
    description: StrictStr = ""

    @property
    def rearm_at(self) -> float:
        return self.above if self.clear_below is None else min(self.clear_below, self.above)


class Policy(BaseModel):
    """The rules, and how often the monitor samples. Two rules may share a name (each
    keeps its own state); the log names the rule that fired."""

    model_config = {"extra": "forbid"}

    interval_s: StrictFloat = Field(default=2.0, ge=0.2, le=300.0)
    # Guest metrics cost an agent call: fetched every this many seconds.
    guest_interval_s: StrictFloat = Field(default=4.0, ge=0.2, le=600.0)
    # Samples kept per VM (a bounded time series: 900 x 2 s = 30 minutes).
    keep_samples: Annotated[int, Strict(), Field(ge=10, le=100_000), WHOLE] = 900
    rules: list[Rule]


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(name="cpu-hog", metric=Metric.CPU_PERCENT, above=95, for_s=120, clear_below=80,
         action=Action.WARN, description="a guest busy on every vCPU for two minutes"),
    # 110 %: a guest using all its RAM brings QEMU near 100 % of its share (RAM, TCG's
    # capped translation cache, QEMU itself); past that, QEMU itself is growing.
    Rule(name="memory-over-share", metric=Metric.MEMORY_SHARE_PERCENT, above=110, for_s=60,
         clear_below=100, action=Action.SUSPEND,
         description="QEMU resident past the RAM and overhead the budget admitted it for"),
    Rule(name="auth-flood", metric=Metric.AUTH_FAILURES_PER_MIN, above=10,
         action=Action.SUSPEND, clear_below=0,
         description="more than 10 failed agent or SSH logins in a minute"),
    Rule(name="unexpected-listener", metric=Metric.UNEXPECTED_LISTENERS, above=0,
         action=Action.TERMINATE,
         description="a process listening on a port Somnus does not forward"),
    Rule(name="sandbox-escape", metric=Metric.SANDBOX_ESCAPE_ATTEMPTS, above=0,
         action=Action.TERMINATE,
         description="an artifact run that left its sandbox's cgroup"),
    Rule(name="prompt-injection", metric=Metric.PROMPT_INJECTIONS, above=0,
         action=Action.WARN, description="prompt content flagged as an injection"),
    Rule(name="disk-nearly-full", metric=Metric.DISK_USED_PERCENT, above=95, for_s=60,
         clear_below=90, action=Action.WARN, description="the guest's disk is almost full"),
)


def default_policy() -> Policy:
    return Policy(rules=list(DEFAULT_RULES))


def policy_path(home: Path) -> Path:
    return home / POLICY_FILE


def parse_policy(text: str, origin: str) -> Policy:
    """A policy from YAML text; any mistake is one InvalidInput line naming ``origin``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{origin}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{origin}: expected a mapping with 'rules:'")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{origin}: {where}: {first['msg']} (see 'somnus security policy "
                           "--defaults')") from None


def load_policy(home: Path) -> Policy:
    """The home's policy file, or the defaults when there is none."""
    path = policy_path(home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return default_policy()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    return parse_policy(text, str(path))


def policy_yaml(policy: Policy) -> str:
    return yaml.safe_dump(policy.model_dump(mode="json", exclude_defaults=False),
                          sort_keys=False)


def save_policy(home: Path, policy: Policy) -> Path:
    """Write the policy atomically (a reader never sees half a file)."""
    path = policy_path(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(policy_yaml(policy))
    tmp.replace(path)
    return path
