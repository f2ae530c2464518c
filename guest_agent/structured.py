"""Structured output: a ``response_format`` becomes the grammar llama.cpp decodes under.

llama-cpp-python converts JSON Schema to GBNF itself (``json_schema_to_gbnf``, the port
of llama.cpp's converter); only tokens the grammar allows are sampled, so even a
135M-parameter model answers JSON that parses and follows the schema (unless it runs
out of ``max_tokens`` first: ``finish_reason`` then says ``length``). Raw GBNF from a
client is not accepted: a grammar llama.cpp cannot parse fails inside the sampler.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Protocol

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf
from pydantic import ValidationError

from guest_agent.prompts.stack import Tokenizer
from guest_agent.protocol import AIModelConfiguration, ResponseFormat
from guest_agent.runtime import Piece, SamplingParams

MAX_ATTEMPTS = 3  # open_deep_research's structured-output retries
RETRY_TEMPERATURE = 0.7  # a greedy answer that failed would fail again: sample instead

# The converter's string character allows raw control characters, which JSON forbids: a
# small model writing a newline inside a string would fail to parse (and a research
# call would spend a retry on it).
_ANY_CHAR = '[^"\\\\]'
_JSON_CHAR = '[^"\\\\\\x7F\\x00-\\x1F]'


class ChatRuntime(Tokenizer, Protocol):
    """What structured calls need from the model runtime (``ModelRuntime``)."""

    @property
    def config(self) -> AIModelConfiguration: ...

    @property
    def n_ctx(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompt_tokens: list[int], params: SamplingParams) -> Iterator[Piece]: ...


def json_grammar(schema_json: str) -> str:
    """The GBNF for a JSON schema, its strings without raw control characters."""
    return json_schema_to_gbnf(schema_json).replace(_ANY_CHAR, _JSON_CHAR)


class BadSchema(ValueError):
    """The schema cannot be turned into a grammar."""


def grammar_for(response_format: ResponseFormat | None) -> str | None:
    """The GBNF grammar the answer must follow; None: free text."""
    if response_format is None or response_format.type == "text":
        return None
    schema = response_format.schema_
    if schema is None:
        if response_format.type == "json_schema":
            raise BadSchema("response_format json_schema needs json_schema.schema")
        return JSON_GBNF
    try:
        return json_grammar(json.dumps(schema))
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        # The converter asserts on what it does not know ("Unrecognized schema: ...").
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadSchema(f"response_format schema is not supported: {detail}"[:300]) from None


def attempt_params(cfg: AIModelConfiguration, attempt: int, max_tokens: int,
                   stops: list[str], grammar: str) -> SamplingParams:
    """Decoding for the ``attempt``-th try (from 1) at a structured answer: greedy first,
    then sampled with a new seed each time."""
    return SamplingParams(
        temperature=0.0 if attempt == 1 else RETRY_TEMPERATURE,
        top_p=cfg.top_p, top_k=cfg.top_k, max_tokens=max_tokens,
        repeat_penalty=cfg.repetition_penalty, seed=cfg.seed + attempt - 1,
        stop=stops, grammar=grammar)


def why_refused(exc: ValidationError, pieces: list[Piece]) -> str:
    """One line saying why a structured answer was refused."""
    if pieces and pieces[-1].finish_reason == "length":
        return "the answer ran out of max_tokens"
    errors = exc.errors()
    if not errors:
        return "invalid answer"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}"[:200] if where else first["msg"][:200]
