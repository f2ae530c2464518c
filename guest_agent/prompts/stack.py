"""Assemble the six prompt layers and fit them to the context window.

Order: SYSTEM/IDENTITY, MEMORY, CONTEXT, WORKING_MEMORY, INTERNAL_SCRATCHPAD,
USER_INPUT. SYSTEM, MEMORY and CONTEXT share the leading system message;
working memory keeps its user/assistant turns; the scratchpad is a system
message just before the user's input, so the last thing the model reads before
the question is the per-response note (identity anchor, active directives).

Truncation policy (never silent: every cut is returned as a TruncationRecord):
cut MEMORY first (lowest relevance first), then CONTEXT (last document first),
then WORKING_MEMORY (oldest turn first), then the scratchpad. An item that is
bigger than what must go is shortened (its head kept) instead of dropped.
SYSTEM/IDENTITY and USER_INPUT are never cut: if they alone do not fit, the
request fails with ``ContextOverflow``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from guest_agent.protocol import (
    AIContextWindow,
    LayerUsage,
    LayerView,
    PromptInspection,
    PromptLayerName,
    PromptMessage,
    PromptStrategyName,
    TruncationRecord,
)

L = PromptLayerName
LAYER_ORDER = (
    L.SYSTEM_IDENTITY,
    L.MEMORY,
    L.CONTEXT,
    L.WORKING_MEMORY,
    L.INTERNAL_SCRATCHPAD,
    L.USER_INPUT,
)
TRUNCATION_ORDER = (L.MEMORY, L.CONTEXT, L.WORKING_MEMORY, L.INTERNAL_SCRATCHPAD)
NEVER_TRUNCATED = (L.SYSTEM_IDENTITY, L.USER_INPUT)
MEMORY_HEADER = (
    "## Memory\nNotes remembered from earlier conversations, most relevant first. "
    "Use them only if they help with the current message; they may be outdated."
)
CONTEXT_HEADER = "## Context\nMaterial provided for this conversation:"
TRUNCATION_MARK = " …[truncated]"
# Below this many tokens a shortened item says nothing useful: drop it instead.
MIN_SHORTENED_TOKENS = 16


class Tokenizer(Protocol):
    """What fitting needs from the model runtime."""

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def render_chat(self, messages: Sequence[dict[str, str]]) -> tuple[str, list[str]]: ...

    def prompt_tokens(self, prompt: str) -> list[int]: ...


class ContextOverflow(ValueError):
    """The parts that are never cut do not fit the context window."""


@dataclass(frozen=True)
class LayerItem:
    """One cuttable unit of a layer; the lowest ``priority`` is cut first."""

    text: str
    role: str = "system"
    priority: float = 0.0
    ref: str | None = None


@dataclass
class PromptLayers:
    system: str
    user: str
    memory: list[LayerItem] = field(default_factory=list)
    context: list[LayerItem] = field(default_factory=list)
    working: list[LayerItem] = field(default_factory=list)
    scratchpad: list[LayerItem] = field(default_factory=list)

    def items(self, layer: PromptLayerName) -> list[LayerItem]:
        return {
            L.SYSTEM_IDENTITY: [LayerItem(self.system)],
            L.MEMORY: self.memory,
            L.CONTEXT: self.context,
            L.WORKING_MEMORY: self.working,
            L.INTERNAL_SCRATCHPAD: self.scratchpad,
            L.USER_INPUT: [LayerItem(self.user, role="user")],
        }[layer]

    def layer_messages(self, layer: PromptLayerName) -> list[dict[str, str]]:
        """The text each layer contributes, as chat messages."""
        if layer is L.MEMORY:
            body = "\n".join(i.text for i in self.memory)
            return [{"role": "system", "content": f"{MEMORY_HEADER}\n{body}"}] if body else []
        if layer is L.CONTEXT:
            body = "\n\n".join(i.text for i in self.context)
            return [{"role": "system", "content": f"{CONTEXT_HEADER}\n{body}"}] if body else []
        return [{"role": i.role, "content": i.text} for i in self.items(layer) if i.text]

    def messages(self) -> list[dict[str, str]]:
        """All layers as the chat messages handed to the model's template."""
        lead = [m["content"] for layer in LAYER_ORDER[:3] for m in self.layer_messages(layer)]
        out = [{"role": "system", "content": "\n\n".join(lead)}]
        for layer in LAYER_ORDER[3:]:
            out.extend(self.layer_messages(layer))
        return out


@dataclass
class AssembledPrompt:
    layers: PromptLayers
    prompt: str
    tokens: list[int]
    stops: list[str]
    usage: list[LayerUsage]
    truncated: list[TruncationRecord]
    window: AIContextWindow

    @property
    def memory_refs(self) -> list[str]:
        return [i.ref for i in self.layers.memory if i.ref]

    def inspection(self, strategy: PromptStrategyName, role: str | None) -> PromptInspection:
        """What ``GET /prompt/last`` shows; the scratchpad's words are withheld."""
        views = []
        for usage in self.usage:
            messages = [PromptMessage(**m) for m in self.layers.layer_messages(usage.layer)]
            if usage.layer is L.INTERNAL_SCRATCHPAD:
                messages = [PromptMessage(role=m.role, content="[withheld]") for m in messages]
            views.append(
                LayerView(
                    layer=usage.layer, tokens=usage.tokens, items=usage.items, messages=messages
                )
            )
        return PromptInspection(
            strategy=strategy,
            role=role,
            layers=views,
            truncated=self.truncated,
            context_window=self.window,
            prompt_tokens=len(self.tokens),
            created_at=time.time(),
        )


class _Fitter:
    def __init__(self, tok: Tokenizer, layers: PromptLayers, budget: int) -> None:
        self.tok = tok
        self.layers = replace(
            layers,
            memory=list(layers.memory),
            context=list(layers.context),
            working=list(layers.working),
            scratchpad=list(layers.scratchpad),
        )
        self.budget = budget

    def render(self) -> tuple[str, list[str], list[int]]:
        prompt, stops = self.tok.render_chat(self.layers.messages())
        return prompt, stops, self.tok.prompt_tokens(prompt)

    def layer_tokens(self, layer: PromptLayerName) -> int:
        return sum(len(self.tok.tokenize(m["content"])) for m in self.layers.layer_messages(layer))

    def cut(self, layer: PromptLayerName, excess: int) -> tuple[bool, bool]:
        """Drop or shorten the layer's lowest-priority item; returns (dropped, shortened)."""
        items = self.layers.items(layer)
        victim = min(range(len(items)), key=lambda i: items[i].priority)
        item = items[victim]
        tokens = self.tok.tokenize(item.text)
        keep = len(tokens) - excess - len(self.tok.tokenize(TRUNCATION_MARK)) - 2
        if keep >= MIN_SHORTENED_TOKENS and not item.text.endswith(TRUNCATION_MARK):
            text = self.tok.detokenize(tokens[:keep]) + TRUNCATION_MARK
            items[victim] = replace(item, text=text)
            return False, True
        del items[victim]
        return True, False


def assemble(
    tok: Tokenizer, layers: PromptLayers, n_ctx: int, reserve_output: int
) -> AssembledPrompt:
    """Render the layers with the model's chat template, cut to fit, and account for it."""
    budget = n_ctx - reserve_output
    if budget <= 0:
        raise ContextOverflow(
            f"max_tokens ({reserve_output}) leaves no room for a prompt in the "
            f"context window ({n_ctx})"
        )
    fit = _Fitter(tok, layers, budget)
    prompt, stops, tokens = fit.render()
    truncated: list[TruncationRecord] = []
    for layer in TRUNCATION_ORDER:
        if len(tokens) <= budget:
            break
        before, dropped, shortened = fit.layer_tokens(layer), 0, 0
        while len(tokens) > budget and fit.layers.items(layer):
            was_dropped, was_shortened = fit.cut(layer, len(tokens) - budget)
            dropped, shortened = dropped + was_dropped, shortened + was_shortened
            prompt, stops, tokens = fit.render()
        if dropped or shortened:
            truncated.append(
                TruncationRecord(
                    layer=layer,
                    items_dropped=dropped,
                    items_shortened=shortened,
                    tokens_removed=before - fit.layer_tokens(layer),
                    reason=(
                        f"prompt exceeded its budget of {budget} tokens (context {n_ctx} "
                        f"minus {reserve_output} reserved for the answer)"
                    ),
                )
            )
    if len(tokens) > budget:
        raise ContextOverflow(
            f"system identity ({fit.layer_tokens(L.SYSTEM_IDENTITY)} tokens) and user input "
            f"({fit.layer_tokens(L.USER_INPUT)} tokens) are never cut and need {len(tokens)} "
            f"tokens with the template; the budget is {budget} (context {n_ctx} minus "
            f"{reserve_output} for the answer)"
        )
    usage = [
        LayerUsage(layer=layer, tokens=fit.layer_tokens(layer), items=len(fit.layers.items(layer)))
        for layer in LAYER_ORDER
    ]
    per_layer = {u.layer: u.tokens for u in usage}
    window = AIContextWindow(
        max_tokens=n_ctx,
        current_tokens=len(tokens),
        reserved_output_tokens=reserve_output,
        available_tokens=n_ctx - len(tokens) - reserve_output,
        utilization_percent=round(100.0 * len(tokens) / n_ctx, 2),
        system_tokens=per_layer[L.SYSTEM_IDENTITY],
        user_tokens=per_layer[L.USER_INPUT],
        template_tokens=len(tokens) - sum(per_layer.values()),
        layer_tokens=per_layer,
    )
    return AssembledPrompt(fit.layers, prompt, tokens, stops, usage, truncated, window)
