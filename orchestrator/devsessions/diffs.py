"""Unified diffs that GNU ``patch`` and ``git apply`` accept, edge cases included."""

from __future__ import annotations

import difflib

NO_NEWLINE = "\\ No newline at end of file\n"


def split_lines(text: str) -> list[str]:
    """Lines with their ``\\n`` kept, split on ``\\n`` only.

    ``str.splitlines`` also splits on \\r, \\x0c, \\u2028 …, which ``patch`` treats as
    ordinary characters; splitting there would produce diffs that do not apply.
    """
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def unified_diff(old: str, new: str, old_label: str, new_label: str | None = None,
                 context: int = 3) -> str:
    """The diff from ``old`` to ``new`` labelled ``a/<old_label>`` and ``b/<new_label>``.

    Identical texts give "". A last line without a newline gets the standard
    "\\ No newline at end of file" marker, which ``difflib`` leaves out.
    """
    if old == new:
        return ""
    lines = difflib.unified_diff(split_lines(old), split_lines(new), f"a/{old_label}",
                                 f"b/{new_label or old_label}", n=context)
    return "".join(line if line.endswith("\n") else f"{line}\n{NO_NEWLINE}" for line in lines)


def diff_stat(diff: str) -> tuple[int, int]:
    """Lines added and removed by a single-file unified diff (headers not counted)."""
    added = removed = 0
    in_hunks = False
    for line in diff.split("\n"):
        if line.startswith("@@"):
            in_hunks = True
        elif in_hunks and line.startswith("+"):
            added += 1
        elif in_hunks and line.startswith("-"):
            removed += 1
    return added, removed
