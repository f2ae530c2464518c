"""The API server's live view of domain states, fed by libvirt's lifecycle events.

``somnus serve`` reads every VM's state from here instead of asking libvirt per
request: a domain that starts, stops, pauses, is saved or is destroyed behind
Somnus's back is marked stale by its event (``virConnectDomainEventRegisterAny`` on
libvirt's default event loop, run in a daemon thread), and read again once, on the
next request that needs it. Between events a read costs no libvirt call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from core.errors import NotFound
from orchestrator.hypervisor import Hypervisor
from orchestrator.models import VMRecord, VMState

log = logging.getLogger(__name__)

_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per process).

    Must run before the connection that registers for events is opened.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


# libvirt's virDomainEventType, by value.
EVENT_NAMES = ("defined", "undefined", "started", "suspended", "resumed", "stopped",
               "shutdown", "pmsuspended", "crashed")
RECENT_EVENTS = 256  # lifecycle notes kept for the app's live feed


@dataclass(frozen=True)
class LifecycleNote:
    """One libvirt lifecycle event as it arrived: numbered, so a reader asks for the rest."""

    seq: int
    domain: str
    event: str
    detail: int
    at: float  # Unix time


class LiveView:
    """Domain states by name, refreshed only when libvirt says something changed."""

    def __init__(self, hypervisor: Callable[[], Hypervisor],
                 read: Callable[[VMRecord], VMState]) -> None:
        """``read`` is where a VM's domain is (``Lifecycle.current``: a VM saved in place
        whose QEMU is gone is 'saved', which libvirt alone cannot tell); NotFound: none."""
        self._hypervisor = hypervisor
        self._read = read
        self._lock = threading.Lock()
        self._states: dict[str, VMState | None] = {}
        self._stale: set[str] = set()
        self._all_stale = True
        self._callback_id: int | None = None
        self._conn: Any = None
        self.events = 0  # how many lifecycle events arrived (also the last note's seq)
        self._recent: deque[LifecycleNote] = deque(maxlen=RECENT_EVENTS)
        self._closes = 0

    def start(self) -> None:
        """Subscribe to lifecycle events on the host's connection."""
        start_event_loop()
        hv = self._hypervisor()
        self._conn = hv.conn
        self._callback_id = hv.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)
        hv.conn.registerCloseCallback(self._on_close, None)

    def stop(self) -> None:
        if self._callback_id is not None and self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.domainEventDeregisterAny(self._callback_id)
            self._callback_id = None

    def _on_event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        # Runs on the event loop's thread: no libvirt calls here, only a mark and a note.
        name = EVENT_NAMES[event] if 0 <= event < len(EVENT_NAMES) else f"event-{event}"
        with self._lock:
            self._stale.add(dom.name())
            self.events += 1
            self._recent.append(LifecycleNote(self.events, dom.name(), name, detail,
                                              time.time()))

    def notes_after(self, seq: int) -> list[LifecycleNote]:
        """The lifecycle events after number ``seq`` that are still kept, oldest first."""
        with self._lock:
            return [note for note in self._recent if note.seq > seq]

    def _on_close(self, _conn: Any, _reason: int, _opaque: Any) -> None:
        with self._lock:
            self._all_stale = True
            self._closes += 1
        log.warning("libvirt connection closed: the live view reloads on the next read")

    @property
    def generation(self) -> int:
        """Moves whenever anything the view holds may have changed."""
        return self.events + self._closes

    @property
    def subscribed(self) -> bool:
        return self._callback_id is not None

    def state_of(self, record: VMRecord) -> VMState | None:
        """The domain's state (None: no such domain), from the view or read once if stale."""
        name = record.domain_name
        with self._lock:
            fresh = self.subscribed and not self._all_stale and name not in self._stale
            if fresh and name in self._states:
                return self._states[name]
            self._stale.discard(name)
        try:
            state: VMState | None = self._read(record)
        except NotFound:
            state = None
        with self._lock:
            if name not in self._stale:  # no newer event arrived meanwhile
                self._states[name] = state
            if self._all_stale:
                self._states = {name: state}
                self._all_stale = False
        return state
