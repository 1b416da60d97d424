"""The heartbeat only records why work must stop; the core stops itself at its next check (cooperative stop)."""

from __future__ import annotations

import time

import pytest

from rlaif.service.claims import Heartbeat
from rlaif.stages.contract import StageHooks, StageStopped, StopReason


def _steps(hooks: StageHooks, seconds: float, step_s: float = 0.01) -> int:
    """A training loop: a step of work, then the on_step hook (which stops the loop when asked to)."""
    deadline, step = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        time.sleep(step_s)
        step += 1
        hooks.on_step(step, 1000, {"loss": 1.0})
    return step


@pytest.mark.parametrize("reason", ["cancelled", "lost"])
def test_the_work_stops_at_its_next_step_after_the_heartbeat_says_so(reason: StopReason) -> None:
    beats: list[float] = []

    def renew() -> StopReason | None:
        beats.append(time.monotonic())
        return reason if len(beats) >= 3 else None

    started = time.monotonic()
    with Heartbeat(renew, interval=0.05) as heartbeat:
        hooks = StageHooks(should_stop=lambda: heartbeat.stop_reason)
        with pytest.raises(StageStopped) as stopped:
            _steps(hooks, 10)
    assert stopped.value.reason == reason and len(beats) == 3
    assert time.monotonic() - started < 2  # stopped after the third heartbeat and one step, not after 10 s


def test_work_that_ends_first_is_not_stopped_and_ticks_report_progress() -> None:
    ticks: list[int] = []
    seen: list[int] = []
    with Heartbeat(lambda: None, interval=0.02, on_tick=lambda: ticks.append(1)) as heartbeat:
        hooks = StageHooks(
            on_progress=lambda step, total, m: seen.append(step), should_stop=lambda: heartbeat.stop_reason
        )
        done = _steps(hooks, 0.2)
    assert done > 0 and seen == list(range(1, done + 1)) and len(ticks) >= 3


def test_a_failing_heartbeat_keeps_the_work_going() -> None:
    calls = []

    def renew() -> StopReason | None:
        calls.append(1)
        raise ConnectionError("database restarting")

    with Heartbeat(renew, interval=0.02) as heartbeat:
        _steps(StageHooks(should_stop=lambda: heartbeat.stop_reason), 0.2)
    assert len(calls) >= 3 and heartbeat.stop_reason is None


def test_exceptions_of_the_work_pass_through() -> None:
    with pytest.raises(ValueError, match="bad data"), Heartbeat(lambda: None, interval=0.05):
        raise ValueError("bad data")
