"""Leases on work: one claim / renew / release for shards and for single-task stages, and the heartbeat.

A shard row or a stage row carries `lease_owner` and `heartbeat_at`. A worker claims the unit (compare-and-set:
free, already ours, or its heartbeat older than the lease TTL), renews it every `heartbeat_s` from a `Heartbeat`
thread while the core runs, and releases it when it stops early. The heartbeat thread never touches the working
thread: when a renewal reports that the run was cancelled or that another worker took the lease over, it sets
`stop_reason`, and the core stops at its next check (`StageHooks.should_stop`: between two optimizer steps or two
batches; rlaif/stages/contract.py). Each tick also runs `on_tick` (copying buffered training progress into events).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from rlaif.service.db import DONE, RUNNING, TERMINAL, RunRow, ShardRow, StageRunRow, utcnow
from rlaif.service.state import add_event
from rlaif.stages.contract import StopReason

log = logging.getLogger(__name__)


class LeaseBusy(Exception):
    """A live worker holds the lease of this stage or shard: this delivery should retry after `countdown` s."""

    def __init__(self, what: str, countdown: float):
        self.countdown = countdown
        super().__init__(f"{what} is leased by a live worker; retrying in {countdown:.0f} s")


@dataclass(frozen=True)
class Unit:
    """A leased unit of work: a shard (`index` set) or a whole single-task stage of one run."""

    run_id: str
    stage: str
    index: int | None = None

    @property
    def table(self) -> type[ShardRow] | type[StageRunRow]:
        return StageRunRow if self.index is None else ShardRow

    def describe(self) -> str:
        where = f"run {self.run_id} stage {self.stage}"
        return where if self.index is None else f"{where} shard {self.index}"


def _row_id(session: Session, unit: Unit) -> int | None:
    """The id of the unit's row, or None when it has nothing to do (run gone or finished, stage not running, shard
    done)."""
    run = session.get(RunRow, unit.run_id)
    if run is None or run.status in TERMINAL:  # gone (another run store's message) or finished
        return None
    stage = session.scalars(
        select(StageRunRow).where(StageRunRow.run_id == unit.run_id, StageRunRow.name == unit.stage)
    ).one_or_none()
    if stage is None or stage.status != RUNNING:
        return None
    if unit.index is None:
        return stage.id
    shard = session.scalars(
        select(ShardRow).where(ShardRow.stage_run_id == stage.id, ShardRow.index == unit.index)
    ).one_or_none()
    return None if shard is None or shard.status == DONE else shard.id


def claim(sessions: sessionmaker[Session], unit: Unit, owner: str, lease_ttl_s: float) -> int | None:
    """Take the unit's lease: its row id, or None when there is nothing to do. A live lease held by another worker
    raises LeaseBusy; a stale one is taken over, with a warning event (the work resumes from what was stored)."""
    table = unit.table
    with sessions.begin() as session:
        row_id = _row_id(session, unit)
        if row_id is None:
            return None
        previous = session.scalar(select(table.lease_owner).where(table.id == row_id))
        stale = utcnow() - timedelta(seconds=lease_ttl_s)
        values: dict[str, Any] = {"lease_owner": owner, "heartbeat_at": utcnow(), "attempts": table.attempts + 1}
        claimable: ColumnElement[bool] = or_(
            table.lease_owner.is_(None), table.lease_owner == owner, table.heartbeat_at < stale
        )
        if table is ShardRow:
            values |= {"status": RUNNING, "started_at": func.coalesce(ShardRow.started_at, utcnow())}
            claimable = claimable & (ShardRow.status != DONE)
        else:
            claimable = claimable & (StageRunRow.status == RUNNING)
        if not session.execute(update(table).where(table.id == row_id, claimable).values(**values)).rowcount:
            raise LeaseBusy(unit.describe(), lease_ttl_s)
        if previous not in (None, owner):
            what = f"shard {unit.index}" if unit.index is not None else f"stage {unit.stage}"
            resumes = "" if unit.index is not None else "; resuming from the newest checkpoint"
            add_event(
                session, unit.run_id, f"{what}: stale lease taken over{resumes}", stage=unit.stage, level="warning"
            )
        return row_id


def renew(sessions: sessionmaker[Session], unit: Unit, row_id: int, owner: str) -> StopReason | None:
    """Move the heartbeat on; "cancelled" when the run has ended, "lost" when another worker owns the lease now."""
    with sessions.begin() as session:
        run = session.get(RunRow, unit.run_id)
        if run is None or run.status in TERMINAL:
            return "cancelled"
        table = unit.table
        renewed = session.execute(
            update(table).where(table.id == row_id, table.lease_owner == owner).values(heartbeat_at=utcnow())
        ).rowcount
        return None if renewed else "lost"


def release(sessions: sessionmaker[Session], unit: Unit, row_id: int, owner: str) -> None:
    """Give up a lease this worker still holds, so a resumed run need not wait for it to go stale."""
    table = unit.table
    try:
        with sessions.begin() as session:
            session.execute(
                update(table).where(table.id == row_id, table.lease_owner == owner).values(lease_owner=None)
            )
    except Exception as exc:  # (the database is unreachable: the lease goes stale after lease_ttl_s instead)
        log.warning("could not release the lease of %s: %s", owner, exc)


class Heartbeat:
    """A thread that calls `renew()` every `interval` seconds and records why the work must stop; it never
    interrupts the working thread (the core checks `stop_reason` through its hooks). `on_tick()` runs after each
    renewal."""

    def __init__(
        self,
        renew: Callable[[], StopReason | None],
        interval: float,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._on_tick = on_tick
        self._stop = threading.Event()
        self.stop_reason: StopReason | None = None
        self._thread = threading.Thread(target=self._loop, name="rlaif-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                reason = self._renew()
                if self._on_tick is not None:
                    self._on_tick()
            except Exception:  # the database is briefly unreachable: keep the work going and try again
                log.warning("lease heartbeat failed; retrying in %.0f s", self._interval, exc_info=True)
                continue
            if reason is not None:
                log.warning("stopping the running stage at its next step: %s", reason)
                self.stop_reason = reason
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)
