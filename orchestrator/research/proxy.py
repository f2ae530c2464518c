"""The research fetch proxy: the only way anything reaches the network for research.

The research VM has no network. Its runs queue ``FetchRequest``s; whoever follows a run
(the CLI while it follows, ``somnus serve`` in a thread) takes the queue and answers
each through :class:`FetchProxy`, which

- fetches only from hosts on the user's allow-list (``somnus research allow HOST``),
  checked for the URL and again for every redirect hop (followed here, at most 5);
- honours each host's robots.txt (fetched through the same checks, cached per host;
  a robots.txt that cannot be had allows everything unless it answers 401 or 403);
- caps each response's size and the whole request's time;
- caches responses on disk by the SHA-256 of the URL (a hit touches no network);
- logs every request, refused ones too (``research_fetch_log``);
- indexes the HTML and text pages it fetches (``research_pages``), which is what
  ``search`` ranks with BM25 when no SearXNG endpoint is configured
  (``SOMNUS_RESEARCH_SEARCH_URL``); ``crawl`` fills that index for a host.

A host is written ``example.org`` or ``127.0.0.1:8765``: lowercase, with the port only
when it is not the scheme's default. Allowing ``example.org`` allows it on ports 80
and 443, not its subdomains.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import NoReturn
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import httpx

from core.config import Settings
from core.errors import GuestError, GuestNotFound, InvalidInput
from core.types import Progress
from guest_agent.protocol.research import (
    MAX_DOCUMENT_BYTES,
    FetchKind,
    FetchRequest,
    FetchResult,
    SearchResult,
)
from orchestrator.agent_client import AgentClient
from orchestrator.research.tables import FetchLogKind, FetchLogRow, ResearchStore

log = logging.getLogger(__name__)

USER_AGENT = "SomnusResearch/0.1"
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}
CACHE_TTL_S = 7 * 86400.0  # a cached page is fetched again after a week
ROBOTS_TTL_S = 3600.0
MAX_CRAWL_DELAY_S = 10.0  # a robots.txt Crawl-delay is honoured up to this
POLL_WAIT_S = 10  # the long poll of the research VM's fetch queue
PARALLEL_FETCHES = 4  # requests of one poll answered at once
INDEXED_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "text/markdown")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


# -- hosts --------------------------------------------------------------------------------


def _bad_host(text: str) -> InvalidInput:
    return InvalidInput(f"'{text.strip()[:200]}' is not a host: give example.org, "
                        "127.0.0.1:8765 or a URL")


def normalize_host(text: str) -> str:
    """``example.org``, ``Example.org:8080``, ``https://example.org/page`` as the allow-list
    writes them: ``example.org``, ``example.org:8080``, ``example.org``."""
    raw = text.strip()
    try:
        parts = urlsplit(raw if "://" in raw else "//" + raw)
        port = parts.port
    except ValueError:  # a bad port, an unclosed IPv6 bracket
        raise _bad_host(text) from None
    if not raw or parts.scheme not in ("", "http", "https"):
        raise _bad_host(text)
    host = (parts.hostname or "").rstrip(".")
    try:
        host = _checked_hostname(host)
    except ValueError:
        raise _bad_host(text) from None
    default = DEFAULT_PORTS.get(parts.scheme) if parts.scheme else None
    if port is not None and (port == default or (not parts.scheme and port in (80, 443))):
        port = None
    return f"{host}:{port}" if port is not None else host


def _checked_hostname(host: str) -> str:
    """A lowercase DNS name (IDNA for non-ASCII), an IPv4 or a bracketed IPv6 address."""
    if not host:
        raise ValueError("empty")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    ascii_host = host.encode("idna").decode("ascii").lower()
    if len(ascii_host) > 253 or not all(_LABEL.match(label) for label in ascii_host.split(".")):
        raise ValueError(host)
    return ascii_host


def url_host(url: str) -> str:
    """The allow-list's key of an http(s) URL; InvalidInput for any other URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        raise InvalidInput(f"'{url[:200]}' is not an http or https URL")
    return normalize_host(f"{parts.scheme}://{parts.netloc}")


# -- pages ----------------------------------------------------------------------------------


_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object",
                      "canvas", "math"})
_BLOCKS = frozenset({"p", "div", "br", "li", "ul", "ol", "dd", "dt", "dl", "tr", "table",
                     "section", "article", "header", "footer", "nav", "aside", "main", "pre",
                     "blockquote", "figure", "figcaption", "form", "hr", "h1", "h2", "h3",
                     "h4", "h5", "h6", "title", "td", "th"})


class _Stripper(HTMLParser):
    """An HTML page's title, visible text (paragraphs on lines of their own) and links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.parts: list[str] = []
        self.links: list[str] = []
        self._skipping = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skipping += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED and self._skipping:
            self._skipping -= 1
        elif tag == "title":
            self._in_title = False
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if self._in_title:
            self.title.append(data)
        else:
            self.parts.append(data)


@dataclass(frozen=True)
class Page:
    title: str
    text: str
    links: list[str] = field(default_factory=list)


def extract_html(html: str) -> Page:
    """Title, visible text and ``<a href>`` links of an HTML page (stdlib parser, lenient)."""
    parser = _Stripper()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError:  # html.parser gives up on some malformed markup: keep what it read
        pass
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    text = "\n".join(line for line in lines if line)
    return Page(title=" ".join("".join(parser.title).split()), text=text, links=parser.links)


def decode(body: bytes, content_type: str | None) -> str:
    """The text of a body: the charset its type names, a ``<meta charset>``, or UTF-8."""
    charset = None
    if content_type:
        named = re.search(r"charset=[\"']?([\w.:-]+)", content_type, re.I)
        charset = named.group(1) if named else None
    if charset is None:
        meta = re.search(rb"<meta[^>]+charset=[\"']?([\w.:-]+)", body[:4096], re.I)
        charset = meta.group(1).decode("ascii") if meta else None
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def is_html(content_type: str | None) -> bool:
    return media_type(content_type) in ("text/html", "application/xhtml+xml")


# -- fetching -------------------------------------------------------------------------------


@dataclass
class Fetched:
    """A response as the cache keeps it."""

    url: str  # asked for
    final_url: str  # after redirects
    status: int
    content_type: str | None
    body: bytes
    fetched_at: float


class Refused(Exception):
    """A request the proxy will not make or finish; the message is the one line the run sees."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class _Request:
    """What each log row of one fetch shares."""

    kind: FetchLogKind
    vm: str | None
    run_id: str | None
    deadline: float


class FetchProxy:
    """Allow-listed, robots-respecting, size- and time-capped, cached, logged fetches."""

    def __init__(self, store: ResearchStore, cache_dir: Path, settings: Settings,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.settings = settings
        self.max_bytes = min(settings.research_proxy_max_bytes, MAX_DOCUMENT_BYTES)
        self.timeout_s = settings.research_proxy_timeout_s
        self.poll_wait_s = POLL_WAIT_S
        self._transport = transport
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._robots: dict[str, tuple[float, RobotFileParser]] = {}

    @property
    def client(self) -> httpx.Client:
        """One client for every request, made on first use (most commands never fetch)."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(headers={"User-Agent": USER_AGENT},
                                            follow_redirects=False, transport=self._transport)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- the allow-list -------------------------------------------------------------------

    def allow(self, host: str) -> str:
        key = normalize_host(host)
        self.store.allow(key)
        return key

    def disallow(self, host: str) -> bool:
        """Take a host off the list; False if it was not on it."""
        return self.store.disallow(normalize_host(host))

    def allowed(self) -> list[str]:
        return [row.host for row in self.store.allowed()]

    def is_allowed(self, host: str) -> bool:
        return self.store.is_allowed(host)

    # -- fetch ----------------------------------------------------------------------------

    def fetch(self, url: str, vm: str | None = None, run_id: str | None = None,
              kind: FetchLogKind = FetchLogKind.FETCH, index: bool = True) -> FetchResult:
        """A page, or ``ok`` False with the one-line reason (every step logged); an HTML or
        text page goes into the crawl index too (unless ``index`` is False)."""
        request = _Request(kind, vm, run_id, time.monotonic() + self.timeout_s)
        try:
            host = url_host(url)
        except InvalidInput as exc:
            self._log(request, url, None, allowed=False, reason=exc.message)
            return FetchResult(ok=False, error=exc.message)
        if not self.is_allowed(host):
            return self._refuse(request, url, host)
        cached = self._cached(url)
        if cached is not None:
            self._log(request, url, host, allowed=True, status=cached.status,
                      size=len(cached.body), cached=True)
            return self._result(cached, cached=True)
        try:
            fetched = self._follow(url, request, robots=True)
        except Refused as exc:
            return FetchResult(ok=False, error=exc.message, url=url, status=exc.status)
        if not 200 <= fetched.status < 300:
            return FetchResult(ok=False, error=f"{fetched.final_url} answered HTTP "
                               f"{fetched.status}", url=fetched.final_url, status=fetched.status,
                               content_type=fetched.content_type)
        self._cache(fetched)
        result = self._result(fetched, cached=False)
        if index:
            self._index(fetched.final_url, fetched.content_type, fetched.body, result.title)
        return result

    def _refuse(self, request: _Request, url: str, host: str) -> FetchResult:
        message = (f"host '{host}' is not on the research allow-list: "
                   f"'somnus research allow {host}'")
        self._log(request, url, host, allowed=False, reason=message)
        return FetchResult(ok=False, error=message, url=url)

    def _follow(self, url: str, request: _Request, robots: bool) -> Fetched:
        """GET ``url``, following redirects by hand: each hop allowed (and robots-checked)."""
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                host = url_host(current)
            except InvalidInput as exc:
                self._log(request, current, None, allowed=False, reason=exc.message)
                raise Refused(f"{url} redirects to {exc.message}") from None
            if not self.is_allowed(host):
                refusal = self._refuse(request, current, host)
                where = "" if current == url else f"{url} redirects to {current}: "
                raise Refused(where + (refusal.error or ""))
            if robots and not self._robots_allow(current, request):
                path = urlsplit(current).path or "/"
                message = f"robots.txt of '{host}' disallows {path} for {USER_AGENT}"
                self._log(request, current, host, allowed=False, reason=message)
                raise Refused(message)
            status, headers, body = self._get(current, request, host)
            location = headers.get("location")
            if status in REDIRECTS and location:
                current = urljoin(current, location)
                continue
            return Fetched(url=url, final_url=current, status=status,
                           content_type=headers.get("content-type"), body=body,
                           fetched_at=time.time())
        raise Refused(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, request: _Request, host: str,
             reason: str | None = None) -> tuple[int, httpx.Headers, bytes]:
        """One GET, its body streamed up to the size cap, within the request's deadline."""
        remaining = request.deadline - time.monotonic()
        if remaining <= 0:
            return self._failed(request, url, host, f"took over {self.timeout_s:g} s")
        size, chunks = 0, []
        status: int | None = None
        try:
            with self.client.stream("GET", url, timeout=httpx.Timeout(remaining)) as response:
                status = response.status_code
                if status in REDIRECTS:
                    self._log(request, url, host, allowed=True, status=status, reason=reason)
                    return status, response.headers, b""
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    return self._failed(request, url, host,
                                        f"larger than {self.max_bytes} bytes", status)
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        return self._failed(request, url, host,
                                            f"larger than {self.max_bytes} bytes", status, size)
                    if time.monotonic() > request.deadline:
                        return self._failed(request, url, host,
                                            f"took over {self.timeout_s:g} s", status, size)
                    chunks.append(chunk)
                headers = response.headers
        except httpx.HTTPError as exc:
            why = " ".join(str(exc).split())[:200] or type(exc).__name__
            return self._failed(request, url, host, why, status, size)
        self._log(request, url, host, allowed=True, status=status, size=size, reason=reason)
        return status, headers, b"".join(chunks)

    def _failed(self, request: _Request, url: str, host: str, why: str,
                status: int | None = None, size: int = 0) -> NoReturn:
        self._log(request, url, host, allowed=True, status=status, size=size, reason=why)
        raise Refused(f"{url}: {why}", status)

    # -- robots.txt -----------------------------------------------------------------------

    def _robots_allow(self, url: str, request: _Request) -> bool:
        return self._robots_for(url, request).can_fetch(USER_AGENT, url)

    def _robots_for(self, url: str, request: _Request) -> RobotFileParser:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            known = self._robots.get(origin)
        if known is not None and time.monotonic() - known[0] < ROBOTS_TTL_S:
            return known[1]
        parser = RobotFileParser(origin + "/robots.txt")
        robots = _Request(request.kind, request.vm, request.run_id, request.deadline)
        try:
            status, body = self._robots_txt(origin + "/robots.txt", robots)
        except Refused:  # unreachable, too big, redirected off the list: no rules
            status, body = 404, b""
        if status in (401, 403) or status >= 500:
            # RFC 9309: a server error means "disallow all"; robotparser.read also
            # disallows on 401/403 (other 4xx: no rules, allow all).
            parser.disallow_all = True  # type: ignore[attr-defined]
        elif 200 <= status < 300:
            parser.parse(decode(body, "text/plain").splitlines())
        else:
            parser.allow_all = True  # type: ignore[attr-defined]
        with self._lock:
            self._robots[origin] = (time.monotonic(), parser)
        return parser

    def _robots_txt(self, url: str, request: _Request) -> tuple[int, bytes]:
        """robots.txt through the same checks (each hop allowed, size cap), no robots check."""
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                host = url_host(current)
            except InvalidInput as exc:
                raise Refused(exc.message) from None
            if not self.is_allowed(host):
                raise Refused(f"robots.txt redirects to '{host}', not on the allow-list")
            status, headers, body = self._get(current, request, host, reason="robots.txt")
            location = headers.get("location")
            if status in REDIRECTS and location:
                current = urljoin(current, location)
                continue
            return status, body
        raise Refused("robots.txt: too many redirects")

    def crawl_delay(self, url: str) -> float:
        with self._lock:
            known = self._robots.get(f"{urlsplit(url).scheme}://{urlsplit(url).netloc}")
        delay = known[1].crawl_delay(USER_AGENT) if known else None
        return min(float(delay), MAX_CRAWL_DELAY_S) if delay else 0.0

    # -- the cache ------------------------------------------------------------------------

    def _cache_paths(self, url: str) -> tuple[Path, Path]:
        key = hashlib.sha256(url.encode()).hexdigest()
        folder = self.cache_dir / key[:2]
        return folder / f"{key}.json", folder / f"{key}.body"

    def _cached(self, url: str) -> Fetched | None:
        meta_path, body_path = self._cache_paths(url)
        try:
            meta = json.loads(meta_path.read_text())
            if meta["url"] != url or time.time() - float(meta["fetched_at"]) > CACHE_TTL_S:
                return None
            return Fetched(url=url, final_url=meta["final_url"], status=int(meta["status"]),
                           content_type=meta.get("content_type"), body=body_path.read_bytes(),
                           fetched_at=float(meta["fetched_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _cache(self, fetched: Fetched) -> None:
        meta_path, body_path = self._cache_paths(fetched.url)
        meta = {"url": fetched.url, "final_url": fetched.final_url, "status": fetched.status,
                "content_type": fetched.content_type, "fetched_at": fetched.fetched_at}
        try:
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            for path, data in ((body_path, fetched.body), (meta_path, json.dumps(meta).encode())):
                partial = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}")
                partial.write_bytes(data)
                os.replace(partial, path)
        except OSError as exc:
            log.warning("research cache: %s not cached: %s", fetched.url, exc)

    def _result(self, fetched: Fetched, cached: bool) -> FetchResult:
        title = None
        if is_html(fetched.content_type):
            title = extract_html(decode(fetched.body, fetched.content_type)).title or None
        return FetchResult(ok=True, url=fetched.final_url, status=fetched.status,
                           content_type=fetched.content_type, title=title,
                           body_b64=base64.b64encode(fetched.body).decode("ascii"),
                           cached=cached)

    def _index(self, url: str, content_type: str | None, body: bytes,
               title: str | None = None) -> Page | None:
        """Put an HTML or text page into the crawl index; its extracted page."""
        kind = media_type(content_type)
        if kind not in INDEXED_TYPES:
            return None
        text = decode(body, content_type)
        page = extract_html(text) if is_html(kind) else Page(title="", text=text)
        try:
            self.store.save_page(url, url_host(url), title or page.title, page.text)
        except Exception as exc:  # the index is a convenience: the fetch itself succeeded
            log.warning("research index: %s not indexed: %s", url, exc)
        return page

    # -- search ---------------------------------------------------------------------------

    def search(self, query: str, limit: int = 5, vm: str | None = None,
               run_id: str | None = None) -> FetchResult:
        """Results on allowed hosts only: from the SearXNG endpoint if one is configured,
        else from the crawl index (BM25)."""
        request = _Request(FetchLogKind.SEARCH, vm, run_id, time.monotonic() + self.timeout_s)
        hosts = self.allowed()
        if not hosts:
            message = "the research allow-list is empty: 'somnus research allow HOST'"
            self._log(request, query, None, allowed=False, reason=message)
            return FetchResult(ok=False, error=message)
        limit = max(1, min(limit, 50))
        if self.settings.research_search_url:
            return self._searxng(query, limit, request, set(hosts))
        hits = self.store.search_pages(query, hosts, limit)
        self._log(request, query, None, allowed=True,
                  reason=f"crawl index: {len(hits)} results")
        return FetchResult(ok=True, results=[SearchResult(url=h.url, title=h.title,
                                                          snippet=h.snippet) for h in hits])

    def _searxng(self, query: str, limit: int, request: _Request,
                 hosts: set[str]) -> FetchResult:
        endpoint = self.settings.research_search_url or ""
        engine = urlsplit(endpoint).netloc or None
        try:
            response = self.client.get(endpoint, params={"q": query, "format": "json"},
                                       timeout=self.timeout_s)
            found = response.json().get("results", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            why = " ".join(str(exc).split())[:200] or type(exc).__name__
            self._log(request, query, engine, allowed=True, reason=f"search failed: {why}")
            return FetchResult(ok=False, error=f"the search engine at {endpoint} failed: {why}")
        if response.status_code != 200:
            self._log(request, query, engine, allowed=True, status=response.status_code,
                      reason="search failed")
            return FetchResult(ok=False, error=f"the search engine at {endpoint} answered "
                               f"HTTP {response.status_code}")
        results: list[SearchResult] = []
        for item in found if isinstance(found, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                continue
            try:
                if url_host(item["url"]) not in hosts:
                    continue
            except InvalidInput:
                continue
            results.append(SearchResult(url=item["url"], title=str(item.get("title") or ""),
                                        snippet=str(item.get("content") or "")))
            if len(results) >= limit:
                break
        self._log(request, query, engine, allowed=True, status=response.status_code,
                  size=len(response.content),
                  reason=f"searxng: {len(results)} of {len(found)} results on allowed hosts")
        return FetchResult(ok=True, results=results)

    # -- crawl ----------------------------------------------------------------------------

    def crawl(self, host_or_url: str, max_pages: int = 200,
              progress: Progress | None = None) -> int:
        """Index up to ``max_pages`` HTML pages of one (allowed) host, breadth first from
        the URL given (or ``http://HOST/``), robots.txt honoured; the number indexed."""
        start = host_or_url.strip()
        if "://" not in start:
            start = f"http://{normalize_host(start)}/"
        host = url_host(start)
        if not self.is_allowed(host):
            raise InvalidInput(f"host '{host}' is not on the research allow-list: "
                               f"'somnus research allow {host}'")
        queue, seen, indexed = deque([urldefrag(start).url]), {urldefrag(start).url}, 0
        contents: set[bytes] = set()  # one page under two URLs (/ and /index.html) counts once
        while queue and indexed < max_pages:
            url = queue.popleft()
            result = self.fetch(url, kind=FetchLogKind.CRAWL, index=False)
            if not result.ok or not is_html(result.content_type) or result.body_b64 is None:
                continue
            body = base64.b64decode(result.body_b64)
            digest = hashlib.sha256(body).digest()
            if digest in contents:
                continue
            contents.add(digest)
            final = result.url or url
            page = self._index(final, result.content_type, body, result.title)
            indexed += 1
            if progress:
                progress(f"{indexed}: {final}")
            for href in (page.links if page else []):
                link = urldefrag(urljoin(final, href.strip())).url
                try:
                    same = url_host(link) == host
                except InvalidInput:
                    continue
                if same and link not in seen:
                    seen.add(link)
                    queue.append(link)
            if queue and not result.cached and (delay := self.crawl_delay(url)):
                time.sleep(delay)
        return indexed

    # -- serving a research VM's queue --------------------------------------------------

    def answer(self, request: FetchRequest, vm: str | None) -> FetchResult:
        """The answer to one queued request; never raises (a bug here must not leave a
        run waiting for an answer that never comes)."""
        try:
            if request.kind is FetchKind.SEARCH:
                return self.search(request.query or "", request.limit, vm, request.run_id)
            return self.fetch(request.url or "", vm, request.run_id)
        except Exception as exc:
            log.exception("research fetch %s of run %s failed", request.fetch_id,
                          request.run_id)
            return FetchResult(ok=False, error=f"the host's fetch proxy failed: "
                               f"{type(exc).__name__}: {exc}"[:500])

    def serve_round(self, agent: AgentClient, vm: str, wait_s: int | None = None) -> int:
        """One long poll of the VM's queue and the answers to what it held; how many.
        Raises GuestError when the agent cannot be asked."""
        pending = agent.research_fetches(wait_s=self.poll_wait_s if wait_s is None else wait_s)
        if not pending.requests:
            return 0

        def one(request: FetchRequest) -> None:
            result = self.answer(request, vm)
            try:
                agent.research_answer(request.fetch_id, result)
            except GuestNotFound:
                log.info("research fetch %s: no run waits for it any more", request.fetch_id)
            except GuestError as exc:
                log.warning("research fetch %s: answer not delivered: %s", request.fetch_id, exc)

        with ThreadPoolExecutor(max_workers=PARALLEL_FETCHES,
                                thread_name_prefix="research-fetch") as pool:
            list(pool.map(one, pending.requests))
        return len(pending.requests)

    def serve(self, agent: AgentClient, vm: str, stop: threading.Event,
              on_error: Callable[[BaseException], None] | None = None) -> None:
        """Answer the VM's fetch queue until ``stop`` is set (a follower's thread). An agent
        that does not answer is asked again a second later; nothing raises out of here."""
        while not stop.is_set():
            try:
                self.serve_round(agent, vm)
            except Exception as exc:
                if isinstance(exc, GuestError):
                    log.info("research fetch queue of '%s': %s", vm, exc)
                else:
                    log.exception("research fetch queue of '%s' failed", vm)
                if on_error is not None:
                    on_error(exc)
                stop.wait(1.0)

    # -- the log ----------------------------------------------------------------------------

    def _log(self, request: _Request, target: str, host: str | None, *, allowed: bool,
             status: int | None = None, size: int = 0, cached: bool = False,
             reason: str | None = None) -> None:
        try:
            self.store.log(FetchLogRow(vm=request.vm, run_id=request.run_id, kind=request.kind,
                                       target=target[:2000], host=host, allowed=allowed,
                                       status=status, bytes=size, cached=cached,
                                       reason=reason[:500] if reason else None))
        except Exception:  # the log must never stop a fetch
            log.exception("research fetch log: %s not recorded", target[:200])
