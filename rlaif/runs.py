"""The life cycle of a run on the run store, without Celery: create, advance, shards, training leases, sweep.

Every function here takes ids, re-reads the rows it needs and returns the tasks to enqueue next as `Dispatch`
values; the Celery tasks in workers/ only send them. So the whole state machine can be driven (and tested)
by plain Python, and a redelivered task finds its work done and does nothing:

- `advance(rt, run_id)`: export a stage whose shards are all done, start the next pending stage, or mark the
  run succeeded. Stage starts are compare-and-set (pending -> running), so two advances never start a stage twice.
- `run_shard(rt, run_id, stage, index, owner)`: take the shard's lease, skip items already in the store, write
  each new item once (UNIQUE(run, stage, item_id)); the last shard to finish flips the stage to `completing`
  under a row lock and asks for an advance.
- `run_training(rt, run_id, stage, owner)`: a single-task stage (training, or the evaluation): take the stage's
  lease (a live lease held by someone else raises `LeaseBusy`: retry later), heartbeat while the core runs (it
  resumes from its newest step checkpoint, or finds its report done), register the model folder as a checkpoint
  (the evaluation instead refreshes the final policy's checkpoint, whose card it rewrote), ask for an advance.
- `sweep(rt)`: re-enqueue running shards and stages whose heartbeat went stale (their worker died).
- `delete_run(session, store, run, lease_ttl_s)`: remove a stopped run's rows and artifact folder (none of its
  workers may still hold a live lease); a message still queued for it then finds no run and does nothing.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from rlaif import executors
from rlaif.budget import RunBudget, estimate_budget
from rlaif.config import RunConfig, stored_run_config
from rlaif.constitution import Constitution
from rlaif.db import (
    CANCELLED,
    COMPLETING,
    DONE,
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    CheckpointRow,
    ConstitutionRow,
    EventRow,
    ItemRow,
    PromptSetRow,
    RunRow,
    ShardRow,
    StageRunRow,
    get_engine,
    insert_ignore,
    new_id,
    session_factory,
    utcnow,
)
from rlaif.evaluation.judge_gate import GateReport
from rlaif.leases import LeaseState, StageInterrupted, keep_lease
from rlaif.pipeline import plan, policy_stage, spec_of
from rlaif.prompts import split_holdout
from rlaif.records import PromptItem
from rlaif.settings import Settings
from rlaif.stages import (
    CONFIG_FILE,
    CONSTITUTION_FILE,
    EVAL_PROMPTS_FILE,
    INPUTS,
    MODEL_DIR,
    PROMPTS_FILE,
    StageResult,
)
from rlaif.store import (
    ArtifactStore,
    StoreError,
    atomic_write_json,
    folder_bytes,
    read_manifest,
    write_jsonl,
    write_manifest,
)
from rlaif.truncation import LongItems

log = logging.getLogger(__name__)

ADVANCE = "control.advance"


@dataclass(frozen=True)
class Dispatch:
    """A task to enqueue: its name (the prefix is the queue) and positional arguments (ids only)."""

    task: str
    args: tuple[Any, ...]


class LeaseBusy(Exception):
    """A live worker holds the lease of this stage or shard: this delivery should retry after `countdown` s."""

    def __init__(self, what: str, countdown: float):
        self.countdown = countdown
        super().__init__(f"{what} is leased by a live worker; retrying in {countdown:.0f} s")


@dataclass(frozen=True)
class Runtime:
    """What the state machine needs: sessions on the run store, the artifact store and the lease timings."""

    sessions: sessionmaker[Session]
    store: ArtifactStore
    lease_ttl_s: float
    heartbeat_s: float
    requeue_after_s: float = 3600.0  # unclaimed work is re-enqueued after this (the broker's visibility timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(
            sessions=session_factory(get_engine(settings.db_url)),
            store=ArtifactStore(settings.artifacts_dir),
            lease_ttl_s=settings.lease_ttl_s,
            heartbeat_s=settings.heartbeat_s,
            requeue_after_s=settings.visibility_timeout_s,
        )

    def stale_before(self) -> Any:
        return utcnow() - timedelta(seconds=self.lease_ttl_s)


def worker_identity(task_id: str | None) -> str:
    """Lease owner of one delivery: host, process and task id (a redelivery elsewhere is a different owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or '-'}"


# ---------------------------------------------------------------- events


def add_long_items_event(session: Session, run_id: str, stage: str, result: StageResult) -> None:
    """A warning event naming the items a stage cut to fit the context (rlaif/truncation.py), when there are any."""
    raw = result.extra.get("long_items")
    if not raw:
        return
    parts = {"": raw} if "truncated" in raw else raw  # one LongItems, or {part: LongItems} (evaluate)
    for part, value in parts.items():
        items = LongItems.model_validate(value)
        if items.truncated or items.skipped:
            where = f" ({part})" if part else ""
            add_event(
                session,
                run_id,
                f"stage {stage}{where}: {items.summary()}",
                stage=stage,
                level="warning",
                data=items.model_dump(),
            )


def add_event(
    session: Session,
    run_id: str,
    message: str,
    *,
    stage: str | None = None,
    level: str = "info",
    kind: str = "message",
    step: int | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(EventRow(run_id=run_id, stage=stage, kind=kind, level=level, message=message, step=step, data=data))


def record_event(rt: Runtime, run_id: str, message: str, **kwargs: Any) -> None:
    with rt.sessions.begin() as session:
        add_event(session, run_id, message, **kwargs)


# ---------------------------------------------------------------- creating a run


def create_run(
    session: Session,
    store: ArtifactStore,
    *,
    owner: str,
    constitution: ConstitutionRow,
    prompt_set: PromptSetRow,
    cfg: RunConfig,
    admit: Callable[[RunBudget], None] | None = None,
) -> RunRow:
    """Pin the inputs of a new run in `<run>/inputs/` (manifest last) and add its rows; the caller commits.

    `admit` gets the run's estimated budget once the prompts are split, before anything is written; it raises to
    refuse the run (the API checks the server's run limits and the key's quotas there).
    """
    items = [PromptItem.model_validate(row) for row in prompt_set.items]
    train, held_out = split_holdout(items, cfg.eval.holdout_fraction, cfg.seed)
    if not train:
        raise ValueError(f"prompt set {prompt_set.id} leaves no training prompts after holding out evaluation prompts")
    if admit is not None:
        admit(estimate_budget(cfg, len(train), len(held_out)))
    run_id = new_id("run")
    inputs = store.stage_dir(run_id, INPUTS)
    write_jsonl(inputs / PROMPTS_FILE, train)
    write_jsonl(inputs / EVAL_PROMPTS_FILE, held_out)
    atomic_write_json(inputs / CONSTITUTION_FILE, constitution.document)
    atomic_write_json(inputs / CONFIG_FILE, cfg.model_dump(mode="json"))
    write_manifest(inputs, {"constitution_sha256": constitution.sha256, "prompt_set": prompt_set.id})
    run = RunRow(
        id=run_id,
        owner=owner,
        status=QUEUED,
        constitution_id=constitution.id,
        constitution_sha256=constitution.sha256,
        prompt_set_id=prompt_set.id,
        config_json=cfg.model_dump_json(),
        train_prompts=len(train),
        eval_prompts=len(held_out),
    )
    session.add(run)
    session.flush()  # the run row first: stage and event rows reference it
    for position, spec in enumerate(plan(cfg)):
        session.add(
            StageRunRow(
                run_id=run_id,
                name=spec.name,
                kind=spec.kind,
                position=position,
                iteration=spec.iteration,
                task=spec.task,
                status=PENDING,
            )
        )
    add_event(session, run_id, f"run created: {len(train)} training prompts, {len(held_out)} held out for evaluation")
    return run


def stage_context(rt: Runtime, run_id: str, stage: str) -> executors.StageContext:
    """Re-read the run's frozen config (upgraded from the version it was stored with) and pinned constitution
    (style guide 6)."""
    with rt.sessions() as session:
        run = session.get(RunRow, run_id)
        if run is None:
            raise ValueError(f"run {run_id} does not exist")
        cfg = stored_run_config(run.config_json)
    constitution_path = rt.store.stage_dir(run_id, INPUTS, create=False) / CONSTITUTION_FILE
    constitution = Constitution.model_validate_json(constitution_path.read_text(encoding="utf-8"))
    return executors.StageContext(
        run_id=run_id, spec=spec_of(cfg, stage), cfg=cfg, store=rt.store, constitution=constitution
    )


def _stage(session: Session, run_id: str, stage: str, lock: bool = False) -> StageRunRow:
    query = select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == stage)
    row = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise ValueError(f"run {run_id} has no stage {stage!r}")
    return row


def _stages(session: Session, run_id: str) -> list[StageRunRow]:
    query = select(StageRunRow).where(StageRunRow.run_id == run_id).order_by(StageRunRow.position)
    return list(session.scalars(query))


# ---------------------------------------------------------------- advancing


def advance(rt: Runtime, run_id: str) -> list[Dispatch]:
    """Export finished sharded stages, then start the next pending stage or finish the run."""
    while True:
        with rt.sessions.begin() as session:
            run = session.get(RunRow, run_id, with_for_update=True)
            if run is None or run.status in TERMINAL:
                return []
            next_stage = None
            for stage in _stages(session, run_id):
                if stage.status == SUCCEEDED:
                    continue
                next_stage = stage if stage.status in (PENDING, COMPLETING) else None
                break
            else:
                run.status, run.finished_at = SUCCEEDED, utcnow()
                add_event(session, run_id, "run succeeded")
                log.info("run %s succeeded", run_id)
                return []
            if next_stage is None:  # a stage is running (or failed, and the run is being failed)
                return []
            name, status = next_stage.name, next_stage.status
        if status == PENDING:
            return _start_stage(rt, run_id, name)
        _export_stage(rt, run_id, name)


def _start_stage(rt: Runtime, run_id: str, stage: str) -> list[Dispatch]:
    ctx = stage_context(rt, run_id, stage)
    items = executors.stage_inputs(ctx) if ctx.spec.sharded else []
    shard_size = ctx.cfg.shard_size
    n_shards = math.ceil(len(items) / shard_size)
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id, with_for_update=True)
        row = _stage(session, run_id, stage, lock=True)
        if run is None or run.status in TERMINAL or row.status != PENDING:
            return []  # another advance started it first
        now = utcnow()
        if run.status == QUEUED:
            run.status, run.started_at = RUNNING, now
        row.status, row.started_at = RUNNING, now
        if ctx.spec.sharded:
            row.total, row.shards_total = len(items), n_shards
            for index in range(n_shards):
                size = min(shard_size, len(items) - index * shard_size)
                session.add(ShardRow(stage_run_id=row.id, index=index, size=size))
            if n_shards == 0:
                row.status = COMPLETING
            message = f"stage {stage} started: {len(items)} items in {n_shards} shards of up to {shard_size}"
        else:
            message = f"stage {stage} started"
        add_event(session, run_id, message, stage=stage)
    log.info("run %s: %s", run_id, message)
    if ctx.spec.sharded:
        if n_shards == 0:
            return [Dispatch(ADVANCE, (run_id,))]
        return [Dispatch(ctx.spec.task, (run_id, stage, index)) for index in range(n_shards)]
    return [Dispatch(ctx.spec.task, (run_id, stage))]


def _export_stage(rt: Runtime, run_id: str, stage: str) -> None:
    """Write a completed sharded stage's items, in id order, to its JSONL artifacts (manifest last)."""
    ctx = stage_context(rt, run_id, stage)
    with rt.sessions() as session:
        query = select(ItemRow.payload).where(ItemRow.run_id == run_id, ItemRow.stage == stage)
        payloads = list(session.scalars(query.order_by(ItemRow.item_id)))
    result = executors.export_stage(ctx, payloads)
    with rt.sessions.begin() as session:
        row = _stage(session, run_id, stage, lock=True)
        if row.status != COMPLETING:
            return
        row.status, row.finished_at = SUCCEEDED, utcnow()
        row.done, row.result = len(payloads), result.model_dump(mode="json")
        add_event(session, run_id, f"stage {stage} succeeded: {result.counts}", stage=stage, data=result.counts)
        add_long_items_event(session, run_id, stage, result)
        gate = GateReport.model_validate(result.extra["gate"]) if "gate" in result.extra else None
        if gate is not None and not gate.passed:
            # Shown by `rlaif watch` and in the report; with judge.gate.action=stop the run ends here, before any
            # policy trains on the labels.
            level = "error" if gate.stops else "warning"
            add_event(session, run_id, gate.message(stage), stage=stage, level=level, data=gate.model_dump())
    log.info("run %s: stage %s exported %d items", run_id, stage, len(payloads))
    if gate is not None and gate.stops:  # the next stage (reward model or DPO) fails, naming the gate
        fail(rt, run_id, None, gate.message(stage))


# ---------------------------------------------------------------- shards


def run_shard(rt: Runtime, run_id: str, stage: str, index: int, owner: str) -> list[Dispatch]:
    """Process one shard of a sharded stage (see the module docstring)."""
    shard_id = _claim_shard(rt, run_id, stage, index, owner)
    if shard_id is None:
        return []
    ctx = stage_context(rt, run_id, stage)
    items = executors.stage_inputs(ctx, shard=index)
    with rt.sessions() as session:
        query = select(ItemRow.item_id).where(
            ItemRow.run_id == run_id, ItemRow.stage == stage, ItemRow.item_id.in_([item.id for item in items])
        )
        finished = set(session.scalars(query))
    todo = [item for item in items if item.id not in finished]
    log.info("run %s: %s shard %d: %d items, %d already done", run_id, stage, index, len(items), len(finished))
    try:
        with keep_lease(lambda: _renew_shard(rt, run_id, shard_id, owner), rt.heartbeat_s):
            for record in executors.run_shard(ctx, todo, index):
                _record_item(rt, run_id, stage, record)
    except StageInterrupted as exc:
        log.warning("run %s: %s shard %d stopped: %s", run_id, stage, index, exc.reason)
        _release(rt, ShardRow, ShardRow.id == shard_id, owner)
        return []
    return [Dispatch(ADVANCE, (run_id,))] if _finish_shard(rt, run_id, stage, index, owner) else []


def _claim_shard(rt: Runtime, run_id: str, stage: str, index: int, owner: str) -> int | None:
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id)
        if run is None or run.status in TERMINAL:  # gone (another run store's message) or finished
            return None
        row = _stage(session, run_id, stage)
        if row.status != RUNNING:
            return None
        shard = session.scalars(select(ShardRow).where(ShardRow.stage_run_id == row.id, ShardRow.index == index)).one()
        if shard.status == DONE:
            return None
        claimed = session.execute(
            update(ShardRow)
            .where(
                ShardRow.id == shard.id,
                ShardRow.status != DONE,
                or_(
                    ShardRow.lease_owner.is_(None),
                    ShardRow.lease_owner == owner,
                    ShardRow.heartbeat_at < rt.stale_before(),
                ),
            )
            .values(
                lease_owner=owner,
                heartbeat_at=utcnow(),
                status=RUNNING,
                attempts=ShardRow.attempts + 1,
                started_at=func.coalesce(ShardRow.started_at, utcnow()),
            )
        ).rowcount
        if not claimed:
            raise LeaseBusy(f"run {run_id} stage {stage} shard {index}", rt.lease_ttl_s)
        if shard.lease_owner not in (None, owner):
            add_event(session, run_id, f"shard {index}: stale lease taken over", stage=stage, level="warning")
        return shard.id


def _renew_shard(rt: Runtime, run_id: str, shard_id: int, owner: str) -> LeaseState:
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id)
        if run is None or run.status in TERMINAL:
            return "cancelled"
        renewed = session.execute(
            update(ShardRow).where(ShardRow.id == shard_id, ShardRow.lease_owner == owner).values(heartbeat_at=utcnow())
        ).rowcount
        return "ok" if renewed else "lost"


def _record_item(rt: Runtime, run_id: str, stage: str, record: BaseModel) -> bool:
    """Write one output record once; True when it was new."""
    with rt.sessions.begin() as session:
        row = {"run_id": run_id, "stage": stage, "item_id": record.id, "payload": record.model_dump(mode="json")}  # type: ignore[attr-defined]
        inserted = insert_ignore(session, ItemRow, [row], unique=["run_id", "stage", "item_id"])
        if inserted:
            session.execute(
                update(StageRunRow)
                .where(StageRunRow.run_id == run_id, StageRunRow.name == stage)
                .values(done=StageRunRow.done + inserted)
            )
        return bool(inserted)


def _finish_shard(rt: Runtime, run_id: str, stage: str, index: int, owner: str) -> bool:
    """Mark the shard done; True when it was the last one (the stage is now `completing`)."""
    with rt.sessions.begin() as session:
        row = _stage(session, run_id, stage, lock=True)  # serialises the last finishers
        finished = session.execute(
            update(ShardRow)
            .where(ShardRow.stage_run_id == row.id, ShardRow.index == index, ShardRow.status != DONE)
            .values(status=DONE, finished_at=utcnow(), lease_owner=None)
        ).rowcount
        if not finished:
            return False
        row.shards_done += 1
        add_event(session, run_id, f"shard {index} done ({row.shards_done}/{row.shards_total})", stage=stage)
        if row.shards_done < row.shards_total or row.status != RUNNING:
            return False
        row.status = COMPLETING
        return True


# ---------------------------------------------------------------- training stages


def run_training(rt: Runtime, run_id: str, stage: str, owner: str) -> list[Dispatch]:
    """Run one single-task stage (training or evaluate) under a lease (see the module docstring)."""
    if not _claim_stage(rt, run_id, stage, owner):
        return []
    ctx = stage_context(rt, run_id, stage)
    with rt.sessions() as session:  # a worker taking over continues the metrics events where the last one stopped
        query = select(func.max(EventRow.step)).where(
            EventRow.run_id == run_id, EventRow.stage == stage, EventRow.kind == "metrics"
        )
        last_step = session.scalar(query) or 0
    tail = executors.MetricsTail(ctx, last_step)
    progress = lambda: _training_progress(rt, run_id, stage, tail)  # noqa: E731
    try:
        with keep_lease(lambda: _renew_stage(rt, run_id, stage, owner), rt.heartbeat_s, on_tick=progress):
            result = executors.train_stage(ctx)
    except StageInterrupted as exc:
        log.warning("run %s: stage %s stopped: %s", run_id, stage, exc.reason)
        _release(rt, StageRunRow, (StageRunRow.run_id == run_id) & (StageRunRow.name == stage), owner)
        return []
    progress()
    return [Dispatch(ADVANCE, (run_id,))] if _finish_training(rt, run_id, stage, owner, result) else []


def _claim_stage(rt: Runtime, run_id: str, stage: str, owner: str) -> bool:
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id)
        if run is None or run.status in TERMINAL:  # gone (another run store's message) or finished
            return False
        row = _stage(session, run_id, stage)
        if row.status != RUNNING:
            return False
        previous = row.lease_owner
        claimed = session.execute(
            update(StageRunRow)
            .where(
                StageRunRow.id == row.id,
                StageRunRow.status == RUNNING,
                or_(
                    StageRunRow.lease_owner.is_(None),
                    StageRunRow.lease_owner == owner,
                    StageRunRow.heartbeat_at < rt.stale_before(),
                ),
            )
            .values(lease_owner=owner, heartbeat_at=utcnow(), attempts=StageRunRow.attempts + 1)
        ).rowcount
        if not claimed:
            raise LeaseBusy(f"run {run_id} stage {stage}", rt.lease_ttl_s)
        if previous not in (None, owner):
            add_event(
                session,
                run_id,
                f"stage {stage}: stale lease taken over; resuming from the newest checkpoint",
                stage=stage,
                level="warning",
            )
        return True


def _renew_stage(rt: Runtime, run_id: str, stage: str, owner: str) -> LeaseState:
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id)
        if run is None or run.status in TERMINAL:
            return "cancelled"
        renewed = session.execute(
            update(StageRunRow)
            .where(StageRunRow.run_id == run_id, StageRunRow.name == stage, StageRunRow.lease_owner == owner)
            .values(heartbeat_at=utcnow())
        ).rowcount
        return "ok" if renewed else "lost"


def _training_progress(rt: Runtime, run_id: str, stage: str, tail: executors.MetricsTail) -> None:
    """Copy new metrics lines of the stage into events and its done/total counters."""
    copied_up_to = tail.last_step
    lines = tail.read_new()
    if not lines and tail.total is None:
        return
    try:
        _store_progress(rt, run_id, stage, tail, lines)
    except Exception:
        tail.last_step = copied_up_to  # the database was unreachable: copy these lines again next time
        raise


def _store_progress(
    rt: Runtime, run_id: str, stage: str, tail: executors.MetricsTail, lines: list[tuple[int, dict[str, Any]]]
) -> None:
    with rt.sessions.begin() as session:
        for step, metrics in lines:
            add_event(session, run_id, "", stage=stage, kind="metrics", step=step, data=metrics)
        values: dict[str, Any] = {"total": tail.total}
        if lines:
            values["done"] = lines[-1][0]
        session.execute(
            update(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == stage).values(**values)
        )


def _finish_training(rt: Runtime, run_id: str, stage: str, owner: str, result: StageResult) -> bool:
    model_dir = rt.store.stage_dir(run_id, stage) / MODEL_DIR
    manifest = read_manifest(model_dir)
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id)
        row = _stage(session, run_id, stage, lock=True)
        if run is None or row.status != RUNNING or row.lease_owner != owner:
            return False  # cancelled meanwhile, or another worker owns it now
        now = utcnow()
        row.status, row.finished_at, row.lease_owner = SUCCEEDED, now, None
        row.result = result.model_dump(mode="json")
        if row.total is None and "prompts" in result.counts:  # evaluate: no steps, show the prompts it answered
            row.total = result.counts["prompts"]
        if row.total is not None:
            row.done = row.total
        if row.kind == "evaluate":
            policy = policy_stage(stored_run_config(run.config_json), row.iteration)
            _refresh_checkpoint(rt, session, run_id, policy, result.metrics)
        if manifest is not None:
            step = int(result.counts.get("steps", result.counts.get("updates", row.done)))
            session.add(
                CheckpointRow(
                    id=new_id("ckpt"),
                    run_id=run_id,
                    owner=run.owner,
                    stage=stage,
                    step=step,
                    path=model_dir.relative_to(rt.store.root).as_posix(),
                    metrics=result.metrics,
                    files=manifest["files"],
                )
            )
        add_event(session, run_id, f"stage {stage} succeeded", stage=stage, data=result.metrics or None)
        add_long_items_event(session, run_id, stage, result)
    log.info("run %s: stage %s succeeded", run_id, stage)
    return True


def _refresh_checkpoint(rt: Runtime, session: Session, run_id: str, stage: str, metrics: dict[str, float]) -> None:
    """A checkpoint's row after its folder was rewritten (the evaluate stage's model card): files from the new
    manifest, so downloads verify; the evaluation's metrics next to the stage's own."""
    for row in session.scalars(
        select(CheckpointRow).where(CheckpointRow.run_id == run_id, CheckpointRow.stage == stage)
    ):
        manifest = read_manifest(artifact_path(rt.store, row.path))
        if manifest is None:
            raise StoreError(f"checkpoint {row.id} ({row.path}) has lost its manifest")
        row.files = manifest["files"]
        row.metrics = {**row.metrics, **metrics}


def _release(rt: Runtime, table: type[ShardRow] | type[StageRunRow], where: Any, owner: str) -> None:
    """Give up a lease this worker still holds, so a resumed run need not wait for it to go stale."""
    try:
        with rt.sessions.begin() as session:
            session.execute(update(table).where(where, table.lease_owner == owner).values(lease_owner=None))
    except Exception as exc:  # (the database is unreachable: the lease goes stale after lease_ttl_s instead)
        log.warning("could not release the lease of %s: %s", owner, exc)


# ---------------------------------------------------------------- failure, cancellation, resume, sweep


def fail(rt: Runtime, run_id: str, stage: str | None, reason: str) -> None:
    """Mark the stage (default: the first unfinished one) and the run failed with a readable reason."""
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id, with_for_update=True)
        if run is None or run.status in TERMINAL:
            return
        stages = _stages(session, run_id)
        row = next((s for s in stages if s.name == stage), None) or next(
            (s for s in stages if s.status != SUCCEEDED), None
        )
        now = utcnow()
        if row is not None:
            row.status, row.error, row.finished_at, row.lease_owner = FAILED, reason, now, None
        where = f"stage {row.name}: " if row is not None else ""
        run.status, run.error, run.finished_at = FAILED, f"{where}{reason}", now
        add_event(session, run_id, f"run failed: {where}{reason}", stage=row.name if row else None, level="error")
    log.error("run %s failed: %s%s", run_id, f"{stage}: " if stage else "", reason)


def mark_failed(rt: Runtime, run_id: str, reason: str) -> bool:
    """The run row's status, error and finish time only, in one statement that names no other column or table:
    the fallback of a `fail` that could not write (the schema lacks a column it reads). True if it marked it."""
    with rt.sessions.begin() as session:
        statement = (
            update(RunRow)
            .where(RunRow.id == run_id, RunRow.status.not_in(TERMINAL))
            .values(status=FAILED, error=reason, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        marked = bool(session.execute(statement).rowcount)
    log.error("run %s marked failed: %s", run_id, reason)
    return marked


def cancel(session: Session, run: RunRow) -> bool:
    """Cancel a run that has not finished (False if it had); running workers stop at their next heartbeat."""
    if run.status in TERMINAL:
        return False
    now = utcnow()
    run.status, run.finished_at, run.error = CANCELLED, now, "cancelled by the user"
    for row in _stages(session, run.id):
        if row.status not in (SUCCEEDED, FAILED):
            row.status, row.finished_at = CANCELLED, now
    add_event(session, run.id, "run cancelled", level="warning")
    return True


class ResumeRefused(Exception):
    """The run cannot be resumed now: it has not stopped, or a worker still holds one of its leases."""

    def __init__(self, reason: str, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(reason)


def resume(session: Session, run: RunRow, lease_ttl_s: float) -> list[Dispatch]:
    """Continue a failed or cancelled run from where it stopped; the tasks to enqueue. The caller commits.

    Succeeded stages are kept. The stage that stopped goes on from what it had: a sharded stage re-runs only
    its unfinished shards (and those skip their stored items), a training stage resumes from its newest step
    checkpoint (`run_training`). Later stages start from the beginning, as in a new run.
    """
    if run.status not in (FAILED, CANCELLED):
        raise ResumeRefused(f"run {run.id} is {run.status}: only failed or cancelled runs can be resumed")
    stages = _stages(session, run.id)
    stale = utcnow() - timedelta(seconds=lease_ttl_s)
    leased: list[tuple[str, Any]] = [
        (f"stage {row.name}", row.heartbeat_at) for row in stages if row.lease_owner is not None
    ]
    shards_of: dict[int, list[ShardRow]] = {
        row.id: list(session.scalars(select(ShardRow).where(ShardRow.stage_run_id == row.id).order_by(ShardRow.index)))
        for row in stages
        if row.status != SUCCEEDED and row.shards_total
    }
    leased += [
        (f"stage {row.name} shard {shard.index}", shard.heartbeat_at)
        for row in stages
        for shard in shards_of.get(row.id, [])
        if shard.lease_owner is not None and shard.status != DONE
    ]
    for what, heartbeat_at in leased:
        if heartbeat_at is not None and heartbeat_at >= stale:
            wait = lease_ttl_s - (utcnow() - heartbeat_at).total_seconds()
            raise ResumeRefused(f"run {run.id}: a worker is still stopping ({what}); retry shortly", max(1.0, wait))
    now = utcnow()
    out: list[Dispatch] = []
    resumed_at: str | None = None
    for row in stages:
        if row.status == SUCCEEDED:
            continue
        row.error, row.finished_at, row.lease_owner = None, None, None
        if row.started_at is None or resumed_at is not None:
            row.status = PENDING  # never started (or after the stopped stage): starts afresh
            continue
        resumed_at = row.name
        if row.kind in executors.SINGLE_TASK_KINDS:
            row.status, row.requeued_at = RUNNING, now
            out.append(Dispatch(row.task, (run.id, row.name)))
            continue
        unfinished = [shard for shard in shards_of.get(row.id, []) if shard.status != DONE]
        for shard in unfinished:
            shard.lease_owner, shard.requeued_at = None, now
            out.append(Dispatch(row.task, (run.id, row.name, shard.index)))
        row.status = RUNNING if unfinished else COMPLETING
        if not unfinished:
            out.append(Dispatch(ADVANCE, (run.id,)))  # every shard was done: the export is what is left
    if resumed_at is None:
        out.append(Dispatch(ADVANCE, (run.id,)))  # stopped between stages: start the next one
    previous = run.status
    run.status = RUNNING if run.started_at is not None else QUEUED
    run.error, run.finished_at = None, None
    where = f" from stage {resumed_at}" if resumed_at else ""
    add_event(session, run.id, f"run resumed{where} (it was {previous})")
    log.info("run %s resumed%s", run.id, where)
    return out


class DeleteRefused(Exception):
    """The run cannot be deleted now: it has not stopped, or a worker still holds one of its leases."""

    def __init__(self, reason: str, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(reason)


def delete_run(session: Session, store: ArtifactStore, run: RunRow, lease_ttl_s: float) -> int:
    """Remove a run that has stopped (succeeded, failed or cancelled): its rows and its artifact folder (inputs,
    datasets, checkpoints, logs). Returns the bytes freed. Commits.

    Refused while the run is queued or running (cancel it first), and while a worker that is stopping still holds
    a fresh lease on one of its stages or shards (it may still write into the folder). The folder is renamed
    aside before the rows go and removed after they are committed: a failure in between puts it back, so a run
    is either whole or gone.
    """
    if run.status not in TERMINAL:
        raise DeleteRefused(f"run {run.id} is {run.status}: cancel it first (POST /v1/runs/{run.id}/cancel)")
    stage_ids = select(StageRunRow.id).where(StageRunRow.run_id == run.id)
    stale = utcnow() - timedelta(seconds=lease_ttl_s)
    heartbeats = [
        *session.scalars(
            select(StageRunRow.heartbeat_at).where(StageRunRow.run_id == run.id, StageRunRow.lease_owner.is_not(None))
        ),
        *session.scalars(
            select(ShardRow.heartbeat_at).where(ShardRow.stage_run_id.in_(stage_ids), ShardRow.lease_owner.is_not(None))
        ),
    ]
    live = [beat for beat in heartbeats if beat is not None and beat >= stale]
    if live:
        wait = lease_ttl_s - (utcnow() - max(live)).total_seconds()
        raise DeleteRefused(f"run {run.id}: a worker is still stopping; retry shortly", max(1.0, wait))
    folder = store.run_dir(run.id)
    aside = folder.with_name(f".{folder.name}.deleting-{os.getpid()}")
    freed = folder_bytes(folder)
    if folder.exists():
        os.replace(folder, aside)
    try:
        session.execute(delete(ShardRow).where(ShardRow.stage_run_id.in_(stage_ids)))
        for table in (ItemRow, EventRow, CheckpointRow, StageRunRow):
            session.execute(delete(table).where(table.run_id == run.id))
        session.delete(run)
        session.commit()
    except BaseException:
        session.rollback()
        if aside.exists():
            os.replace(aside, folder)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    log.info("run %s deleted: %d bytes freed", run.id, freed)
    return freed


def sweep(rt: Runtime) -> list[Dispatch]:
    """Re-enqueue work whose message is gone: held by a dead worker, or lost by a broker that restarted.

    - A running shard or training stage whose heartbeat is older than the lease TTL: its worker died.
    - A shard or training stage that nobody took for `requeue_after_s` (the visibility timeout, after which
      Redis itself would have redelivered an unacknowledged message): its message was lost.
    - A stage whose shards all finished, or a run with nothing running: its advance message was lost.
    Each is re-enqueued at most once per lease TTL; duplicates are harmless (leases, finished-work checks).
    """
    now = utcnow()
    stale, lost = rt.stale_before(), now - timedelta(seconds=rt.requeue_after_s)
    out: list[Dispatch] = []
    with rt.sessions.begin() as session:
        for run in session.scalars(select(RunRow).where(RunRow.status.in_((QUEUED, RUNNING)))).all():
            stages = _stages(session, run.id)
            for row in stages:
                if row.status == COMPLETING:
                    out.append(Dispatch(ADVANCE, (run.id,)))
                if row.status != RUNNING:
                    continue
                if row.kind in executors.SINGLE_TASK_KINDS:
                    units = [(row, (run.id, row.name), f"stage {row.name}")]
                else:
                    query = select(ShardRow).where(ShardRow.stage_run_id == row.id, ShardRow.status != DONE)
                    units = [
                        (shard, (run.id, row.name, shard.index), f"shard {shard.index}")
                        for shard in session.scalars(query)
                    ]
                for unit, args, what in units:
                    why = _requeue_reason(unit, row.started_at, stale, lost)
                    if why is not None:
                        unit.requeued_at = now
                        out.append(Dispatch(row.task, args))
                        add_event(session, run.id, f"{what}: {why}; re-enqueued", stage=row.name, level="warning")
            if not any(row.status in (RUNNING, COMPLETING) for row in stages):
                out.append(Dispatch(ADVANCE, (run.id,)))  # an advance message was lost
    return out


def _requeue_reason(unit: StageRunRow | ShardRow, started_at: Any, stale: Any, lost: Any) -> str | None:
    """Why a stage or shard needs a new message (None if it does not); at most once per lease TTL."""
    if unit.requeued_at is not None and unit.requeued_at >= stale:
        return None
    if unit.lease_owner is not None:
        return "worker lost" if unit.heartbeat_at is not None and unit.heartbeat_at < stale else None
    waiting_since = unit.requeued_at or started_at
    return "message lost" if waiting_since is not None and waiting_since < lost else None


def artifact_path(store: ArtifactStore, relative: str) -> Path:
    """An artifact path stored relative to the root, checked to stay inside it."""
    return store.inside(store.root / relative)
