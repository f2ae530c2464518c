"""Settings from the environment: a bad value is one InvalidInput line, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import AccelMode, SwapPolicy, load_settings
from core.errors import InvalidInput


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets: none from the shell that runs pytest."""
    for name in list(os.environ):
        if name.upper().startswith("SOMNUS_"):
            monkeypatch.delenv(name)


def test_good_values_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOMNUS_HOME", str(tmp_path))
    monkeypatch.setenv("SOMNUS_MEMORY_BUDGET_MIB", "2048")
    monkeypatch.setenv("SOMNUS_ACCEL", "tcg")
    monkeypatch.setenv("SOMNUS_POLICY", "budget")
    monkeypatch.setenv("SOMNUS_ARTIFACTS_OVERLAY", "false")
    settings = load_settings()
    assert settings.home == tmp_path and settings.memory_budget_mib == 2048
    assert settings.accel is AccelMode.TCG and settings.policy is SwapPolicy.BUDGET
    assert settings.artifacts_overlay is False


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("SOMNUS_MEMORY_BUDGET_MIB", "abc", "expected an integer >= 512"),
    ("SOMNUS_MEMORY_BUDGET_MIB", "100", "expected an integer >= 512"),
    ("SOMNUS_PORT_RANGE_START", "80", "expected an integer >= 1024 and <= 65000"),
    ("SOMNUS_TIMEOUT_SSH_S", "soon", "expected a number"),
    ("SOMNUS_ACCEL", "hvf", "expected one of auto, kvm, tcg"),
    ("SOMNUS_POLICY", "all", "expected one of single-active, budget"),
    ("SOMNUS_RESTART_CRASHED", "maybe", "expected true or false"),
])  # fmt: skip
def test_a_bad_value_is_one_line(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                 expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInput) as caught:
        load_settings()
    assert caught.value.message == f"bad setting {name}={value!r}: {expected}"
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_every_bad_value_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMNUS_MEMORY_BUDGET_MIB", "abc")
    monkeypatch.setenv("somnus_default_vcpus", "0")  # names are case-insensitive
    monkeypatch.setenv("SOMNUS_ACCEL", "kvm")  # a good one among them is not mentioned
    with pytest.raises(InvalidInput) as caught:
        load_settings()
    problems = caught.value.message.split("; ")
    assert sorted(problems) == [
        "bad setting SOMNUS_DEFAULT_VCPUS='0': expected an integer >= 1",
        "bad setting SOMNUS_MEMORY_BUDGET_MIB='abc': expected an integer >= 512",
    ]
    assert caught.value.__cause__ is None  # no pydantic traceback chained behind the line
