"""Watching real VMs while something happens: a sampler thread every 50 ms."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from orchestrator.vms import VMService

T = TypeVar("T")


@contextmanager
def sampling(sample: Callable[[], T], every_s: float = 0.05) -> Iterator[list[T]]:
    """Call ``sample`` every ``every_s`` in a thread while the block runs."""
    samples: list[T] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            samples.append(sample())
            time.sleep(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def running_vms(service: VMService) -> set[str]:
    """The names of this home's VMs whose domains run now (libvirt's view)."""
    hv, prefix = service.hv, service.settings.domain_prefix
    return {name.removeprefix(prefix) for name in hv.domain_names(prefix)
            if hv.is_running(name)}
