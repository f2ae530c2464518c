"""The API's bearer token: made on first use, kept 0600 under ``settings.home``.

The running server re-reads the file when it changes, so ``somnus api token
--rotate`` locks the old token out at once, without a restart.
"""

from __future__ import annotations

import hmac
import threading
from pathlib import Path

from api import web_login
from core.config import Settings
from orchestrator import credentials

TOKEN_FILE = "api-token"


def token_path(settings: Settings) -> Path:
    return settings.home / TOKEN_FILE


def ensure_token(settings: Settings) -> str:
    """The current token, generated (256 bits) when there is none yet."""
    path = token_path(settings)
    if not path.exists() or not path.read_text().strip():
        return rotate_token(settings)
    return path.read_text().strip()


def rotate_token(settings: Settings) -> str:
    """Replace the token; the old one stops working immediately."""
    token = credentials.new_token()
    credentials.write_private(token_path(settings), token.encode())
    return token


class TokenCheck:
    """Compares presented tokens with the file's, re-reading it only when it changed."""

    def __init__(self, settings: Settings) -> None:
        self.path = token_path(settings)
        ensure_token(settings)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._token = b""

    def _current(self) -> bytes:
        st = self.path.stat()
        with self._lock:
            if self._seen != (st.st_mtime_ns, st.st_size):
                self._token = self.path.read_bytes().strip()
                self._seen = (st.st_mtime_ns, st.st_size)
            return self._token

    def digest(self) -> str | None:
        """A digest of the current token (what a browser session was made with); None when
        the token file is gone."""
        try:
            token = self._current()
        except OSError:
            return None
        return web_login.token_digest(token) if token else None

    def matches(self, presented: str) -> bool:
        """Whether ``presented`` is the token (constant-time compare)."""
        try:
            token = self._current()
        except OSError:  # token file removed: nobody gets in until it exists again
            return False
        return bool(token) and hmac.compare_digest(presented.strip().encode(), token)

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (constant-time compare)."""
        if not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        return scheme.lower() == "bearer" and bool(presented.strip()) and self.matches(presented)
