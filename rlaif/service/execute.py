"""Runs claimed work through the stage contract (rlaif/stages/contract.py): shards, single-task stages, exports.

- `run_shard(rt, run_id, stage, index, owner)`: claim the shard's lease, read the shard's slice of the stage's
  items (`read_items`), skip the ones already stored, run `process` on the rest and store each record once
  (UNIQUE(run, stage, item_id)); the last shard to finish flips the stage to `completing` and asks for an advance.
- `advance(rt, run_id)`: the state machine's next step (rlaif/service/state.py) carried out: start a stage (a
  sharded one counted with `read_items`), or export one whose shards are done with the stage's own `write` over
  the stored records; repeated until a stage is running or the run has ended.
- `run_training(rt, run_id, stage, owner)`: a single-task stage (training, or the evaluation) under the stage's
  lease: its `run_<stage>(ctx)` resumes from its newest step checkpoint (or finds its work done); a finished model
  folder is registered as a checkpoint (the evaluation instead refreshes the final policy's checkpoint, whose card
  it rewrote). With RLAIF_TRAIN_DEVICES > 1 a stage that runs data-parallel runs on that many local ranks under
  torchrun (rlaif/service/ranks.py); this task keeps the lease and relays rank 0's steps and the stop.

Stops are cooperative: the heartbeat thread (rlaif/service/claims.py) only records why the work must stop, and
the core raises `StageStopped` at its next check (between two records of a shard, two optimizer steps of a
training stage). Training progress comes from the core's `on_step` hook, buffered and written as metrics events
on each heartbeat, with the total the core itself computed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from rlaif.config import EvalConfig, RunConfig
from rlaif.constitution import Constitution
from rlaif.evaluation.head_to_head import HeadToHead, HeadToHeadState, needs_judge, pair_answers
from rlaif.evaluation.report import ANSWERS_FILE, EvalReport, Sample, load_report
from rlaif.peak_memory import records_peak_rss
from rlaif.pipeline import EVALUATE_STAGE, TRAINING, StageSpec, spec_of, upstream
from rlaif.service import claims, head_to_head, ranks
from rlaif.service.claims import Heartbeat, Unit
from rlaif.service.db import (
    COMPLETING,
    DONE,
    RUNNING,
    SUCCEEDED,
    CheckpointRow,
    EventRow,
    ItemRow,
    RunRow,
    ShardRow,
    StageRunRow,
    insert_ignore,
    new_id,
    utcnow,
)
from rlaif.service.state import (
    ADVANCE,
    Dispatch,
    Runtime,
    add_backend_event,
    add_event,
    add_long_items_event,
    add_usage_event,
    fail,
    finished_item_ids,
    finished_items,
    next_step,
    run_config,
    stage_exported,
    stage_row,
    start_stage,
)
from rlaif.stages import CONSTITUTION_FILE, INPUTS, METRICS_FILE, MODEL_DIR, StageResult
from rlaif.stages.contract import ShardedStage, StageContext, StageHooks, StageStopped
from rlaif.store import ArtifactStore, StoreError, read_jsonl, read_manifest

log = logging.getLogger(__name__)


def stage_module(spec: StageSpec) -> Any:
    """The stage's module, named by the closed stage table (rlaif/pipeline.py), never by user input."""
    return importlib.import_module(f"rlaif.stages.{spec.definition.module}")


def stage_context(rt: Runtime, run_id: str, stage: str, hooks: StageHooks | None = None) -> StageContext:
    """The run's frozen config (from its row, upgraded from the version it was stored with) and its pinned
    constitution (style guide 6), for one stage."""
    cfg = run_config(rt, run_id)
    constitution_path = rt.store.stage_dir(run_id, INPUTS, create=False) / CONSTITUTION_FILE
    constitution = Constitution.model_validate_json(constitution_path.read_text(encoding="utf-8"))
    return StageContext(
        run_id=run_id,
        spec=spec_of(cfg, stage),
        cfg=cfg,
        store=rt.store,
        constitution=constitution,
        hooks=hooks or StageHooks(),
    )


# ---------------------------------------------------------------- advancing


def advance(rt: Runtime, run_id: str) -> list[Dispatch]:
    """Export finished sharded stages, then start the next pending stage or finish the run."""
    while True:
        step = next_step(rt, run_id)
        if step.action == "none" or step.stage is None:
            return []
        ctx = stage_context(rt, run_id, step.stage)
        if step.action == "start":
            n_items = len(stage_module(ctx.spec).read_items(ctx)) if ctx.spec.sharded else None
            return start_stage(rt, run_id, step.stage, n_items)
        export_stage(rt, ctx)


def export_stage(rt: Runtime, ctx: StageContext) -> None:
    """The stage's own `write` over its stored records (in item order, as `run_<stage>` writes them), then the
    stage is marked succeeded; a judge gate that says stop fails the run before any policy trains on the labels."""
    stage: ShardedStage = stage_module(ctx.spec)
    order = [item.id for item in stage.read_items(ctx)]
    by_id = {
        payload["id"]: stage.RECORD.model_validate(payload) for payload in finished_items(rt, ctx.run_id, ctx.name)
    }
    missing = [item_id for item_id in order if item_id not in by_id]
    if missing:
        raise StoreError(f"run {ctx.run_id}: stage {ctx.name} is completing but {len(missing)} items have no record")
    result = stage.write(ctx, [by_id[item_id] for item_id in order])
    gate = stage_exported(rt, ctx.run_id, ctx.name, result.model_copy(update={"stage": ctx.name}))
    log.info("run %s: stage %s exported %d items", ctx.run_id, ctx.name, len(order))
    if gate is not None and gate.stops:  # the next stage (reward model or DPO) fails, naming the gate
        fail(rt, ctx.run_id, None, gate.message(ctx.name))


# ---------------------------------------------------------------- shards


def run_shard(rt: Runtime, run_id: str, stage: str, index: int, owner: str) -> list[Dispatch]:
    """Process one shard of a sharded stage (see the module docstring)."""
    unit = Unit(run_id, stage, index)
    shard_id = claims.claim(rt.sessions, unit, owner, rt.lease_ttl_s)
    if shard_id is None:
        return []
    with _heartbeat(rt, unit, shard_id, owner) as hooks:
        ctx = stage_context(rt, run_id, stage, hooks)
        module = stage_module(ctx.spec)
        shard_size = ctx.cfg.shard_size
        items = module.read_items(ctx, index * shard_size, (index + 1) * shard_size)
        finished = finished_item_ids(rt, run_id, stage, [item.id for item in items])
        todo = [item for item in items if item.id not in finished]
        log.info("run %s: %s shard %d: %d items, %d already done", run_id, stage, index, len(items), len(finished))
        try:
            for record in module.process(ctx, todo):
                _record_item(rt, run_id, stage, record)
                hooks.check()
        except StageStopped as exc:
            log.warning("run %s: %s shard %d stopped: %s", run_id, stage, index, exc.reason)
            claims.release(rt.sessions, unit, shard_id, owner)
            return []
    return [Dispatch(ADVANCE, (run_id,))] if _finish_shard(rt, run_id, stage, index) else []


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


def _finish_shard(rt: Runtime, run_id: str, stage: str, index: int) -> bool:
    """Mark the shard done; True when it was the last one (the stage is now `completing`)."""
    with rt.sessions.begin() as session:
        row = stage_row(session, run_id, stage, lock=True)  # serialises the last finishers
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


# ---------------------------------------------------------------- single-task stages


def run_training(rt: Runtime, run_id: str, stage: str, owner: str) -> list[Dispatch]:
    """Run one single-task stage (training or evaluate) under a lease (see the module docstring)."""
    unit = Unit(run_id, stage)
    stage_id = claims.claim(rt.sessions, unit, owner, rt.lease_ttl_s)
    if stage_id is None:
        return []
    progress = _Progress(rt, run_id, stage)
    with _heartbeat(rt, unit, stage_id, owner, on_tick=progress.flush) as hooks:
        hooks.on_progress = progress.add
        ctx = stage_context(rt, run_id, stage, hooks)
        curve = ctx.out_dir / METRICS_FILE if METRICS_FILE in ctx.spec.definition.writes else None
        # Steps an earlier attempt logged but could not report (killed between heartbeats) come first, in order.
        progress.add_logged(curve)
        try:
            result = _run_stage(rt, ctx)
        except StageStopped as exc:
            log.warning("run %s: stage %s stopped: %s", run_id, stage, exc.reason)
            with contextlib.suppress(Exception):  # (unreachable database: the next attempt reports them from the log)
                progress.flush()
            claims.release(rt.sessions, unit, stage_id, owner)
            return []
    progress.add_logged(curve)  # a redelivered task whose core found its model finished reports no steps itself
    progress.flush()
    return [Dispatch(ADVANCE, (run_id,))] if _finish_training(rt, run_id, stage, owner, result) else []


def _run_stage(rt: Runtime, ctx: StageContext) -> StageResult:
    """The stage's `run_<stage>(ctx)`: in this process, or with RLAIF_TRAIN_DEVICES > 1 on that many data-parallel
    ranks under torchrun (rlaif/service/ranks.py: this task keeps the lease and relays progress and stops)."""
    module = stage_module(ctx.spec)
    spread = rt.train_devices > 1 and ctx.spec.kind in TRAINING  # (the evaluation trains nothing: no event for it)
    reason = ranks.single_process_reason(module, ctx) if spread else None
    if spread:
        message = (
            f"stage {ctx.name}: on {rt.train_devices} data-parallel ranks"
            if reason is None
            else f"stage {ctx.name}: in one process, not on {rt.train_devices} ranks: {reason}"
        )
        log.info("run %s: %s", ctx.run_id, message)
        with rt.sessions.begin() as session:
            add_event(session, ctx.run_id, message, stage=ctx.name, data={"ranks": 1 if reason else rt.train_devices})
        if reason is None:
            return ranks.run_ranks(ctx, rt.train_devices)  # (rank 0 records its peak memory)
    # (the stage's peak memory goes into its result: `rlaif compare` shows it next to the wall time)
    return records_peak_rss(getattr(module, ctx.spec.definition.run))(ctx)


class _Progress:
    """Training steps reported by the core's on_step hook, written as metrics events (and the stage's done/total)
    on each heartbeat. Steps a previous worker already recorded are skipped: a resumed core repeats the steps
    after its last checkpoint."""

    def __init__(self, rt: Runtime, run_id: str, stage: str) -> None:
        self.rt, self.run_id, self.stage = rt, run_id, stage
        self._lock = threading.Lock()
        self._pending: list[tuple[int, dict[str, float]]] = []
        self._total: int | None = None
        with rt.sessions() as session:
            query = select(func.max(EventRow.step)).where(
                EventRow.run_id == run_id, EventRow.stage == stage, EventRow.kind == "metrics"
            )
            self._last_step = session.scalar(query) or 0

    def add(self, step: int, total: int | None, metrics: dict[str, float]) -> None:
        with self._lock:
            self._total = total
            if step > self._last_step:
                self._pending.append((step, dict(metrics)))
                self._last_step = step

    def add_logged(self, path: Path | None) -> None:
        """The steps of the stage's own metrics log (the curve the core wrote, metrics.jsonl) not reported yet: what
        an earlier attempt trained but could not report before it died, or a finished stage's whole curve."""
        if path is None or not path.is_file():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # (a line cut short by a crash)
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                metrics = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
                self.add(record["step"], self._total, metrics)

    def flush(self) -> None:
        with self._lock:
            pending, total = self._pending, self._total
            self._pending = []
        if not pending and total is None:
            return
        try:
            with self.rt.sessions.begin() as session:
                for step, metrics in pending:
                    add_event(session, self.run_id, "", stage=self.stage, kind="metrics", step=step, data=metrics)
                values: dict[str, Any] = {} if total is None else {"total": total}
                if pending:
                    values["done"] = pending[-1][0]
                if values:
                    session.execute(
                        update(StageRunRow)
                        .where(StageRunRow.run_id == self.run_id, StageRunRow.name == self.stage)
                        .values(**values)
                    )
        except Exception:
            with self._lock:  # the database was unreachable: write these steps next time
                self._pending = pending + self._pending
            raise


def _finish_training(rt: Runtime, run_id: str, stage: str, owner: str, result: StageResult) -> bool:
    model_dir = rt.store.stage_dir(run_id, stage) / MODEL_DIR
    manifest = read_manifest(model_dir)
    cfg = run_config(rt, run_id)
    spec = spec_of(cfg, stage)
    refreshes = spec.definition.refreshes  # the evaluation rewrote the final policy's card
    rewritten = upstream(cfg, spec, refreshes) if refreshes is not None else None
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id)
        row = stage_row(session, run_id, stage, lock=True)
        if run is None or row.status != RUNNING or row.lease_owner != owner:
            return False  # cancelled meanwhile, or another worker owns it now
        now = utcnow()
        row.status, row.finished_at, row.lease_owner = SUCCEEDED, now, None
        row.result = result.model_dump(mode="json")
        if row.total is None and "prompts" in result.counts:  # evaluate: no steps, show the prompts it answered
            row.total = result.counts["prompts"]
        if row.total is not None:
            row.done = row.total
        if rewritten is not None:
            _refresh_checkpoint(rt, session, run_id, rewritten, result.metrics)
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
        add_usage_event(session, run_id, stage, result)
        add_backend_event(session, run_id, stage, result)
        add_long_items_event(session, run_id, stage, result)
    log.info("run %s: stage %s succeeded", run_id, stage)
    return True


def _refresh_checkpoint(rt: Runtime, session: Session, run_id: str, stage: str, metrics: dict[str, float]) -> None:
    """A checkpoint's row after its folder was rewritten (the evaluate stage's model card): files from the new
    manifest, so downloads verify; the evaluation's metrics next to the stage's own."""
    for row in session.scalars(
        select(CheckpointRow).where(CheckpointRow.run_id == run_id, CheckpointRow.stage == stage)
    ):
        manifest = read_manifest(rt.store.artifact(row.path))
        if manifest is None:
            raise StoreError(f"checkpoint {row.id} ({row.path}) has lost its manifest")
        row.files = manifest["files"]
        row.metrics = {**row.metrics, **metrics}


# ---------------------------------------------------------------- helpers


@contextmanager
def _heartbeat(rt: Runtime, unit: Unit, row_id: int, owner: str, on_tick: Any = None) -> Iterator[StageHooks]:
    """A heartbeat on the unit's lease for the body, and the hooks whose stop check reads it."""
    heartbeat = Heartbeat(lambda: claims.renew(rt.sessions, unit, row_id, owner), rt.heartbeat_s, on_tick)
    with heartbeat:
        yield StageHooks(should_stop=lambda: heartbeat.stop_reason)


# ---------------------------------------------------------------- head to head


def _eval_answers(store: ArtifactStore, run_id: str) -> list[Sample]:
    path = store.stage_dir(run_id, EVALUATE_STAGE, create=False) / ANSWERS_FILE
    if not path.is_file():
        raise StoreError(f"run {run_id}: its evaluation wrote no {ANSWERS_FILE}")
    return read_jsonl(path, Sample)


def _head_to_head_config(cfg: RunConfig, report: EvalReport) -> RunConfig:
    """Run A's config with the evaluation settings its report was judged with (the same principles per pair,
    tie margin and resamples as its own win rates)."""
    try:
        return cfg.model_copy(update={"eval": EvalConfig.model_validate(report.config)})
    except ValueError:  # (a report of an older rlaif: the run's stored eval section is the next best)
        return cfg


def run_head_to_head(rt: Runtime, a: str, b: str, progress: bool = False) -> HeadToHeadState:
    """Judge run A's evaluated answers against run B's and write the result (rlaif/service/head_to_head.py);
    a result already done for these two evaluations is returned as it is (a redelivered message)."""
    # Imported here, as the stage modules are (stage_module): torch loads when a task judges, not when a worker starts.
    from rlaif.evaluation.compare import judge_head_to_head
    from rlaif.judging.judge import cached_judge
    from rlaif.stages.judge import judge_generator

    store = rt.store
    for run_id in (a, b):
        run_config(rt, run_id)  # re-fetched: both runs must still exist (ValueError otherwise)
    found = head_to_head.current(store, a, b)
    if found is not None and found.status == "done":
        log.info("head to head %s vs %s is already judged; not judging again", a, b)
        return found
    report_a, report_b = load_report(store, a, EVALUATE_STAGE), load_report(store, b, EVALUATE_STAGE)
    state = HeadToHeadState(
        run_ids=(a, b),
        status="running",
        reports={a: report_a.created_at, b: report_b.created_at},
        queued_at=found.queued_at if found is not None else None,
        started_at=head_to_head.now(),
    )
    head_to_head.write_state(store, state)
    cfg = _head_to_head_config(run_config(rt, a), report_a)
    constitution_path = store.stage_dir(a, INPUTS, create=False) / CONSTITUTION_FILE
    constitution = Constitution.model_validate_json(constitution_path.read_text(encoding="utf-8"))
    role_a, role_b = report_a.top_model, report_b.top_model
    pairs = pair_answers(_eval_answers(store, a), _eval_answers(store, b), role_a, role_b)
    judge_name = report_a.judge_model
    judge, tokenizer, generator = None, None, None
    if needs_judge(pairs):
        log.info("head to head %s vs %s: %d shared prompts, judge %s", a, b, len(pairs.prompts), judge_name)
        # The judge stage's loader: in process, or the endpoint with its cache and usage next to the result.
        judge, tokenizer = cached_judge(judge_name, cfg.judge.dtype, stage_dir=store.stage_dir(a, head_to_head.FOLDER))
        if cfg.judge.chain_of_thought:
            generator = judge_generator(judge, tokenizer, judge_name, cfg.generation.batch_size)
    axes = judge_head_to_head(pairs, judge, tokenizer, constitution, cfg, generator=generator, progress=progress)  # type: ignore[arg-type]
    differ = report_b.judge_model != judge_name
    result = HeadToHead(
        run_a=a,
        run_b=b,
        role_a=role_a,
        role_b=role_b,
        judge_model=judge_name,
        judge_model_b=report_b.judge_model,
        note=f"the runs' judges differ: judged by run {a}'s ({judge_name}), not run {b}'s ({report_b.judge_model})"
        if differ
        else None,
        prompts=len(pairs.prompts),
        mismatched=pairs.mismatched,
        axes=axes,
    )
    state = state.model_copy(update={"status": "done", "finished_at": head_to_head.now(), "result": result})
    head_to_head.write_state(store, state)
    return state
