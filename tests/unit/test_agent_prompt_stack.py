"""Prompt layers: order, budget, and the truncation policy, on the real tokenizer."""

from __future__ import annotations

import pytest

from guest_agent.prompts.stack import (
    LAYER_ORDER,
    TRUNCATION_MARK,
    ContextOverflow,
    LayerItem,
    PromptLayers,
    assemble,
)
from guest_agent.protocol import PromptLayerName as L
from guest_agent.runtime import ModelRuntime

SYSTEM = "You are Somnus, the user's private assistant."
USER = "What did we decide about the launch date?"


def filler(word: str, n: int) -> str:
    return " ".join(f"{word}{i}" for i in range(n))


def layers(memory: int = 2, context: int = 2, working: int = 4, size: int = 20) -> PromptLayers:
    return PromptLayers(
        system=SYSTEM,
        user=USER,
        memory=[LayerItem(f"- memory {i}: {filler('m', size)}", priority=i) for i in range(memory)],
        context=[LayerItem(f"doc {i}: {filler('c', size)}", priority=-i) for i in range(context)],
        working=[
            LayerItem(
                f"turn {i}: {filler('w', size)}", role=("user", "assistant")[i % 2], priority=i
            )
            for i in range(working)
        ],
        scratchpad=[LayerItem("Private note: answer the last message directly.")],
    )


def test_layers_render_in_order_and_fit(agent_runtime: ModelRuntime) -> None:
    out = assemble(agent_runtime, layers(), n_ctx=1024, reserve_output=64)
    assert [u.layer for u in out.usage] == list(LAYER_ORDER)
    assert not out.truncated
    prompt = out.prompt
    positions = [
        prompt.index(s) for s in (SYSTEM, "memory 0", "doc 0", "turn 0", "Private note", USER)
    ]
    assert positions == sorted(positions)
    assert prompt.rstrip().endswith("assistant")  # generation prompt after USER_INPUT
    assert len(out.tokens) + 64 <= 1024
    w = out.window
    assert w.current_tokens == len(out.tokens) == sum(w.layer_tokens.values()) + w.template_tokens
    assert w.available_tokens == 1024 - 64 - len(out.tokens)
    assert all(u.tokens > 0 for u in out.usage)


def test_memory_is_cut_first_lowest_relevance_first(agent_runtime: ModelRuntime) -> None:
    full = assemble(agent_runtime, layers(memory=6), n_ctx=4096, reserve_output=64)
    budget = len(full.tokens) - 30  # a little too much: only memory must give way
    out = assemble(agent_runtime, layers(memory=6), n_ctx=budget + 64, reserve_output=64)
    assert len(out.tokens) <= budget
    assert [t.layer for t in out.truncated] == [L.MEMORY]
    # Only the least relevant memory gave way, and only as much as needed.
    (record,) = out.truncated
    assert record.items_shortened == 1 and record.items_dropped == 0
    assert 0 < record.tokens_removed < 60
    first, *rest = out.layers.memory
    assert first.text.startswith("- memory 0") and first.text.endswith(TRUNCATION_MARK)
    assert [i.text for i in rest] == [i.text for i in layers(memory=6).memory[1:]]


def test_policy_order_memory_context_working_then_scratchpad(agent_runtime: ModelRuntime) -> None:
    base = layers(memory=3, context=3, working=6, size=40)
    full = assemble(agent_runtime, base, n_ctx=8192, reserve_output=64)
    untouched = {u.layer: u.tokens for u in full.usage}
    keep_only = untouched[L.SYSTEM_IDENTITY] + untouched[L.USER_INPUT] + 120
    out = assemble(agent_runtime, base, n_ctx=keep_only + 64, reserve_output=64)
    cut = [t.layer for t in out.truncated]
    assert cut == [L.MEMORY, L.CONTEXT, L.WORKING_MEMORY][: len(cut)] and len(cut) == 3
    assert not out.layers.memory and not out.layers.context
    # Working memory loses its oldest turns first: what survives is the newest.
    assert out.layers.working and "turn 5" in out.layers.working[-1].text
    used = {u.layer: u.tokens for u in out.usage}
    assert used[L.SYSTEM_IDENTITY] == untouched[L.SYSTEM_IDENTITY]
    assert used[L.USER_INPUT] == untouched[L.USER_INPUT]
    assert len(out.tokens) <= keep_only


def test_oversized_item_is_shortened_not_silently_dropped(agent_runtime: ModelRuntime) -> None:
    big = PromptLayers(system=SYSTEM, user=USER, context=[LayerItem(filler("x", 600))])
    out = assemble(agent_runtime, big, n_ctx=512, reserve_output=64)
    assert len(out.tokens) <= 512 - 64
    (record,) = out.truncated
    assert record.layer is L.CONTEXT and record.items_shortened == 1 and record.items_dropped == 0
    assert out.layers.context[0].text.endswith(TRUNCATION_MARK)
    assert "x0 x1" in out.layers.context[0].text  # the head is what is kept
    assert record.tokens_removed > 500


def test_system_and_user_input_are_never_cut(agent_runtime: ModelRuntime) -> None:
    huge_user = PromptLayers(system=SYSTEM, user=filler("q", 800))
    with pytest.raises(ContextOverflow, match="never cut"):
        assemble(agent_runtime, huge_user, n_ctx=512, reserve_output=64)


def test_output_reservation_must_leave_room(agent_runtime: ModelRuntime) -> None:
    with pytest.raises(ContextOverflow, match="leaves no room"):
        assemble(agent_runtime, layers(), n_ctx=512, reserve_output=512)


def test_inspection_withholds_scratchpad_text(agent_runtime: ModelRuntime) -> None:
    from guest_agent.protocol import PromptStrategyName

    out = assemble(agent_runtime, layers(), n_ctx=1024, reserve_output=64)
    view = out.inspection(PromptStrategyName.MODIFYING_PROMPTS, None)
    pad = next(v for v in view.layers if v.layer is L.INTERNAL_SCRATCHPAD)
    assert pad.tokens > 0 and all(m.content == "[withheld]" for m in pad.messages)
    assert "Private note" not in view.model_dump_json()
    user = next(v for v in view.layers if v.layer is L.USER_INPUT)
    assert user.messages[0].content == USER
