"""Research on the host: runs in the research VM followed from here, the fetch proxy
through which alone they reach the web, the host's record of runs and reports."""

from orchestrator.research.export import ReportFormat, render
from orchestrator.research.proxy import FetchProxy, normalize_host
from orchestrator.research.service import AllowedHost, FetchLogEntry, ResearchService
from orchestrator.research.tables import FetchLogKind, ResearchStore

__all__ = [
    "AllowedHost",
    "FetchLogEntry",
    "FetchLogKind",
    "FetchProxy",
    "ReportFormat",
    "ResearchService",
    "ResearchStore",
    "normalize_host",
    "render",
]
