"""Secret redaction, applied by both sides before text is stored or logged.

The host redacts dev-session events and its logs, the guest its memories and logs.
Each secret becomes ``[REDACTED:<kind>]``; where a secret follows a name (a header, a
``key = value`` pair, a URL's user) the name stays and only the value goes, so the
text still reads. The rules follow gitleaks and detect-secrets, tuned for precision:
prose that merely mentions a password or a token, UUIDs, git SHAs and digests stay.

Rules run in order, the specific formats first: a value already replaced by a marker
is not matched again by the generic rules after it, and redacting twice changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from guest_agent.protocol.security import Redaction

MARKER = "[REDACTED:{kind}]"
_NOT_MARKER = r"(?!\[REDACTED:)"


@dataclass(frozen=True)
class _Rule:
    """A kind of secret. With a ``secret`` group only that group is replaced; ``accept``
    may veto a match (a value that is a reference, not a secret)."""

    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[str], bool] | None = None


def _plausible_value(value: str) -> bool:
    """An unquoted value after ``password=``-like keys is a secret unless it reads as code
    or config: a plain identifier (``password = user_password``), a number, a path or a
    reference (``$VAR``, ``{{ var }}``, ``<your-token>``)."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z_.]*|\d+", value):
        return False
    return not value.startswith(("/", "~", "./", "$", "%", "{", "<", "["))


_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    # The whole block (its body stops at the next five dashes, so that many BEGIN lines
    # cost linear time); a key cut short, with no END line, loses its base64 lines.
    r"(?:(?:[^-]|-(?!----)){0,16384}-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"|(?:\s+[A-Za-z0-9+/=]{16,100}){0,256})"
)
_PASSWORD_KEYS = (
    r"passwd|password|pwd|secret(?:[_-]?key)?|api[_-]?key|apikey|client[_-]?secret"
    r"|(?:access|auth|refresh|api)?[_-]?token"
)

RULES: tuple[_Rule, ...] = (
    _Rule("private_key", _PEM),
    _Rule("anthropic_key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}")),
    _Rule(
        "openai_key",
        # sk-, sk-proj-, sk-svcacct-…; a digit is required, so hyphenated words do not match.
        re.compile(r"\bsk-(?:(?:proj|svcacct|admin)-)?(?=[A-Za-z_-]{0,200}[0-9])[A-Za-z0-9_-]{20,}"),
    ),
    _Rule("stripe_key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}")),
    _Rule("github_token", re.compile(
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})(?![A-Za-z0-9_])"
    )),
    _Rule("gitlab_token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}")),
    _Rule("slack_token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,250}")),
    _Rule("google_api_key", re.compile(r"\bAIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])")),
    _Rule("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")),
    _Rule("aws_secret_key", re.compile(
        r"(?i:aws_?secret(?:_?access)?_?key)[\"']?\s*[=:]\s*[\"']?"
        r"(?P<secret>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
    )),
    _Rule("jwt", re.compile(
        r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
    )),
    _Rule("bearer_token", re.compile(
        rf"(?i:\bauthorization[\"']?\s*[:=]\s*[\"']?bearer\s+){_NOT_MARKER}"
        r"(?P<secret>[A-Za-z0-9._~+/-]{8,}=*)"
    )),
    _Rule("url_credentials", re.compile(
        rf"\b[A-Za-z][A-Za-z0-9+.-]{{1,20}}://[^\s:/@]{{0,100}}:{_NOT_MARKER}"
        r"(?P<secret>[^\s/@]{1,200})@"
    )),
    _Rule(
        "password",
        re.compile(
            rf"(?i:\b(?:[A-Za-z0-9]+[_.-]){{0,3}}(?:{_PASSWORD_KEYS})\b)[\"']?\s*[:=]\s*"
            rf"(?:(?P<q>[\"']){_NOT_MARKER}(?P<quoted>[^\s\"',;)][^\"'\n]{{5,200}})(?P=q)"
            rf"|{_NOT_MARKER}(?P<secret>[^\s\"'`,;(){{}}\[\]<>]{{6,200}})"
            # The whole value or nothing: not a call's name, nor a cut-off prefix.
            rf"(?=[\s\"'`,;){{}}\[\]<>]|$))"
        ),
        accept=_plausible_value,
    ),
)


def _replace(rule: _Rule, counts: Counter[str]) -> Callable[[re.Match[str]], str]:
    def sub(m: re.Match[str]) -> str:
        group = next((g for g in ("quoted", "secret") if m.groupdict().get(g) is not None), None)
        if group is None:
            counts[rule.kind] += 1
            return MARKER.format(kind=rule.kind)
        if group == "secret" and rule.accept is not None and not rule.accept(m.group(group)):
            return m.group(0)
        counts[rule.kind] += 1
        start, end = m.start(group) - m.start(), m.end(group) - m.start()
        whole = m.group(0)
        return whole[:start] + MARKER.format(kind=rule.kind) + whole[end:]

    return sub


def redact(text: str) -> tuple[str, Redaction]:
    """``text`` with its secrets replaced, and what was replaced (kind -> count)."""
    counts: Counter[str] = Counter()
    for rule in RULES:
        text = rule.pattern.sub(_replace(rule, counts), text)
    return text, Redaction(kinds=dict(counts))


class RedactingFilter(logging.Filter):
    """Redacts each record's message, so that no log file or handler holds a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean, found = redact(message)
        if found.kinds:
            record.msg, record.args = clean, ()
        return True
