"""Unified diffs: every edge case must apply with GNU patch and give the new text back."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from orchestrator.devsessions.diffs import diff_stat, split_lines, unified_diff


def apply_patch(tmp_path: Path, old: str, diff: str) -> str:
    """Apply ``diff`` to a file holding ``old`` with GNU patch; the file's new text."""
    target = tmp_path / "target"
    target.write_bytes(old.encode())
    # --binary: keep \r as data (the diff is byte-exact); -f: never ask questions.
    subprocess.run(
        ["patch", "--quiet", "--binary", "-f", str(target)],
        input=diff.encode(),
        check=True,
        capture_output=True,
    )
    return target.read_bytes().decode()


CASES = {
    "empty to content": ("", "a\nb\n"),
    "content to empty": ("a\nb\n", ""),
    "empty to no newline": ("", "x"),
    "gains trailing newline": ("a\nb", "a\nb\n"),
    "loses trailing newline": ("a\nb\n", "a\nb"),
    "both without newline": ("one\ntwo", "one\nthree"),
    "unicode": ("naïve = 'café'\nπ = 3.14\n", "naïve = 'café ☕'\nπ = 3.14159\n🐍 = True\n"),
    "unicode line separators are data": ("a\u2028b\nc\x0cd\n", "a\u2028B\nc\x0cd\n"),
    "carriage returns are data": ("a\r\nb\r\n", "a\r\nB\r\n"),
    "blank lines only": ("\n\n", "\n\n\n"),
    "far apart edits": (
        "".join(f"{i}\n" for i in range(40)),
        "".join(f"{i if i not in (3, 30) else 'x'}\n" for i in range(40)),
    ),
}


@pytest.mark.parametrize(("old", "new"), list(CASES.values()), ids=list(CASES))
def test_diff_applies_with_patch(tmp_path: Path, old: str, new: str) -> None:
    diff = unified_diff(old, new, "main.py")
    assert diff.startswith("--- a/main.py\n+++ b/main.py\n@@ ")
    assert apply_patch(tmp_path, old, diff) == new


def test_identical_content_gives_an_empty_diff() -> None:
    assert unified_diff("same\n", "same\n", "x") == ""
    assert unified_diff("", "", "x") == ""


def test_missing_final_newline_is_marked_as_patch_expects() -> None:
    diff = unified_diff("a\n", "a\nb", "python")
    assert diff == (
        "--- a/python\n+++ b/python\n@@ -1 +1,2 @@\n a\n+b\n\\ No newline at end of file\n"
    )


def test_labels_name_both_sides() -> None:
    diff = unified_diff("a\n", "b\n", "old.py", "new.py")
    assert diff.splitlines()[:2] == ["--- a/old.py", "+++ b/new.py"]


def test_random_edits_round_trip_through_patch(tmp_path: Path) -> None:
    rng = random.Random(6)
    pieces = ["a\n", "b\n", "c\n", "é\n", "\n", "tail", "x\r\n", "  indented\n", "--- a\n", "+++\n"]

    def text() -> str:
        body = [rng.choice(pieces[:4] + pieces[5:]) for _ in range(rng.randint(0, 12))]
        # A piece without a newline may only come last, as in a real file.
        return "".join(p if p.endswith("\n") else p + "\n" for p in body[:-1]) + (
            body[-1] if body else ""
        )

    for _ in range(150):
        old, new = text(), text()
        diff = unified_diff(old, new, "f")
        assert (diff == "") == (old == new)
        if diff:
            assert apply_patch(tmp_path, old, diff) == new, (old, new, diff)


def test_split_lines_only_splits_on_newline() -> None:
    assert split_lines("a\u2028b\rc\nd") == ["a\u2028b\rc\n", "d"]
    assert split_lines("") == []
    assert split_lines("\n") == ["\n"]


def test_diff_stat_counts_lines_not_headers() -> None:
    diff = unified_diff("--- x\nkeep\n", "+++ y\nkeep\nnew\n", "f")
    assert diff_stat(diff) == (2, 1)
    assert diff_stat("") == (0, 0)
