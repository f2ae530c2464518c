"""Reading cloud-init's status.json: the init stage is the one a Somnus seed needs."""

from __future__ import annotations

import json

import pytest

from orchestrator.readiness import CloudInitFailed, cloud_init_done


def status(init_finished: float | None, errors: list[str] | None = None,
           local_errors: list[str] | None = None) -> str:
    """status.json as cloud-init 22.4 writes it (config and final never start: masked)."""
    never: dict[str, object] = {"errors": [], "finished": None, "start": None}
    return json.dumps({"v1": {
        "datasource": "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]",
        "init-local": {"errors": local_errors or [], "finished": 10.5, "start": 9.0},
        "init": {"errors": errors or [], "finished": init_finished, "start": 20.0},
        "modules-config": never, "modules-final": never,
        "stage": None if init_finished else "init",
    }})


@pytest.mark.parametrize("text", [None, "", "{", '{"v1": {"init": {"st'])
def test_absent_or_half_written_is_not_yet(text: str | None) -> None:
    assert cloud_init_done(text) is False


def test_the_init_stage_still_running_is_not_yet() -> None:
    assert cloud_init_done(status(init_finished=None)) is False


def test_the_init_stage_finished_is_done_without_config_or_final() -> None:
    assert cloud_init_done(status(init_finished=24.1)) is True


@pytest.mark.parametrize("where", ["init", "init-local"])
def test_an_error_in_either_stage_is_raised_with_its_text(where: str) -> None:
    bad = ["('users-groups', KeyError('somnus'))"]
    text = status(24.1, errors=bad) if where == "init" else status(24.1, local_errors=bad)
    with pytest.raises(CloudInitFailed, match="users-groups"):
        cloud_init_done(text)
