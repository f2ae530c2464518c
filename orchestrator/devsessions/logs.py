"""Logging with the dev session and user ids on every record."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from orchestrator.devsessions.models import DevSessionHeader

logger = logging.getLogger("orchestrator.devsessions")


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Puts ``dev_session_id`` and ``user_id`` on each record, as attributes and in the text."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]
                ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = {**(self.extra or {}), **kwargs.get("extra", {})}
        kwargs["extra"] = extra
        return f"[dev_session={extra['dev_session_id']} user={extra['user_id']}] {msg}", kwargs


def session_log(session: DevSessionHeader) -> SessionLog:
    return SessionLog(logger, {"dev_session_id": str(session.dev_session_id),
                               "user_id": session.user_id})
