"""LeaseKeeper: the heartbeat thread stops the working thread when the run is cancelled or the lease is lost."""

from __future__ import annotations

import threading
import time

import pytest

from rlaif.leases import LeaseLost, LeaseState, RunCancelled, keep_lease


def _busy(seconds: float) -> int:
    """Plain Python work, like a training loop between torch calls."""
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        n += 1
    return n


@pytest.mark.parametrize(("state", "error"), [("cancelled", RunCancelled), ("lost", LeaseLost)])
def test_the_keeper_interrupts_the_work(state: LeaseState, error: type[BaseException]) -> None:
    beats: list[float] = []

    def renew() -> LeaseState:
        beats.append(time.monotonic())
        return state if len(beats) >= 3 else "ok"

    started = time.monotonic()
    with pytest.raises(error), keep_lease(renew, interval=0.05):
        _busy(10)
    assert len(beats) == 3
    assert time.monotonic() - started < 2  # stopped after the third heartbeat, not after 10 s


def test_work_that_ends_first_is_not_interrupted_later() -> None:
    ticks = []
    with keep_lease(lambda: "ok", interval=0.02, on_tick=lambda: ticks.append(1)):
        result = _busy(0.2)
    assert result > 0 and len(ticks) >= 3
    time.sleep(0.1)  # nothing is pending for this thread after the block
    assert threading.active_count() >= 1


def test_a_failing_heartbeat_keeps_the_work_going() -> None:
    calls = []

    def renew() -> LeaseState:
        calls.append(1)
        raise ConnectionError("database restarting")

    with keep_lease(renew, interval=0.02):
        _busy(0.2)
    assert len(calls) >= 3


def test_exceptions_of_the_work_pass_through() -> None:
    with pytest.raises(ValueError, match="bad data"), keep_lease(lambda: "ok", interval=0.05):
        raise ValueError("bad data")
