"""The guards that end a collaboration, all checked together (a loop that one guard
misses, another stops): turns, tokens, time, and no progress.

No progress is counted in strikes: a turn whose normalised content repeats an earlier
turn's, a turn that adds no word the transcript did not have, and a turn the model
could not make (a fallback) each count one. ``max_strikes`` strikes end the run. Ending
by choice is a structured action of the turn (``final_answer``), never a matched word.
Pure: the state is rebuilt from the transcript, so a resumed run keeps its counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from orchestrator.collab.models import CollabLimits, EndReason, EntryKind, TranscriptEntry

# Words too common to count as something new.
STOP_WORDS = frozenset({
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was",
    "one", "our", "out", "has", "him", "his", "how", "its", "may", "new", "now", "old", "see",
    "two", "way", "who", "did", "get", "let", "say", "she", "too", "use", "that", "with",
    "have", "this", "will", "your", "from", "they", "been", "than", "then", "them", "these",
    "some", "what", "when", "which", "there", "their", "would", "about", "could", "other",
    "into", "more", "also", "just", "like", "only", "very", "over", "such", "here", "were",
    "each", "most", "much", "many", "should", "those", "agree", "agreed", "yes", "thanks",
    "thank", "good", "great", "point", "points", "said", "says", "think", "well", "indeed"
})
_WORD = re.compile(r"[a-z0-9]+")


def normalised(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in STOP_WORDS}


@dataclass
class GuardState:
    """What the guards count, over the whole run (resumes included)."""

    turns: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    strikes: int = 0
    spoken: list[str] = field(default_factory=list)  # roles, in turn order
    seen: set[str] = field(default_factory=set)  # content words said so far
    said: dict[str, int] = field(default_factory=dict)  # normalised content -> its turn

    @classmethod
    def of(cls, entries: list[TranscriptEntry]) -> GuardState:
        state = cls()
        for entry in entries:
            if entry.kind is EntryKind.TURN:
                state.add(entry)
        return state

    def strike(self, content: str, findings: list[str], fallback: str | None) -> str | None:
        """Why a turn with this content is no progress, or None."""
        if fallback is not None:
            return "the model gave no valid answer"
        norm = normalised(content)
        if not norm:
            return "an empty turn"
        if norm in self.said:
            return f"repeats turn {self.said[norm]}"
        if self.turns and not content_words(" ".join([content, *findings])) - self.seen:
            return "adds nothing new"
        return None

    def add(self, entry: TranscriptEntry) -> None:
        """Count a turn appended to the transcript."""
        self.turns += 1
        self.tokens += entry.tokens
        self.elapsed_s += entry.turn_s + entry.swap_s
        self.strikes += entry.strike is not None
        if entry.role is not None:
            self.spoken.append(entry.role)
        self.said.setdefault(normalised(entry.content), self.turns)
        self.seen |= content_words(" ".join([entry.content, *entry.findings]))

    def exhausted(self, limits: CollabLimits) -> EndReason | None:
        """The guard that ends the run before another turn, or None."""
        if self.strikes >= limits.max_strikes:
            return EndReason.NO_PROGRESS
        if self.turns >= limits.max_turns:
            return EndReason.MAX_TURNS
        if self.tokens >= limits.budget_tokens:
            return EndReason.TOKEN_BUDGET
        if self.elapsed_s >= limits.budget_minutes * 60:
            return EndReason.TIME_BUDGET
        return None
