"""Code fences in model answers: languages, file names, hints and CommonMark edge cases."""

from __future__ import annotations

import pytest

from orchestrator.devsessions.fences import Fence, parse_fences, render_fence


def test_several_fences_in_order_with_exact_content() -> None:
    answer = (
        "Set up:\n\n```python\nimport os\n\nprint(os.getcwd())\n```\n\nRun it:\n"
        "```sh\n$ python main.py\n```\nDone."
    )
    assert parse_fences(answer) == [
        Fence("python", "import os\n\nprint(os.getcwd())\n"),
        Fence("bash", "$ python main.py\n"),
    ]


@pytest.mark.parametrize(
    ("info", "language", "filename"),
    [
        ("python main.py", "python", "main.py"),
        ("py src/app.py", "python", "src/app.py"),
        ("python:main.py", "python", "main.py"),
        ('python title="pkg/util.py"', "python", "pkg/util.py"),
        ("js filename=web/app.js", "javascript", "web/app.js"),
        ("main.rs", "rust", "main.rs"),
        ("Dockerfile", "dockerfile", None),  # a language tag far more often than a file
        ("docker/Dockerfile", "dockerfile", "docker/Dockerfile"),
        ("c++", "cpp", None),
        ("", "text", None),
        ("python {linenos=true}", "python", None),
        ("python ../../etc/passwd", "python", None),
        ("python /srv/app.py", "python", "srv/app.py"),
        ("python ./a/../b.py", "python", "b.py"),
    ],
)
def test_info_string_gives_language_and_filename(
    info: str, language: str, filename: str | None
) -> None:
    [fence] = parse_fences(f"```{info}\nx = 1\n```\n")
    assert (fence.language, fence.filename) == (language, filename)


@pytest.mark.parametrize(
    ("first_line", "info", "language", "filename", "hint_used"),
    [
        ("# file: tools/run.py", "python", "python", "tools/run.py", True),
        ("// file: index.ts", "ts", "typescript", "index.ts", True),
        ("-- filename: schema.sql", "", "sql", "schema.sql", True),
        ("/* file: style.css */", "css", "css", "style.css", True),
        ("<!-- file: index.html -->", "html", "html", "index.html", True),
        ("# File:  app.py", "python main.py", "python", "main.py", False),  # conflicting: kept
        ("# file: main.py", "python main.py", "python", "main.py", True),  # agreeing: removed
    ],
)
def test_first_line_hint(
    first_line: str, info: str, language: str, filename: str, hint_used: bool
) -> None:
    [fence] = parse_fences(f"```{info}\n{first_line}\nbody\n```")
    assert (fence.language, fence.filename) == (language, filename)
    assert fence.content == ("body\n" if hint_used else f"{first_line}\nbody\n")


def test_hint_only_counts_on_the_first_line() -> None:
    [fence] = parse_fences("```python\nx = 1\n# file: other.py\n```")
    assert fence.filename is None
    assert fence.content == "x = 1\n# file: other.py\n"


def test_longer_and_tilde_fences_contain_shorter_ones() -> None:
    answer = (
        "````markdown README.md\n# Title\n```bash\nmake\n```\n````\n~~~python\nprint('```')\n~~~\n"
    )
    assert parse_fences(answer) == [
        Fence("markdown", "# Title\n```bash\nmake\n```\n", "README.md"),
        Fence("python", "print('```')\n"),
    ]


def test_indented_fence_in_a_list_item_is_dedented() -> None:
    answer = "1. Create it:\n   ```python\n   def f():\n       return 1\n   ```\n"
    assert parse_fences(answer) == [Fence("python", "def f():\n    return 1\n")]


def test_unclosed_fence_runs_to_the_end() -> None:
    assert parse_fences("```python\nx = 1\ny = 2\n") == [Fence("python", "x = 1\ny = 2\n")]


def test_not_fences_and_empty_fences_are_ignored() -> None:
    assert parse_fences("Use ```inline``` code or ``two``.\n```python\n\n   \n```\nend") == []


def test_crlf_answers_give_lf_content() -> None:
    assert parse_fences("```py\r\na\r\nb\r\n```\r\n") == [Fence("python", "a\nb\n")]


@pytest.mark.parametrize("content", ["x = 1\n", "s = '```'\n", "no newline", "````\n```\n"])
def test_render_fence_round_trips(content: str) -> None:
    [fence] = parse_fences("Text\n" + render_fence("python", content, "app.py"))
    expected = content if content.endswith("\n") else content + "\n"
    assert fence == Fence("python", expected, "app.py")
