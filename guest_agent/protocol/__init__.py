"""The host <-> guest agent protocol, defined once and imported by both sides.

The agent listens on ``AGENT_PORT`` inside the guest; the host reaches it only
through a QEMU user-mode port forward on 127.0.0.1. Every endpoint
requires ``Authorization: Bearer <token>``: the per-VM token that the
orchestrator generated and delivered in the cloud-init seed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from guest_agent.protocol.security import ScreeningResult

AGENT_PORT = 8700
AGENT_CONFIG_PATH = "/etc/somnus/agent.json"
AUTH_HEADER = "Authorization"
DEFAULT_DATA_DIR = "/var/lib/somnus-agent"


class Subsystem(StrEnum):
    """The kinds of VM Somnus runs; one VM each, except projects (one per project)."""

    CHAT = "chat"
    RESEARCH = "research"
    PROJECT = "project"
    ARTIFACTS = "artifacts"
    AGENT = "agent"  # one per collaboration role (``somnus collab``)


class IndexKind(StrEnum):
    """FAISS index over memory embeddings: exact (flat), approximate (HNSW), or flat
    until the memory outgrows it, then HNSW (auto)."""

    FLAT = "flat"
    HNSW = "hnsw"
    AUTO = "auto"


class AgentConfig(BaseModel):
    """What the orchestrator tells the agent through the seed (``AGENT_CONFIG_PATH``)."""

    vm_name: str
    subsystem: Subsystem
    token: str = Field(min_length=32)
    port: int = AGENT_PORT
    data_dir: str = DEFAULT_DATA_DIR
    model: AIModelConfiguration = Field(default_factory=lambda: AIModelConfiguration())
    # Requests waiting behind the one running on the model; more get 503.
    max_queue: int = Field(default=4, ge=0)
    memory_index: IndexKind = IndexKind.AUTO


class AgentStatus(StrEnum):
    LOADING = "loading"
    OK = "ok"
    ERROR = "error"


class HealthResponse(BaseModel):
    """``GET /health``: the agent is up and the caller holds the right token."""

    status: AgentStatus
    vm_name: str
    agent_version: str
    uptime_s: float
    model: str | None = None
    error: str | None = None


class ModelFileInfo(BaseModel):
    name: str
    path: str
    present: bool
    size_bytes: int = 0


class InfoResponse(BaseModel):
    """``GET /info``: what runs in the guest."""

    vm_name: str
    subsystem: Subsystem
    hostname: str
    kernel: str
    python: str
    agent_version: str
    packages: dict[str, str]
    models: list[ModelFileInfo]
    llama_build: str | None = None  # llama.cpp's CPU backend: "portable", or "emulation" (TCG)
    llama_build_reason: str | None = None


class ErrorResponse(BaseModel):
    error: str
    detail: str = ""


# ---------------------------------------------------------------------------
# Model runtime (names follow the original Somnus ``AIModelConfiguration``).
# ---------------------------------------------------------------------------


class ModelFormat(StrEnum):
    """Model file formats the original Somnus knew; the agent loads GGUF only."""

    HUGGINGFACE = "huggingface"
    PYTORCH = "pytorch"
    ONNX = "onnx"
    TENSORRT = "tensorrt"
    GGUF = "gguf"
    GGML = "ggml"
    SAFETENSORS = "safetensors"
    OPENVINO = "openvino"


class QuantizationMethod(StrEnum):
    BITSANDBYTES = "bitsandbytes"
    GPTQ = "gptq"
    AWQ = "awq"
    GGUF = "gguf"
    GGML = "ggml"
    EXLLAMAV2 = "exllamav2"
    PYTORCH_DYNAMIC = "pytorch_dynamic"
    PYTORCH_STATIC = "pytorch_static"
    TORCH_AO = "torch_ao"
    ONNX_QUANTIZATION = "onnx_quantization"
    FP16 = "fp16"
    CUSTOM = "custom"


class AIModelConfiguration(BaseModel):
    """How the agent loads and samples its one model.

    ``model_path`` None means the bundled SmolLM2 GGUF; ``context_length`` None
    means the model's trained context (GGUF ``<arch>.context_length``).
    """

    model_id: str = "SmolLM2-135M-Instruct.Q4_1"
    model_path: str | None = None
    model_type: str = "causal_lm"
    context_length: int | None = Field(default=None, ge=64)
    capabilities: list[str] = Field(default_factory=lambda: ["chat", "embeddings"])
    n_threads: int = Field(default=2, ge=1)
    n_batch: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=0)
    max_new_tokens: int = Field(default=2048, ge=1)
    repetition_penalty: float = Field(default=1.1, gt=0.0)
    seed: int = 42
    quantization_enabled: bool = False
    quantization_bits: int | None = Field(default=None, ge=2, le=32)
    quantization_method: QuantizationMethod = QuantizationMethod.GGUF
    preferred_device: str | None = None
    # Reusing the KV cache across requests is faster, but llama.cpp's batched and
    # single-token prompt paths differ slightly, so answers would depend on the
    # previous request. Off: temperature 0 gives the same answer every time.
    prompt_cache: bool = False
    # Embeddings come from a second llama.cpp context with mean pooling; None means the
    # image's all-MiniLM-L6-v2 GGUF if it has one, else the chat model itself.
    embedding_model_path: str | None = None
    embedding_context_length: int = Field(default=512, ge=16)


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"


class ModelStatus(BaseModel):
    """``GET /model``: what is loaded, from which file, with which window."""

    state: ModelState
    config: AIModelConfiguration
    loaded_path: str | None = None
    source_path: str | None = None
    file_type: str | None = None
    quantized_from: str | None = None
    n_ctx: int | None = None
    n_ctx_train: int | None = None
    embedding_dim: int | None = None
    embedding_path: str | None = None  # the GGUF that embeds (MiniLM, or the chat model)
    load_seconds: float | None = None
    error: str | None = None


# ---------------------------------------------------------------------------
# Prompt stack.
# ---------------------------------------------------------------------------


class PromptLayerName(StrEnum):
    """Prompt layers, in assembly order."""

    SYSTEM_IDENTITY = "system_identity"
    MEMORY = "memory"
    CONTEXT = "context"
    WORKING_MEMORY = "working_memory"
    INTERNAL_SCRATCHPAD = "internal_scratchpad"
    USER_INPUT = "user_input"


class PromptStrategyName(StrEnum):
    MODIFYING_PROMPTS = "modifying_prompts"
    PROMPT_MANAGER = "prompt_manager"


class AIContextWindow(BaseModel):
    """Token budget of one assembled prompt against the loaded model's window."""

    max_tokens: int
    current_tokens: int
    reserved_output_tokens: int
    available_tokens: int
    utilization_percent: float
    system_tokens: int
    user_tokens: int
    assistant_tokens: int = 0
    template_tokens: int = 0
    layer_tokens: dict[PromptLayerName, int]
    truncation_enabled: bool = True


class LayerUsage(BaseModel):
    layer: PromptLayerName
    tokens: int
    items: int


class TruncationRecord(BaseModel):
    """What the fitting policy cut from one layer, and why."""

    layer: PromptLayerName
    items_dropped: int
    items_shortened: int
    tokens_removed: int
    reason: str


class PromptMessage(BaseModel):
    role: str
    content: str


class LayerView(BaseModel):
    layer: PromptLayerName
    tokens: int
    items: int
    messages: list[PromptMessage]


class PromptInspection(BaseModel):
    """``GET /prompt/last``: the last prompt the agent assembled.

    The scratchpad's text is withheld (it is never shown); its token count is not.
    """

    strategy: PromptStrategyName
    role: str | None = None
    layers: list[LayerView]
    truncated: list[TruncationRecord]
    context_window: AIContextWindow
    prompt_tokens: int
    created_at: float


class RoleDefinition(BaseModel):
    """A named, identity-stabilised role for ``prompt_manager``."""

    name: str = Field(min_length=1, max_length=64)
    identity: str = Field(min_length=1)
    goals: list[str] = Field(default_factory=list)
    style: str = ""
    constraints: list[str] = Field(default_factory=list)


class RoleList(BaseModel):
    roles: list[RoleDefinition]


class AdaptiveProfile(BaseModel):
    """What ``modifying_prompts`` learned about how to answer this user."""

    user_name: str | None = None
    role: str | None = None
    tone: str | None = None
    style: str | None = None
    language: str | None = None
    format: str | None = None
    preferences: list[str] = Field(default_factory=list)
    directives: list[str] = Field(default_factory=list)
    turns_observed: int = 0
    updated_at: float = 0.0


# ---------------------------------------------------------------------------
# OpenAI-compatible chat and embeddings (llama-server wire shapes) + Somnus extras.
# ---------------------------------------------------------------------------


class ChatRole(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class ChatMessage(BaseModel):
    role: ChatRole
    content: str


class SomnusChatOptions(BaseModel):
    """Somnus-only request fields (OpenAI clients send them via ``extra_body``)."""

    conversation_id: str | None = None
    role: str | None = Field(default=None, description="Force prompt_manager with this role")
    context: list[str] = Field(default_factory=list, description="Documents for CONTEXT")
    use_memory: bool = True
    store: bool = True
    memory_top_k: int = Field(default=5, ge=0, le=50)
    working_memory_turns: int = Field(default=8, ge=0, le=100)


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``: the schema the answer must follow."""

    model_config = {"populate_by_name": True}

    name: str = "output"
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: plain text, any JSON, or JSON that follows a schema.

    Enforced by grammar-constrained decoding (llama.cpp samples only tokens the grammar
    allows), so even a small model answers parseable JSON. ``json_object`` may carry a
    ``schema`` of its own, as llama-server accepts.
    """

    model_config = {"populate_by_name": True}

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None
    object_schema: dict[str, Any] | None = Field(default=None, alias="schema")

    @property
    def schema_(self) -> dict[str, Any] | None:
        """The schema to follow, if any."""
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.json_schema
        return self.object_schema if self.type == "json_object" else None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``; unknown OpenAI fields are ignored."""

    model_config = {"extra": "ignore"}

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = None
    stop: list[str] | str | None = None
    stream: bool = False
    response_format: ResponseFormat | None = None
    somnus: SomnusChatOptions = Field(default_factory=SomnusChatOptions)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    """llama-server's per-response ``timings``."""

    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    predicted_per_second: float


class SomnusReport(BaseModel):
    """Per-answer accounting: tokens per layer and everything that was cut."""

    strategy: PromptStrategyName
    role: str | None = None
    layers: list[LayerUsage]
    truncated: list[TruncationRecord]
    context_window: AIContextWindow
    memories_used: list[str] = Field(default_factory=list)
    stored_memory_id: str | None = None
    conversation_id: str | None = None
    screening: list[ScreeningResult] = Field(default_factory=list)  # flagged prompt items


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    timings: Timings
    somnus: SomnusReport


class ChatDelta(BaseModel):
    role: ChatRole | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """One SSE ``data:`` event; the last one carries usage, timings and somnus."""

    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    timings: Timings | None = None
    somnus: SomnusReport | None = None


class EmbeddingRequest(BaseModel):
    model_config = {"extra": "ignore"}

    input: str | list[str]
    model: str | None = None
    encoding_format: str = "float"


class EmbeddingData(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float]


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: str = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "somnus"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------
# Memory (enums and retention from the original Somnus memory core).
# ---------------------------------------------------------------------------


class MemoryType(StrEnum):
    CORE_FACT = "core_fact"
    CONVERSATION = "conversation"
    DOCUMENT = "document"
    CODE_SNIPPET = "code_snippet"
    TOOL_RESULT = "tool_result"
    USER_DIRECTIVE = "user_directive"
    SYSTEM_EVENT = "system_event"
    CUSTOM_INSTRUCTION = "custom_instruction"
    INTERACTION = "interaction"
    DEV_SESSION = "dev_session"


class MemoryImportance(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    TEMPORARY = "temporary"


# Days a memory lives after its last access; None never expires.
RETENTION_DAYS: dict[MemoryImportance, int | None] = {
    MemoryImportance.CRITICAL: None,
    MemoryImportance.HIGH: 365,
    MemoryImportance.MEDIUM: 90,
    MemoryImportance.LOW: 30,
    MemoryImportance.TEMPORARY: 1,
}
IMPORTANCE_RANK: dict[MemoryImportance, int] = {
    MemoryImportance.CRITICAL: 4,
    MemoryImportance.HIGH: 3,
    MemoryImportance.MEDIUM: 2,
    MemoryImportance.LOW: 1,
    MemoryImportance.TEMPORARY: 0,
}


class MemoryScope(StrEnum):
    PRIVATE = "private"
    SHARED = "shared"
    SYSTEM = "system"
    ARCHIVED = "archived"


class MemoryCreate(BaseModel):
    """``POST /memory``: one memory to store (deduplicated by content hash)."""

    content: str = Field(min_length=1)
    memory_type: MemoryType = MemoryType.CORE_FACT
    importance: MemoryImportance = MemoryImportance.MEDIUM
    scope: MemoryScope = MemoryScope.PRIVATE
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    conversation_id: str | None = None


class MemoryRecord(MemoryCreate):
    """A stored memory; also one line of the JSON-lines export."""

    memory_id: str
    content_hash: str
    created_at: float
    last_accessed: float
    access_count: int = 0
    expires_at: float | None = None


class MemoryAddResponse(BaseModel):
    memory: MemoryRecord
    deduplicated: bool
    embedding_truncated: bool = False
    # Added with ``?background=true``: stored now, embedded (and so searchable) soon after.
    embedding_pending: bool = False
    redacted: dict[str, int] = Field(default_factory=dict)  # secret kind -> how many removed


class RetrievalMode(StrEnum):
    """How memory search ranks: by meaning (vectors), by words (BM25), or both fused."""

    HYBRID = "hybrid"
    VECTOR = "vector"
    KEYWORD = "keyword"


class MemorySearchRequest(BaseModel):
    query: str = Field(min_length=1)
    top_k: int = Field(default=10, ge=1, le=200)
    memory_types: list[MemoryType] | None = None
    min_importance: MemoryImportance | None = None
    conversation_id: str | None = None
    mode: RetrievalMode = RetrievalMode.HYBRID
    # A long document is many chunks: how many of one memory's may be separate hits.
    chunks_per_memory: int = Field(default=1, ge=1, le=20)


class MemoryChunk(BaseModel):
    """The part of a memory a hit matched: its ``position``-th chunk, ``text[start:end]``."""

    position: int
    start: int
    end: int
    text: str


class MemoryHit(BaseModel):
    memory: MemoryRecord
    # The rank score: reciprocal-rank fusion in hybrid mode, else the one retriever's.
    score: float
    similarity: float | None = None  # cosine of the best chunk, when vectors found it
    keyword_score: float | None = None  # BM25 of the best chunk, when its words matched
    chunk: MemoryChunk | None = None


class MemorySearchResponse(BaseModel):
    hits: list[MemoryHit]


class MemoryListResponse(BaseModel):
    memories: list[MemoryRecord]
    total: int
    pending_embeddings: int = 0  # stored, not yet searchable (embedding in the background)


class MemoryImportResponse(BaseModel):
    imported: int
    deduplicated: int


class MemoryFlushResponse(BaseModel):
    """``POST /memory/flush``: SQLite checkpointed and the index written to disk."""

    memories: int
    index_size: int
    expired_purged: int
    index_rebuilt: bool


class ClockRequest(BaseModel):
    """``POST /clock``: the host's time (Unix seconds); sent after a restore."""

    epoch: float


class ClockResponse(BaseModel):
    skew_s: float  # guest minus host before the correction
    set: bool
    vm_name: str | None = None  # who answered: a resumed VM's first call doubles as its probe


class IdentityRequest(BaseModel):
    """``POST /identity``: a VM started from a template takes its own name and token.

    Authorised by the template's token; every later call needs the new one.
    """

    vm_name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,31}$")  # also the hostname
    token: str = Field(min_length=32)
    seed: str = Field(pattern=r"^[0-9a-f]{64}$")  # from the host's random source
    host_public: str = Field(pattern=r"^ssh-ed25519 ")  # the new SSH host key
    host_private: str = Field(min_length=1)


class IdentityResponse(BaseModel):
    vm_name: str  # the name the agent now answers to
    applied: bool  # the root unit installed host key, machine-id, hostname, randomness
    saved: bool  # written to the agent's config file: a cold boot keeps it


class MemoryDeleteResponse(BaseModel):
    memory_id: str
    deleted: bool
