"""The composition root: one object per CLI command or API process that holds the one
SQLite engine, the one libvirt connection and every service, wired once.

Its collaborators are Protocols (``orchestrator.seams``): the agent client factory,
the settle runner and the fault hook. Tests pass the fakes of ``tests/fakes.py``.
The libvirt connection (its URI, its capabilities) belongs to the host object, not
to a global, so one process could drive several hosts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from core.config import Settings, load, load_settings
from orchestrator.artifacts.service import ArtifactService
from orchestrator.artifacts.tables import ArtifactStore
from orchestrator.budget import Meter
from orchestrator.chat import ChatService
from orchestrator.collab.service import AgentVMs, CollabService
from orchestrator.collab.tables import CollabStore
from orchestrator.database import open_database
from orchestrator.devsessions import DevSessionManager, DevSessionSettings, DevSessionStore
from orchestrator.hypervisor import Hypervisor
from orchestrator.lifecycle import Lifecycle
from orchestrator.locking import HomeLock
from orchestrator.models import VMRecord
from orchestrator.projects import ProjectService
from orchestrator.projects.remote import Remote
from orchestrator.projects.tables import ProjectStore
from orchestrator.research.proxy import FetchProxy
from orchestrator.research.service import ResearchService
from orchestrator.research.tables import ResearchStore
from orchestrator.seams import AgentFactory, FaultHook, Settler, env_faults
from orchestrator.security.service import SecurityService
from orchestrator.security.tables import SecurityStore
from orchestrator.settle import DetachedSettler, InlineSettler
from orchestrator.store import Store
from orchestrator.swap import SwapEngine
from orchestrator.vms import TokenAgents, VMService


class Host:
    """One Somnus home on one libvirt host, with its services."""

    def __init__(self, settings: Settings, *, hypervisor: Hypervisor | None = None,
                 agents: AgentFactory | None = None, settler: Settler | None = None,
                 faults: FaultHook = env_faults, settle_inline: bool = False,
                 meter: Meter | None = None,
                 remote: Callable[[VMRecord], Remote] | None = None) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.engine = open_database(settings.db_path)
        self.store = Store(self.engine)
        self.project_store = ProjectStore(self.engine)
        self.dev_store = DevSessionStore(self.engine)
        self.dev_settings = load(DevSessionSettings)
        self.lock = HomeLock(settings.home / ".lock")
        self._hv = hypervisor
        self._hv_lock = threading.Lock()
        self._remote = remote
        self.lifecycle = Lifecycle(settings, self.store, self.hypervisor, meter, faults)
        self.vms = VMService(self.lifecycle, agents or TokenAgents(settings), self.lock,
                             faults=faults)
        if settler is None:
            settler = (InlineSettler(lambda: self.swap.settle()) if settle_inline
                       else DetachedSettler())
        self.swap = SwapEngine(self.vms, settler, faults)
        self.vms.foreground = self.swap
        self.vms.prepare = self.swap.recover
        self.security = SecurityService(self.vms, SecurityStore(self.engine))
        self.chat = ChatService(self.vms, self.swap, notes=self.project_store.take_note)
        self.artifacts = ArtifactService(ArtifactStore(self.engine), self.vms, self.swap,
                                         settings.home, projects=self.projects,
                                         sessions=self.sessions)
        self.collab = CollabService(CollabStore(self.engine), AgentVMs(self.vms, self.swap),
                                    settings.home / "collab")
        research_store = ResearchStore(self.engine)
        self.research = ResearchService(
            self.vms, self.swap, research_store,
            FetchProxy(research_store, settings.home / "research" / "cache", settings))

    @classmethod
    def from_env(cls) -> Host:
        """The host of the Somnus home the environment names (``SOMNUS_*``)."""
        return cls(load_settings())

    def hypervisor(self) -> Hypervisor:
        """The libvirt connection, opened on first use and again if libvirtd restarted."""
        with self._hv_lock:
            if self._hv is None or not self._hv.alive():
                self._hv = Hypervisor(self.settings.libvirt_uri)
            return self._hv

    def sessions(self) -> DevSessionManager:
        """A dev-session manager over the one store (its cache is per caller, not shared
        between threads; every change is in SQLite anyway)."""
        return DevSessionManager(self.dev_store,
                                 cache_max_sessions=self.dev_settings.cache_max_sessions,
                                 cache_idle_s=self.dev_settings.cache_idle_s)

    def projects(self) -> ProjectService:
        return ProjectService(self.vms, self.swap, self.project_store, self.sessions(),
                              remote=self._remote)

    def close(self) -> None:
        self.research.proxy.close()
        if self._hv is not None:
            self._hv.close()
        self.engine.dispose()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
