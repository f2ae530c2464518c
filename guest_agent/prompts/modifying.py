"""``modifying_prompts``: a system prompt rewritten as the conversation goes.

The user's messages are read with fixed rules (no model call: a 135M model
cannot be trusted to extract its own instructions) for their name, the tone,
length, language and format they want, a role for the assistant, stated
preferences and standing directives ("always…", "never…", "from now on…").
The profile is persisted in the VM's memory database.
"""

from __future__ import annotations

import re
import time

from guest_agent.prompts.base import KeyValueStore
from guest_agent.protocol import AdaptiveProfile, PromptStrategyName, Subsystem

PROFILE_KEY = "prompt.adaptive_profile"
MAX_LISTED = 12  # directives and preferences kept (newest win); bounds SYSTEM's size

_I = re.IGNORECASE
NAME = re.compile(r"\b(?:call me|my name is|i am called|i'm called)\s+([A-Z][\w'-]{0,30})", _I)
TONE = re.compile(
    r"\b(formal|casual|friendly|professional|warm|neutral|playful|serious|polite|"
    r"enthusiastic)\s+tone\b|\bbe (?:more )?(formal|casual|friendly|professional|polite|playful)\b",
    _I,
)
CONCISE = re.compile(
    r"\b(?:be|keep|make|more|stay)\b[^.!?\n]{0,30}?\b(concise|brief|short|shorter|succinct|terse)\b",
    _I,
)
DETAILED = re.compile(
    r"\b(?:be|more|give|go)\b[^.!?\n]{0,30}?\b(detailed|thorough|in[- ]depth|elaborate)\b"
    r"|\bmore detail",
    _I,
)
LANGUAGE = re.compile(
    r"\b(?:respond|reply|answer|speak|write|talk)\b[^.!?\n]{0,20}?\bin\s+(English|French|"
    r"Spanish|German|Italian|Portuguese|Dutch|Japanese|Chinese|Korean|Russian|Arabic|Hindi)\b",
    _I,
)
FORMAT = re.compile(
    r"\buse\s+(bullet points|numbered lists|markdown|plain text|tables|code blocks)\b", _I
)
ROLE = re.compile(
    r"\b(?:you are|you're|act as|pretend to be|be)\s+(?:a|an|my)\s+([a-z][a-z -]{2,40}?)"
    r"\s*(?:[.,!?;]|$|\bfor\b|\bwho\b|\band\b)",
    _I,
)
DIRECTIVE = re.compile(r"\b(always|never|don't|do not|from now on|make sure to|remember to)\b", _I)
PREFERENCE = re.compile(
    r"\bi (?:really )?(prefer|like|love|enjoy|hate|dislike|don't like|do not like)\s+"
    r"([^.!?\n]{3,80})",
    _I,
)
SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
STYLE_TEXT = {
    "concise": "Keep answers short and to the point.",
    "detailed": "Give detailed, thorough answers.",
}


def _push(items: list[str], value: str) -> bool:
    """Add ``value`` as newest (moving a repeat to the end); True when it is new."""
    new = value not in items
    if not new:
        items.remove(value)
    items.append(value)
    del items[:-MAX_LISTED]
    return new


def extract(profile: AdaptiveProfile, text: str) -> list[str]:
    """Update ``profile`` from one user message; returns the new directives."""
    if m := NAME.search(text):
        profile.user_name = m.group(1)
    if m := TONE.search(text):
        profile.tone = (m.group(1) or m.group(2)).lower()
    if CONCISE.search(text):
        profile.style = "concise"
    elif DETAILED.search(text):
        profile.style = "detailed"
    if m := LANGUAGE.search(text):
        profile.language = m.group(1).capitalize()
    if m := FORMAT.search(text):
        profile.format = m.group(1).lower()
    if m := ROLE.search(text):
        profile.role = m.group(1).strip().lower()
    for m in PREFERENCE.finditer(text):
        _push(profile.preferences, f"{m.group(1).lower()}s {m.group(2).strip()}")
    new: list[str] = []
    for sentence in SENTENCE.findall(text):
        clean = " ".join(sentence.split())
        if DIRECTIVE.search(clean) and len(clean) <= 200 and _push(profile.directives, clean):
            new.append(clean)
    return new


class AdaptivePrompt:
    """The default strategy for chat, projects and artifacts."""

    name = PromptStrategyName.MODIFYING_PROMPTS

    def __init__(self, store: KeyValueStore, subsystem: Subsystem) -> None:
        self.store = store
        self.subsystem = subsystem
        raw = store.kv_get(PROFILE_KEY)
        self.profile = AdaptiveProfile.model_validate_json(raw) if raw else AdaptiveProfile()

    @property
    def role(self) -> str | None:
        return self.profile.role

    def observe(self, user_text: str) -> list[str]:
        before = self.profile.model_dump(exclude={"turns_observed", "updated_at"})
        new = extract(self.profile, user_text)
        self.profile.turns_observed += 1
        if self.profile.model_dump(exclude={"turns_observed", "updated_at"}) != before:
            self.profile.updated_at = time.time()
        self.store.kv_set(PROFILE_KEY, self.profile.model_dump_json())
        return new

    def system_prompt(self) -> str:
        p = self.profile
        lines = [
            f"You are Somnus, a private AI assistant running locally in the user's "
            f"{self.subsystem.value} workspace. Answer the user's messages helpfully and honestly."
        ]
        if p.role:
            lines.append(f"Act as the user's {p.role}.")
        if p.user_name:
            lines.append(f"The user's name is {p.user_name}; address them as {p.user_name}.")
        if p.tone:
            lines.append(f"Use a {p.tone} tone.")
        if p.style:
            lines.append(STYLE_TEXT[p.style])
        if p.language:
            lines.append(f"Always reply in {p.language}.")
        if p.format:
            lines.append(f"Format answers with {p.format}.")
        if p.preferences:
            lines.append("The user " + "; ".join(p.preferences) + ".")
        if p.directives:
            lines.append("Follow the user's standing directives:")
            lines.extend(f"- {d}" for d in p.directives)
        return "\n".join(lines)

    def scratchpad(self) -> str:
        p = self.profile
        notes = [s for s in (p.language and f"reply in {p.language}", p.style and p.style) if s]
        if p.directives:
            notes.append(f"honour {len(p.directives)} standing directive(s)")
        tail = "; ".join(notes) if notes else "answer the last message directly"
        return f"Private note for this reply (not shown to the user): {tail}."
