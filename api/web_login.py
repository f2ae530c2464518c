"""The app's browser sessions: login with the API token, then an HttpOnly cookie.

The page never holds the API token. Logging in (with the token, or with a one-time
link that ``somnus app`` asks the server for) makes a session: a random id in an
``HttpOnly; SameSite=Strict`` cookie and, per session, a CSRF token that the page
sends back in ``X-CSRF-Token`` on every state-changing request (the synchronizer
token pattern; SameSite alone does not cover old browsers or same-site subdomains).

Sessions live in the server's memory: a restarted server asks the user to log in
again, which is the safe direction. Each session remembers a digest of the token it
was made with, so ``somnus api token --rotate`` logs every browser out as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from starlette.requests import cookie_parser

COOKIE = "somnus_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600.0
LINK_TTL_S = 300.0
# Methods that change nothing: they need the cookie but no CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_digest(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


@dataclass(frozen=True)
class WebSession:
    id: str
    csrf: str
    token_digest: str
    expires_at: float


class WebSessions:
    """Sessions and one-time login links of one server process (thread-safe)."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, link_ttl_s: float = LINK_TTL_S) -> None:
        self.ttl_s = ttl_s
        self.link_ttl_s = link_ttl_s
        self._lock = threading.Lock()
        self._sessions: dict[str, WebSession] = {}
        self._links: dict[str, tuple[str, float]] = {}  # code -> (token digest, expiry)

    def open(self, digest: str) -> WebSession:
        """A new session for a browser that proved it knows the token of ``digest``."""
        session = WebSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), digest,
                             time.time() + self.ttl_s)
        with self._lock:
            self._drop_expired()
            self._sessions[session.id] = session
        return session

    def find(self, session_id: str | None, digest: str) -> WebSession | None:
        """The live session of a cookie, if it was made with the current token."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at < time.time() or session.token_digest != digest:
                del self._sessions[session_id]
                return None
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def new_link(self, digest: str) -> tuple[str, float]:
        """A one-time login code, valid for ``link_ttl_s``; returns it and its expiry."""
        code = secrets.token_urlsafe(24)
        expires = time.time() + self.link_ttl_s
        with self._lock:
            self._drop_expired()
            self._links[code] = (digest, expires)
        return code, expires

    def redeem(self, code: str, digest: str) -> WebSession | None:
        """Spend a one-time code: a session, or None if it is unknown, used or expired."""
        with self._lock:
            found = self._links.pop(code, None)
        if found is None or found[1] < time.time() or found[0] != digest:
            return None
        return self.open(digest)

    def _drop_expired(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires_at < now]:
            del self._sessions[key]
        for key in [k for k, (_, exp) in self._links.items() if exp < now]:
            del self._links[key]


def csrf_ok(session: WebSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(),
                                                         session.csrf.encode())


def cookie_header(session: WebSession | None, secure: bool) -> str:
    """The ``Set-Cookie`` value that sets (or, with None, clears) the session cookie."""
    value, age = (session.id, int(session.expires_at - time.time())) if session else ("", 0)
    return (f"{COOKIE}={value}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict"
            + ("; Secure" if secure else ""))


def cookie_value(cookie_header_value: str | None) -> str | None:
    """The session id in a ``Cookie`` request header (parsed as Starlette parses it)."""
    return cookie_parser(cookie_header_value or "").get(COOKIE) or None
