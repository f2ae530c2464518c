"""Raw readings to rule metrics: libvirt's bulk statistics and the agent's report become
rates and counts (:class:`~orchestrator.security.policy.Metric`).

Counters become rates by difference over time, as cockpit-machines does: CPU percent
is 100 x delta(``cpu.time``) / (delta(t) x vCPUs). So the first reading of a VM only
sets a baseline. Guest counters restart at zero with the agent (``agent_started``
changes): the baseline restarts with them.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from guest_agent.protocol.security import GuestMetrics
from orchestrator.security.policy import Metric

M = Metric
AUTH_WINDOW_S = 60.0


@dataclass
class _HostBase:
    at: float
    cpu_ns: int
    read_bytes: int
    written_bytes: int


@dataclass
class _GuestBase:
    at: float
    agent_started: float
    rx: int
    tx: int
    injections: int
    limit_hits: int
    escapes: int
    auth: deque[tuple[float, int]] = field(default_factory=deque)


def _block_total(stats: dict[str, Any], counter: str) -> int:
    return sum(int(stats.get(f"block.{i}.{counter}", 0))
               for i in range(int(stats.get("block.count", 0))))


def _rate(now: float, before: float, dt: float) -> float:
    return max(0.0, now - before) / dt if dt > 0 else 0.0


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def unexpected_listeners(report: GuestMetrics, forwarded: set[int]) -> list[str]:
    """TCP listeners reachable from the NIC on a port no forward leads to (``addr:port``).

    A listener on loopback only cannot be reached from outside the guest: not counted.
    """
    return sorted({f"{p.address}:{p.port}" for p in report.listening
                   if p.port not in forwarded and not is_loopback(p.address)})


class MetricDeriver:
    """Keeps each VM's previous reading and turns the next one into metrics."""

    def __init__(self) -> None:
        self._host: dict[str, _HostBase] = {}
        self._guest: dict[str, _GuestBase] = {}

    def forget(self, vm: str) -> None:
        self._host.pop(vm, None)
        self._guest.pop(vm, None)

    def host(self, vm: str, at: float, stats: dict[str, Any],
             share_mib: int) -> dict[Metric, float]:
        """Metrics from one VM's ``virConnectGetAllDomainStats`` entry."""
        out: dict[Metric, float] = {}
        rss_kib = stats.get("balloon.rss")
        if rss_kib is not None:
            out[M.RSS_MIB] = int(rss_kib) / 1024
            out[M.MEMORY_SHARE_PERCENT] = 100.0 * out[M.RSS_MIB] / max(1, share_mib)
        now = _HostBase(at, int(stats.get("cpu.time", 0)), _block_total(stats, "rd.bytes"),
                        _block_total(stats, "wr.bytes"))
        before = self._host.get(vm)
        self._host[vm] = now
        if before is None or now.at <= before.at or now.cpu_ns < before.cpu_ns:
            return out  # a baseline (first reading, or a new QEMU process)
        dt = now.at - before.at
        vcpus = max(1, int(stats.get("vcpu.current", 1)))
        out[M.CPU_PERCENT] = min(100.0, 100.0 * (now.cpu_ns - before.cpu_ns) / 1e9 / dt / vcpus)
        out[M.BLOCK_READ_BPS] = _rate(now.read_bytes, before.read_bytes, dt)
        out[M.BLOCK_WRITE_BPS] = _rate(now.written_bytes, before.written_bytes, dt)
        return out

    def guest(self, vm: str, report: GuestMetrics, forwarded: set[int]) -> dict[Metric, float]:
        """Metrics from the agent's report (its own clock; only differences are used)."""
        at = report.at
        out: dict[Metric, float] = {
            M.PROCESS_COUNT: float(report.process_count),
            M.DISK_USED_PERCENT: report.disk_used_percent,
            M.UNEXPECTED_LISTENERS: float(len(unexpected_listeners(report, forwarded))),
        }
        auth_total = report.failed_agent_auths + report.failed_ssh_logins
        before = self._guest.get(vm)
        if before is None or before.agent_started != report.agent_started or at <= before.at:
            # A baseline: a first reading, or a restarted agent whose counters began again.
            self._guest[vm] = _GuestBase(at, report.agent_started, report.net_rx_bytes,
                                         report.net_tx_bytes, report.prompt_injections,
                                         report.sandbox_limit_hits,
                                         report.sandbox_escape_attempts,
                                         deque([(at, auth_total)]))
            out[M.AUTH_FAILURES_PER_MIN] = 0.0
            return out
        dt = at - before.at
        out[M.NET_RX_BPS] = _rate(report.net_rx_bytes, before.rx, dt)
        out[M.NET_TX_BPS] = _rate(report.net_tx_bytes, before.tx, dt)
        out[M.PROMPT_INJECTIONS] = float(max(0, report.prompt_injections - before.injections))
        out[M.SANDBOX_LIMIT_HITS] = float(max(0, report.sandbox_limit_hits - before.limit_hits))
        out[M.SANDBOX_ESCAPE_ATTEMPTS] = float(
            max(0, report.sandbox_escape_attempts - before.escapes))
        before.auth.append((at, auth_total))
        # The oldest reading still inside the window is the baseline of the last minute.
        while len(before.auth) > 1 and before.auth[1][0] <= at - AUTH_WINDOW_S:
            before.auth.popleft()
        out[M.AUTH_FAILURES_PER_MIN] = float(max(0, auth_total - before.auth[0][1]))
        before.at, before.rx, before.tx = at, report.net_rx_bytes, report.net_tx_bytes
        before.injections, before.limit_hits = report.prompt_injections, report.sandbox_limit_hits
        before.escapes = report.sandbox_escape_attempts
        return out
