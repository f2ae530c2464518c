"""The REST control API (FastAPI) over the orchestrator's service layer.

``somnus serve`` runs it; ``create_app`` builds it. Routes call ``VMService``,
``SwapEngine``, ``ChatService``, the image catalog and builder, and
``orchestrator.views`` exactly as the CLI does, so no logic lives here: only
HTTP, authentication, long operations in worker threads, and server-sent events.
"""

from api.app import create_app

__all__ = ["create_app"]
