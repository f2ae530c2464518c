"""Secret redaction: every kind, the text that must stay, logs, memories, dev-session events.

The samples are assembled from pieces so that no secret-shaped literal sits in the repository
(secret scanners run on it); each still has the exact shape of the real thing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from guest_agent.memory.manager import MemoryManager, content_hash, new_record
from guest_agent.protocol import MemoryCreate
from guest_agent.protocol.redaction import RedactingFilter, redact
from guest_agent.protocol.security import Redaction
from guest_agent.runtime import Embeddings
from orchestrator.database import open_database
from orchestrator.devsessions import DevSessionEventType, DevSessionManager, DevSessionStore

B64 = "MIIEpAIBAAKCAQEA7bq" + "Xy0Zt3Lk9" * 6  # a base64 body line
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"

# kind -> (text holding one secret, the secret itself)
SAMPLES: dict[str, tuple[str, str]] = {
    "private_key": (
        "key:\n-----BEGIN OPENSSH " + "PRIVATE KEY-----\n" + B64 + "\n" + B64[:40]
        + "\n-----END OPENSSH " + "PRIVATE KEY-----\nthat was it",
        B64,
    ),
    "aws_access_key": ("export AWS_ACCESS_KEY_ID=" + "AKIA" + "Q3EXAMPLE7ZK2WUD", "Q3EXAMPLE7Z"),
    "aws_secret_key": ("aws_secret_access_key = " + AWS_SECRET, AWS_SECRET),
    "github_token": ("git clone https://github.com/o/r with " + "ghp_" + "a1B2" * 9, "a1B2" * 9),
    "gitlab_token": ("GITLAB=" + "glpat-" + "xY7kP2mQ9rT4vW1zA3bC", "xY7kP2mQ9rT4vW1zA3bC"),
    "slack_token": ("slack: " + "xoxb-" + "2412345678901-2412345678901-" + "Qa9Zx" * 5, "Qa9Zx"),
    "openai_key": ("OPENAI_API_KEY=" + "sk-" + "proj-" + "Ab3dE6gH9" * 6, "Ab3dE6gH9" * 6),
    "anthropic_key": ("use " + "sk-" + "ant-" + "api03-" + "Zq8_Yw7-Xv6" * 8, "Zq8_Yw7-Xv6" * 8),
    "google_api_key": ("maps key " + "AIza" + "SyD4k9Lm2Np5Qr8St1Uv4Wx7Yz0Ab3CdEf1", "k9Lm2Np5"),
    "stripe_key": ("stripe.api_key = " + "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLy"),
    "jwt": (
        "cookie=" + "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIn0"
        + ".dozjgNryP4J3jVmNHl0w5N",
        "dozjgNryP4J3jVmNHl0w5N",
    ),
    "bearer_token": (
        'curl -H "Authorization: Bearer ' + "9f8e7d6c5b4a3f2e1d0c" + '" https://api.example.com',
        "9f8e7d6c5b4a3f2e1d0c",
    ),
    "url_credentials": ("DATABASE_URL=postgres://app:" + "Sup3r-s3cret" + "@db:5432/app", "Sup3r"),
    "password": ('db:\n  password: "' + "correct horse 9" + '"\n  host: db', "correct horse"),
}

# What the redacted text keeps: the names, so that it still reads.
KEPT = {
    "aws_secret_key": "aws_secret_access_key = [REDACTED:aws_secret_key]",
    "bearer_token": "Authorization: Bearer [REDACTED:bearer_token]",
    "url_credentials": "postgres://app:[REDACTED:url_credentials]@db:5432/app",
    "password": 'password: "[REDACTED:password]"',
    "private_key": "key:\n[REDACTED:private_key]\nthat was it",
}

BENIGN = [
    "Please reset your password using the link we sent you.",
    "The token is in the header; the server reads it from there.",
    "Password: must be at least 8 characters long",
    "Token: required for every call",
    "request id 123e4567-e89b-12d3-a456-426614174000 failed",
    "commit 3f2a9c1b7d4e5f60718293a4b5c6d7e8f9012345 fixes the build",
    "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "password = get_password()",
    "api_key = os.environ['API_KEY']",
    "password = user_password",
    "token: str | None = None",
    "max_tokens = 1000000",
    "PWD=/home/alice/project",
    "Authorization: Bearer <token>",
    "Authorization: Bearer $TOKEN",
    "password: ${DB_PASSWORD}",
    "https://example.com:8080/path?page=2",
    "git@github.com:org/repo.git",
    "Install scikit-learn, then run task-20240101 again.",
    "-----BEGIN PUBLIC KEY-----\n" + B64 + "\n-----END PUBLIC KEY-----",
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "The secret: keep the answers short.",
]


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_kind_is_redacted(kind: str) -> None:
    text, secret = SAMPLES[kind]
    clean, found = redact(text)
    assert found.kinds == {kind: 1} and found.count == 1
    assert secret not in clean and f"[REDACTED:{kind}]" in clean
    if kind in KEPT:
        assert KEPT[kind] in clean


def test_several_secrets_are_counted_by_kind() -> None:
    text = "\n".join(SAMPLES[k][0] for k in ("github_token", "openai_key", "github_token"))
    _, found = redact(text)
    assert found.kinds == {"github_token": 2, "openai_key": 1}


@pytest.mark.parametrize("text", BENIGN)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == (text, Redaction())


def test_a_truncated_private_key_loses_its_body() -> None:
    text = "-----BEGIN RSA " + "PRIVATE KEY-----\n" + B64 + "\n" + B64 + "\n\nthen prose."
    clean, found = redact(text)
    assert clean == "[REDACTED:private_key]\n\nthen prose." and found.kinds == {"private_key": 1}


def test_redacting_twice_changes_nothing_more() -> None:
    text = "\n".join(t for t, _ in SAMPLES.values())
    once, first = redact(text)
    assert first.count == len(SAMPLES)
    assert redact(once) == (once, Redaction())


def test_the_log_filter_redacts_messages_and_their_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.redaction")
    log.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            log.info("connecting with %s", SAMPLES["url_credentials"][0])
            log.info("plain %d", 42)
    finally:
        log.filters.clear()
    first, second = caplog.records
    assert first.getMessage() == "connecting with DATABASE_URL=postgres://app:" \
        "[REDACTED:url_credentials]@db:5432/app"
    assert first.args == () and second.getMessage() == "plain 42"
    assert "Sup3r" not in caplog.text


class HashEmbedder:
    """A stand-in embedding model: a vector from the text's hash (memory needs one)."""

    embedding_model_id = "hash"
    embedding_dim = 8

    def embed(self, texts: Sequence[str], truncate: bool) -> Embeddings:
        raw = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], np.uint8) for t in texts]
        vectors = np.array(raw, dtype=np.float32) + 1.0
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return Embeddings(vectors, [1] * len(texts), [False] * len(texts))

    def fits_embedding(self, text: str, spare: int = 0) -> bool:
        return True


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[tuple[MemoryManager, list[Redaction]]]:
    heard: list[Redaction] = []
    manager = MemoryManager(tmp_path, on_redaction=heard.append)
    manager.attach(HashEmbedder())
    yield manager, heard
    manager.close()


def test_memories_are_stored_redacted_and_the_redaction_reported(
    memory: tuple[MemoryManager, list[Redaction]],
) -> None:
    manager, heard = memory
    text = "My deploy token is " + "ghp_" + "a1B2" * 9 + " (rotate it monthly)."
    added = manager.add(MemoryCreate(content=text))
    clean = "My deploy token is [REDACTED:github_token] (rotate it monthly)."
    assert added.memory.content == clean and added.redacted == {"github_token": 1}
    stored = manager.get_memory_by_id(added.memory.memory_id)
    assert stored.content == clean and stored.content_hash == content_hash(clean)
    assert heard == [Redaction(kinds={"github_token": 1})]
    # The same secret again is the same memory; a memory without one reports nothing.
    again = manager.add(MemoryCreate(content=text), background=True)
    assert again.deduplicated and again.redacted == {"github_token": 1}
    plain = manager.add(MemoryCreate(content="The dog is called Biscuit."))
    assert plain.redacted == {} and len(heard) == 2


def test_imported_memories_are_redacted_too(
    memory: tuple[MemoryManager, list[Redaction]],
) -> None:
    manager, heard = memory
    secret = SAMPLES["aws_secret_key"][0]
    record = new_record(MemoryCreate(content=secret), 1000.0)
    line = json.dumps(record.model_dump(mode="json"))
    assert manager.import_lines([line]).imported == 1
    stored = manager.get_memory_by_id(record.memory_id)
    assert stored.content == "aws_secret_access_key = [REDACTED:aws_secret_key]"
    assert AWS_SECRET not in "".join(manager.export_lines())
    assert heard == [Redaction(kinds={"aws_secret_key": 1})]


def test_dev_session_events_are_stored_redacted(tmp_path: Path) -> None:
    engine = open_database(tmp_path / "somnus.db")
    try:
        manager = DevSessionManager(DevSessionStore(engine))
        sid = manager.create_session("alice", title="keys").dev_session_id
        key = "sk-" + "proj-" + "Ab3dE6gH9" * 6
        manager.record_feedback(sid, f"my key is {key}, please use it")
        again = DevSessionManager(DevSessionStore(engine)).get_session(sid)
        (event,) = [e for e in again.event_log if e.event_type is DevSessionEventType.USER_FEEDBACK]
        assert event.content == "my key is [REDACTED:openai_key], please use it"
        assert event.metadata["redacted"] == {"openai_key": 1}
        assert key not in json.dumps(again.model_dump(mode="json"))
    finally:
        engine.dispose()
