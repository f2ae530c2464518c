"""The research VM's research service: its corpus, its fetch broker and its runs, wired.

Built by the agent on first use, in the research VM only (``NotResearchVM`` elsewhere);
at boot, once the model is loaded, ``attach`` binds the corpus to the embedder and
queues the runs a stop cut short.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from guest_agent.memory.manager import MemoryManager
from guest_agent.prompts.manager import RoleRegistry
from guest_agent.protocol.research import ResearchMode, ResearchRequest
from guest_agent.protocol.security import Redaction
from guest_agent.research.broker import FetchBroker
from guest_agent.research.corpus import Corpus
from guest_agent.research.folder import RunFolder
from guest_agent.research.llm import ResearchModel
from guest_agent.research.memory import ResearchMemory
from guest_agent.research.modes import cast, subjects
from guest_agent.research.pipeline import Pipeline
from guest_agent.research.runs import ResearchRuns
from guest_agent.runtime import ModelRuntime

RUNS_DIR = Path("research") / "runs"


class NotResearchVM(RuntimeError):
    """Research was asked of a VM of another subsystem (HTTP 409)."""


class ResearchService:
    """The corpus, the broker and the runs of one research VM."""

    def __init__(self, data_dir: Path, runtime: ModelRuntime, roles: RoleRegistry,
                 memory: MemoryManager,
                 on_redaction: Callable[[Redaction], None] | None = None) -> None:
        self.runtime = runtime
        self.roles = roles
        self.memory = memory  # the VM's own memory: where runs keep their findings
        self.corpus = Corpus(data_dir, on_redaction)
        self.model = ResearchModel(runtime, roles)  # bound to each run by the pipeline
        self.runs = ResearchRuns(data_dir / RUNS_DIR, self._pipeline, check=self._check)
        self.broker = FetchBroker(on_wait=self.runs.waiting, on_answer=self.runs.waited)
        self.runs.on_cancel = self.broker.abandon

    def _check(self, request: ResearchRequest) -> None:
        """Refuse at once what would fail the run later: an unknown role, one subject."""
        cast(request, self.roles)
        if request.mode is ResearchMode.COMPARE:
            subjects(request)

    def _pipeline(self, folder: RunFolder) -> Pipeline:
        return Pipeline(folder, self.model, self.corpus, self.broker,
                        ResearchMemory(self.memory))

    def attach(self) -> None:
        """Bind the corpus to the loaded model, then resume the runs a stop cut short."""
        self.corpus.attach(self.runtime)
        self.runs.recover()

    def close(self) -> None:
        self.runs.close()
        self.corpus.close()
