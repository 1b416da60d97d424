"""Lease heartbeats for long work, and how a worker stops work it no longer owns.

A stage or shard row carries `lease_owner` and `heartbeat_at`. While a worker runs the stage core, a
`LeaseKeeper` thread renews the heartbeat every `settings.heartbeat_s`. When a renewal reports that the run
was cancelled, or that another worker took the lease over (ours had gone stale), the keeper raises
`StageInterrupted` *inside the working thread* (CPython's PyThreadState_SetAsyncExc): the core is plain
Python calling torch, so the exception lands at the next bytecode, and nothing the core wrote is lost
(files are atomic, items are committed one by one, training resumes from its last step checkpoint).
`StageInterrupted` derives from BaseException, so a core's `except Exception` cannot swallow it.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

log = logging.getLogger(__name__)

LeaseState = Literal["ok", "lost", "cancelled"]


class StageInterrupted(BaseException):
    """The work was stopped from outside. A BaseException, so a core's `except Exception` cannot swallow it."""

    reason: LeaseState = "cancelled"


class RunCancelled(StageInterrupted):
    """The run was cancelled while this worker was running one of its stages."""

    reason: LeaseState = "cancelled"


class LeaseLost(StageInterrupted):
    """Another worker took the lease over (ours had gone stale): it resumes the work, we stop."""

    reason: LeaseState = "lost"


_INTERRUPTS: dict[LeaseState, type[StageInterrupted]] = {"cancelled": RunCancelled, "lost": LeaseLost}


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    # NULL clears an exception that is still pending in the target thread.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class LeaseKeeper:
    """Calls `renew()` every `interval` seconds; interrupts the creating thread when it answers 'lost' or 'cancelled'.

    `on_tick()` (optional) runs after each renewal, e.g. to copy new training metrics into events.
    """

    def __init__(
        self, renew: Callable[[], LeaseState], interval: float, on_tick: Callable[[], None] | None = None
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._on_tick = on_tick
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._armed = True
        self._target = threading.get_ident()
        self.reason: LeaseState | None = None
        self._thread = threading.Thread(target=self._loop, name="rlaif-lease", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                state = self._renew()
                if self._on_tick is not None:
                    self._on_tick()
            except Exception:  # the database is briefly unreachable: keep the work going and try again
                log.warning("lease heartbeat failed; retrying in %.0f s", self._interval, exc_info=True)
                continue
            if state != "ok":
                self._interrupt(state)
                return

    def _interrupt(self, state: LeaseState) -> None:
        with self._lock:
            if not self._armed:
                return
            self._armed = False
            self.reason = state
            log.warning("interrupting the running stage: %s", state)
            _set_async_exc(self._target, _INTERRUPTS[state])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Disarm (no interrupt can start after this returns) and join the thread."""
        with self._lock:
            self._armed = False
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)


@contextmanager
def keep_lease(
    renew: Callable[[], LeaseState], interval: float, on_tick: Callable[[], None] | None = None
) -> Iterator[LeaseKeeper]:
    """Run the body with a heartbeat. Raises RunCancelled or LeaseLost if the keeper fired, exactly once."""
    keeper = LeaseKeeper(renew, interval, on_tick)
    keeper.start()
    try:
        yield keeper
    finally:
        keeper.stop()
        if keeper.reason is not None:
            # The interrupt may still be pending (the body finished first): clear it and raise it here instead,
            # so it cannot land later in the caller's bookkeeping.
            _set_async_exc(keeper._target, None)
            raise _INTERRUPTS[keeper.reason]()
