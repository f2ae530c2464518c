"""One VM's agent: the model runtime, memory, prompt bridge, chat engine and request gate."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from guest_agent.chat import ChatEngine
from guest_agent.collab import CollabTurns, NotAgentVM
from guest_agent.gate import RequestGate
from guest_agent.memory.manager import MemoryManager
from guest_agent.prompts.bridge import PromptBridge
from guest_agent.protocol import AgentConfig, AgentStatus, ModelState, Subsystem
from guest_agent.protocol.security import GuestEventKind, Redaction, ScreeningResult
from guest_agent.research.service import NotResearchVM, ResearchService
from guest_agent.runtime import ModelRuntime
from guest_agent.sandbox.runner import Sandbox, SandboxUnavailable, open_sandbox
from guest_agent.sandbox.web import WebArtifacts
from guest_agent.security import SecurityLedger

log = logging.getLogger(__name__)


class Agent:
    """Owns everything one VM's agent serves; ``boot`` loads the model off the request path."""

    def __init__(self, config: AgentConfig, runtime: ModelRuntime | None = None) -> None:
        self.config = config
        self.ledger = SecurityLedger()
        data_dir = Path(config.data_dir)
        self.runtime = runtime or ModelRuntime(config.model, data_dir)
        self.memory = MemoryManager(data_dir, config.memory_index,
                                    on_redaction=self._redacted)
        self.bridge = PromptBridge(self.memory.store, config.subsystem)
        self.engine = ChatEngine(self.runtime, self.memory, self.bridge,
                                 on_flagged=self._flagged)
        self.gate = RequestGate(config.max_queue)
        self.boot_error: str | None = None
        self._booted = threading.Event()
        self._sandbox: Sandbox | SandboxUnavailable | None = None
        self._sandbox_lock = threading.Lock()
        self._web: WebArtifacts | None = None
        self._research: ResearchService | None = None
        self._research_lock = threading.Lock()
        self._data_dir = data_dir
        self._collab = CollabTurns(self.runtime, self.bridge.roles, self.memory)

    def _redacted(self, redaction: Redaction) -> None:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(redaction.kinds.items()))
        self.ledger.record(GuestEventKind.SECRET_REDACTED, f"from a memory: {kinds}")

    def _flagged(self, result: ScreeningResult) -> None:
        where = result.source.value + (f" {result.ref}" if result.ref else "")
        self.ledger.record(GuestEventKind.PROMPT_INJECTION,
                           f"{where}: threat {result.threat.value} "
                           f"({', '.join(result.matched)})")

    @property
    def sandbox(self) -> Sandbox:
        """The VM's run sandbox, set up on first use; raises ``SandboxUnavailable``."""
        with self._sandbox_lock:
            if self._sandbox is None:
                try:
                    self._sandbox = open_sandbox(self._data_dir)
                except SandboxUnavailable as exc:
                    self._sandbox = exc
                except OSError as exc:
                    self._sandbox = SandboxUnavailable(f"the sandbox could not be set up: {exc}")
        if isinstance(self._sandbox, SandboxUnavailable):
            raise self._sandbox
        return self._sandbox

    @property
    def web(self) -> WebArtifacts:
        """The open web artifact and the web port, started on first use (artifacts VM)."""
        sandbox = self.sandbox
        with self._sandbox_lock:
            if self._web is None:
                self._web = WebArtifacts(sandbox)
            return self._web

    @property
    def research(self) -> ResearchService:
        """The research corpus, fetch broker and runs, set up on first use (research VM);
        raises ``NotResearchVM`` in a VM of another subsystem."""
        if self.config.subsystem is not Subsystem.RESEARCH:
            raise NotResearchVM("research runs in the research VM: "
                                "'somnus vm create research --subsystem research'")
        with self._research_lock:
            if self._research is None:
                self._research = ResearchService(self._data_dir, self.runtime,
                                                 self.bridge.roles, self.memory,
                                                 on_redaction=self._redacted)
            return self._research

    @property
    def collab(self) -> CollabTurns:
        """Collaboration turns (an agent VM); raises ``NotAgentVM`` in another VM."""
        if self.config.subsystem is not Subsystem.AGENT:
            raise NotAgentVM("collaboration turns run in agent VMs: 'somnus collab start' "
                             "makes them")
        return self._collab

    def boot(self) -> None:
        """Load the model, then attach memory to it (index loaded or rebuilt); in the
        research VM the corpus too, and the runs a stop cut short are resumed."""
        try:
            self.runtime.load_quietly()
            if self.runtime.state is ModelState.READY:
                self.memory.attach(self.runtime)
                if self.config.subsystem is Subsystem.RESEARCH:
                    self.research.attach()
        except Exception as exc:
            log.exception("agent boot failed")
            self.boot_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._booted.set()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.boot, name="agent-boot", daemon=True)
        thread.start()
        return thread

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._booted.wait(timeout)
        return self.status is AgentStatus.OK

    @property
    def status(self) -> AgentStatus:
        if self.runtime.state is ModelState.ERROR or self.boot_error:
            return AgentStatus.ERROR
        if self.runtime.state is ModelState.READY and self.memory.ready and (
                self.config.subsystem is not Subsystem.RESEARCH
                or (self._research is not None and self._research.corpus.ready)):
            return AgentStatus.OK
        return AgentStatus.LOADING

    @property
    def error(self) -> str | None:
        return self.runtime.error or self.boot_error

    def close(self) -> None:
        """Make memory durable (index written, WAL checkpointed) and close the database;
        the research service's too (a run in progress resumes at the next boot)."""
        if self._research is not None:
            self._research.close()
        self.memory.close()
