"""The run state machine on the run store (database only; the one part of the service the API imports): create,
the next step of a run, start a stage, mark an export done, fail, cancel, resume, delete, sweep.

Every function takes ids, re-reads the rows it needs and returns the tasks to enqueue next as `Dispatch` values;
the Celery tasks in workers/ only send them, and the work itself (shards, training, exports) is
rlaif/service/execute.py. So the whole state machine can be driven (and tested) by plain Python, and a
redelivered task finds its work done and does nothing:

- `next_step(rt, run_id)`: start the first pending stage, export a sharded stage whose shards are all done, or
  mark the run succeeded (execute.advance carries them out). Stage starts are compare-and-set (pending ->
  running), so two advances never start a stage twice.
- `sweep(rt)`: re-enqueue running shards and stages whose heartbeat went stale (their worker died), and work whose
  message was lost.
- `resume(session, run, lease_ttl_s)`: continue a failed or cancelled run from where it stopped.
- `delete_run(session, store, run, lease_ttl_s)`: remove a stopped run's rows and artifact folder (none of its
  workers may still hold a live lease); a message still queued for it then finds no run and does nothing.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, NamedTuple

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from rlaif.budget import RunBudget, estimate_budget
from rlaif.config import RunConfig, stored_run_config
from rlaif.endpoints import describe_usage
from rlaif.evaluation.judge_gate import GateReport
from rlaif.pipeline import SINGLE_TASK, plan, spec_of
from rlaif.prompts import split_holdout
from rlaif.records import PromptItem
from rlaif.service.db import (
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
    new_id,
    session_factory,
    utcnow,
)
from rlaif.settings import Settings
from rlaif.stages import (
    CONFIG_FILE,
    CONSTITUTION_FILE,
    EVAL_PROMPTS_FILE,
    INPUTS,
    PROMPTS_FILE,
    StageResult,
)
from rlaif.store import (
    ArtifactStore,
    atomic_write_json,
    folder_bytes,
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


@dataclass(frozen=True)
class Runtime:
    """What the state machine needs: sessions on the run store, the artifact store and the lease timings."""

    sessions: sessionmaker[Session]
    store: ArtifactStore
    lease_ttl_s: float
    heartbeat_s: float
    requeue_after_s: float = 3600.0  # unclaimed work is re-enqueued after this (the broker's visibility timeout)
    train_devices: int = 1  # data-parallel ranks of a training stage (RLAIF_TRAIN_DEVICES; rlaif/service/ranks.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(
            sessions=session_factory(get_engine(settings.db_url)),
            store=ArtifactStore(settings.artifacts_dir),
            lease_ttl_s=settings.lease_ttl_s,
            heartbeat_s=settings.heartbeat_s,
            requeue_after_s=settings.visibility_timeout_s,
            train_devices=settings.train_devices,
        )

    def stale_before(self) -> Any:
        return utcnow() - timedelta(seconds=self.lease_ttl_s)


def worker_identity(task_id: str | None) -> str:
    """Lease owner of one delivery: host, process and task id (a redelivery elsewhere is a different owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or '-'}"


# ---------------------------------------------------------------- events


def add_usage_event(session: Session, run_id: str, stage: str, result: StageResult) -> None:
    """One event per role whose endpoint the stage called (GET /v1/runs/{id}/events): its requests and tokens in
    words and as data ({role, endpoint, requests, cached, retries, prompt_tokens, completion_tokens, cost})."""
    for role, total in sorted((result.extra.get("usage") or {}).items()):
        add_event(
            session, run_id, f"stage {stage}: {describe_usage(role, total)}", stage=stage, data={"role": role, **total}
        )


def add_backend_event(session: Session, run_id: str, stage: str, result: StageResult) -> None:
    """An event saying which engine a stage generated with and why (rlaif/generation/backend_choice.py), when the
    stage generates: data {backend, reason}."""
    if "backend" not in result.extra:
        return
    backend, reason = result.extra["backend"], result.extra.get("backend_reason", "")
    add_event(
        session,
        run_id,
        f"stage {stage}: generated with {backend} ({reason})",
        stage=stage,
        data={"backend": backend, "reason": reason},
    )


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


def run_config(rt: Runtime, run_id: str) -> RunConfig:
    """The run's frozen config, upgraded from the version it was stored with (style guide 6)."""
    with rt.sessions() as session:
        run = session.get(RunRow, run_id)
        if run is None:
            raise ValueError(f"run {run_id} does not exist")
        return stored_run_config(run.config_json)


def stage_row(session: Session, run_id: str, stage: str, lock: bool = False) -> StageRunRow:
    query = select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == stage)
    row = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise ValueError(f"run {run_id} has no stage {stage!r}")
    return row


def stage_rows(session: Session, run_id: str) -> list[StageRunRow]:
    query = select(StageRunRow).where(StageRunRow.run_id == run_id).order_by(StageRunRow.position)
    return list(session.scalars(query))


# ---------------------------------------------------------------- advancing


class NextStep(NamedTuple):
    """What `next_step` found a run needs: start a pending stage, export a sharded stage whose shards are all done,
    or nothing (a stage is running, or the run has ended: `stage` None)."""

    action: Literal["start", "export", "none"]
    stage: str | None = None


def next_step(rt: Runtime, run_id: str) -> NextStep:
    """The first unfinished stage's next step, or finish the run when every stage succeeded."""
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id, with_for_update=True)
        if run is None or run.status in TERMINAL:
            return NextStep("none")
        for stage in stage_rows(session, run_id):
            if stage.status == SUCCEEDED:
                continue
            if stage.status == PENDING:
                return NextStep("start", stage.name)
            if stage.status == COMPLETING:
                return NextStep("export", stage.name)
            return NextStep("none")  # a stage is running (or failed, and the run is being failed)
        run.status, run.finished_at = SUCCEEDED, utcnow()
        add_event(session, run_id, "run succeeded")
        log.info("run %s succeeded", run_id)
        return NextStep("none")


def start_stage(rt: Runtime, run_id: str, stage: str, n_items: int | None) -> list[Dispatch]:
    """Start a pending stage (compare-and-set: two advances never start it twice); a sharded stage (`n_items` its
    item count) gets its shard rows. The tasks to enqueue."""
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id, with_for_update=True)
        row = stage_row(session, run_id, stage, lock=True)
        if run is None or run.status in TERMINAL or row.status != PENDING:
            return []  # another advance started it first
        spec = spec_of(stored_run_config(run.config_json), stage)
        shard_size = stored_run_config(run.config_json).shard_size
        now = utcnow()
        if run.status == QUEUED:
            run.status, run.started_at = RUNNING, now
        row.status, row.started_at = RUNNING, now
        n_shards = 0
        if n_items is not None:
            n_shards = math.ceil(n_items / shard_size)
            row.total, row.shards_total = n_items, n_shards
            for index in range(n_shards):
                session.add(
                    ShardRow(stage_run_id=row.id, index=index, size=min(shard_size, n_items - index * shard_size))
                )
            if n_shards == 0:
                row.status = COMPLETING
            message = (
                f"stage {stage} started: {n_items} {spec.definition.unit} in {n_shards} shards of up to {shard_size}"
            )
        else:
            message = f"stage {stage} started"
        add_event(session, run_id, message, stage=stage)
    log.info("run %s: %s", run_id, message)
    if n_items is None:
        return [Dispatch(spec.task, (run_id, stage))]
    if n_shards == 0:
        return [Dispatch(ADVANCE, (run_id,))]
    return [Dispatch(spec.task, (run_id, stage, index)) for index in range(n_shards)]


def finished_items(rt: Runtime, run_id: str, stage: str, item_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The stored output records of a sharded stage in item-id order (only `item_ids` when given)."""
    with rt.sessions() as session:
        query = select(ItemRow.payload).where(ItemRow.run_id == run_id, ItemRow.stage == stage)
        if item_ids is not None:
            query = query.where(ItemRow.item_id.in_(list(item_ids)))
        return list(session.scalars(query.order_by(ItemRow.item_id)))


def finished_item_ids(rt: Runtime, run_id: str, stage: str, item_ids: Sequence[str]) -> set[str]:
    with rt.sessions() as session:
        query = select(ItemRow.item_id).where(
            ItemRow.run_id == run_id, ItemRow.stage == stage, ItemRow.item_id.in_(list(item_ids))
        )
        return set(session.scalars(query))


def stage_exported(rt: Runtime, run_id: str, stage: str, result: StageResult) -> GateReport | None:
    """Mark a completing sharded stage succeeded with the result of its export; the judge gate's report when the
    labels failed it (then a warning or, with judge.gate.action=stop, an error event: the caller fails the run)."""
    gate = GateReport.model_validate(result.extra["gate"]) if "gate" in result.extra else None
    with rt.sessions.begin() as session:
        row = stage_row(session, run_id, stage, lock=True)
        if row.status != COMPLETING:
            return None
        row.status, row.finished_at = SUCCEEDED, utcnow()
        row.done, row.result = row.total or row.done, result.model_dump(mode="json")
        add_event(session, run_id, f"stage {stage} succeeded: {result.counts}", stage=stage, data=result.counts)
        add_usage_event(session, run_id, stage, result)
        add_backend_event(session, run_id, stage, result)
        add_long_items_event(session, run_id, stage, result)
        if gate is None or gate.passed:
            return None
        # Shown by `rlaif watch` and in the report; with judge.gate.action=stop the run ends here, before any
        # policy trains on the labels.
        level = "error" if gate.stops else "warning"
        add_event(session, run_id, gate.message(stage), stage=stage, level=level, data=gate.model_dump())
    return gate


# ---------------------------------------------------------------- failure, cancellation, resume, sweep


def fail(rt: Runtime, run_id: str, stage: str | None, reason: str) -> None:
    """Mark the stage (default: the first unfinished one) and the run failed with a readable reason."""
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id, with_for_update=True)
        if run is None or run.status in TERMINAL:
            return
        stages = stage_rows(session, run_id)
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
    for row in stage_rows(session, run.id):
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
    stages = stage_rows(session, run.id)
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
        if row.kind in SINGLE_TASK:
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
            stages = stage_rows(session, run.id)
            for row in stages:
                if row.status == COMPLETING:
                    out.append(Dispatch(ADVANCE, (run.id,)))
                if row.status != RUNNING:
                    continue
                if row.kind in SINGLE_TASK:
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
