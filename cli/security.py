"""``somnus security``: each VM's security status, the anomaly log, the policy, releases."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from cli.common import JsonFlag, emit_json, err, host, out
from core.errors import InvalidInput
from orchestrator.security.monitor import Round
from orchestrator.security.policy import default_policy, parse_policy, policy_yaml

security_app = typer.Typer(
    help="Per-VM security metrics, policies that warn, suspend and terminate, the anomaly log.",
    no_args_is_help=True)

# The columns of 'security status': metric, heading (--json has every metric).
_SHOWN = (("cpu_percent", "CPU %"), ("rss_mib", "RSS MiB"), ("memory_share_percent", "SHARE %"),
          ("auth_failures_per_min", "AUTH/MIN"), ("unexpected_listeners", "LISTEN"),
          ("disk_used_percent", "DISK %"))


def parse_since(text: str) -> datetime:
    """``30m``, ``2h``, ``1d`` ago, or an ISO time (UTC unless it says otherwise)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--since {text!r}: use 30m, 2h, 1d or an ISO time "
                           "(2026-12-05T10:00)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@security_app.command("status")
def security_status(
    vm: Annotated[str | None, typer.Argument(help="One VM (default: all).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Each VM's status (ok, warning, held), its latest sample and recent events."""
    views = host().security.status(vm)
    if as_json:
        emit_json(views)
        return
    table = Table("VM", "STATE", "SECURITY", "SAMPLED", *(h for _, h in _SHOWN), "HOLD")
    for v in views:
        sampled = v.sampled_at.strftime("%H:%M:%S") if v.sampled_at else "never"
        table.add_row(v.name, v.state.value, v.status, sampled,
                      *(f"{v.metrics[m]:.0f}" if m in v.metrics else "-" for m, _ in _SHOWN),
                      v.hold or "")
    out.print(table if views else "no VMs yet")
    if views and not any(v.sampled_at for v in views):
        err.print("no samples yet: 'somnus serve' monitors, or run 'somnus security watch'")


@security_app.command("events")
def security_events(
    vm: Annotated[str | None, typer.Option(help="Only this VM's events.")] = None,
    since: Annotated[str | None, typer.Option(help="30m, 2h, 1d, or an ISO time.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """The anomaly log, newest first: rules that fired, actions taken, guest reports."""
    events = host().security.events(vm, parse_since(since) if since else None, limit)
    if as_json:
        emit_json(events)
        return
    table = Table("AT", "VM", "LEVEL", "KIND", "RULE", "VALUE", "ACTION", "DETAIL")
    for e in events:
        value = "" if e.value is None else f"{e.value:g}" + (
            f" > {e.threshold:g}" if e.threshold is not None else "")
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), e.vm_name, e.level.value,
                      e.kind.value, e.rule or "", value, e.action or "", e.detail)
    out.print(table if events else "no security events")


@security_app.command("release")
def security_release(
    vm: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """Let a VM the policy suspended or terminated run again (a suspended one resumes
    with its memory as it was)."""
    record = host().vms.store.get_vm(vm)
    if record.security_hold and not yes:
        typer.confirm(f"VM '{vm}' is held ({record.security_hold}). Release it?", abort=True,
                      err=True)
    view = host().security.release(vm)
    if as_json:
        emit_json(view)
    else:
        out.print(f"VM '{vm}' released; it is {view.state.value}")


@security_app.command("policy")
def security_policy(
    defaults: Annotated[bool, typer.Option(help="Print the shipped defaults instead.")] = False,
    set_file: Annotated[typer.FileText | None, typer.Option(
        "--set", help="Replace the policy with this YAML file ('-': stdin), checked first.")]
    = None,
    as_json: JsonFlag = False,
) -> None:
    """Print the policy in force (YAML), or replace it (--set FILE)."""
    service = host().security
    if set_file is not None:
        policy = service.set_policy(parse_policy(set_file.read(), set_file.name))
        err.print(f"policy saved: {len(policy.rules)} rules")
    else:
        policy = default_policy() if defaults else service.policy()
    if as_json:
        emit_json(policy)
    else:
        out.print(policy_yaml(policy), end="", highlight=False, soft_wrap=True)


@security_app.command("watch")
def security_watch(
    rounds: Annotated[int, typer.Option(min=0, help="Stop after N rounds (0: until Ctrl-C).")]
    = 0,
) -> None:
    """Monitor in the foreground (what 'somnus serve' does in the background): sample,
    enforce the policy, print what fires."""
    monitor = host().security.monitor()
    stop = threading.Event()
    done = 0

    def on_round(round_: Round) -> None:
        nonlocal done
        done += 1
        for event in round_.events:
            err.print(f"{event.vm_name}: {event.level.value} {event.kind.value} "
                      f"{event.rule or event.action or ''}: {event.detail}", highlight=False)
        if rounds and done >= rounds:
            stop.set()

    err.print(f"monitoring every {monitor.policy.interval_s:g} s; Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        monitor.run(stop, on_round)
