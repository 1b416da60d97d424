"""The run state machine (rlaif/service/state.py, execute.py, claims.py) without Celery: leases, shard bookkeeping, idempotent items, sweep, failure.

These drive the same functions the Celery tasks call, with two "workers" being two owner names.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from service_fixtures import claim_shard, claim_stage, make_run, renew_shard, renew_stage
from sqlalchemy import select, update

from rlaif.records import PromptItem
from rlaif.service import execute, state
from rlaif.service.claims import LeaseBusy
from rlaif.service.db import EventRow, ItemRow, RunRow, ShardRow, StageRunRow, utcnow


def _stage(rt: state.Runtime, run_id: str, name: str) -> StageRunRow:
    with rt.sessions() as session:
        return session.scalars(select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == name)).one()


def _age(rt: state.Runtime, model: type, seconds: float, **where: object) -> None:
    """Make heartbeats look `seconds` old (what a dead worker leaves behind)."""
    with rt.sessions.begin() as session:
        clauses = [getattr(model, k) == v for k, v in where.items()]
        session.execute(update(model).where(*clauses).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def _start_sft(rt: state.Runtime, run_id: str) -> None:
    """Put the run at a running sft stage without training anything (critique marked done by hand)."""
    with rt.sessions.begin() as session:
        session.execute(
            update(StageRunRow)
            .where(StageRunRow.run_id == run_id, StageRunRow.name == "critique")
            .values(status="succeeded")
        )
    assert execute.advance(rt, run_id) == [state.Dispatch("train.sft", (run_id, "sft"))]


def test_advance_fans_a_sharded_stage_out_once(rt: state.Runtime) -> None:
    run_id = make_run(rt)  # 8 prompts: 6 for training, 2 held out; shards of 3
    dispatches = execute.advance(rt, run_id)
    assert dispatches == [state.Dispatch("generate.critique_shard", (run_id, "critique", i)) for i in (0, 1)]
    assert execute.advance(rt, run_id) == []  # a second advance (a redelivery) starts nothing twice
    stage = _stage(rt, run_id, "critique")
    assert (stage.status, stage.total, stage.shards_total, stage.done) == ("running", 6, 2, 0)
    with rt.sessions() as session:
        assert session.get(RunRow, run_id).status == "running"


def test_each_shard_reads_its_own_slice_of_the_stage_input(rt: state.Runtime) -> None:
    """A shard parses only its items, not the whole input file (issue 16: each of 12,000,000 judge shards re-read
    the whole comparisons file); together the slices are the stage's items, in order."""
    run_id = make_run(rt, {"shard_size": 4}, n_prompts=12)  # 9 training prompts: shards of 4, 4 and 1
    ctx = execute.stage_context(rt, run_id, "critique")
    items = execute.stage_module(ctx.spec).read_items(ctx)
    slices = [
        execute.stage_module(ctx.spec).read_items(ctx, index * ctx.cfg.shard_size, (index + 1) * ctx.cfg.shard_size)
        for index in range(3)
    ]
    assert [len(s) for s in slices] == [4, 4, 1] and [item for s in slices for item in s] == items
    assert execute.stage_module(ctx.spec).read_items(ctx, 3 * ctx.cfg.shard_size, (3 + 1) * ctx.cfg.shard_size) == []


def test_a_live_training_lease_makes_a_second_delivery_wait_and_a_stale_one_is_taken_over(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    _start_sft(rt, run_id)
    assert claim_stage(rt, run_id, "sft", "worker-a")
    with pytest.raises(LeaseBusy) as busy:
        claim_stage(rt, run_id, "sft", "worker-b")
    assert busy.value.countdown == rt.lease_ttl_s  # below the visibility timeout, so the message stays alive
    assert renew_stage(rt, run_id, "sft", "worker-a") == "ok"
    _age(rt, StageRunRow, rt.lease_ttl_s + 1, run_id=run_id, name="sft")  # worker-a died
    assert claim_stage(rt, run_id, "sft", "worker-b")
    assert renew_stage(rt, run_id, "sft", "worker-a") == "lost"  # a paused worker-a learns it lost
    assert renew_stage(rt, run_id, "sft", "worker-b") == "ok"
    stage = _stage(rt, run_id, "sft")
    assert (stage.lease_owner, stage.attempts) == ("worker-b", 2)
    with rt.sessions() as session:
        messages = session.scalars(select(EventRow.message).where(EventRow.run_id == run_id)).all()
    assert "stage sft: stale lease taken over; resuming from the newest checkpoint" in messages


def test_shards_finish_once_and_the_last_one_completes_the_stage(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    execute.advance(rt, run_id)
    shard0 = claim_shard(rt, run_id, "critique", 0, "w1")
    assert shard0 is not None
    with pytest.raises(LeaseBusy):
        claim_shard(rt, run_id, "critique", 0, "w2")
    assert execute._finish_shard(rt, run_id, "critique", 0) is False  # 1 of 2
    assert execute._finish_shard(rt, run_id, "critique", 0) is False  # a redelivered finish counts once
    assert claim_shard(rt, run_id, "critique", 0, "w2") is None  # a finished shard is skipped
    assert claim_shard(rt, run_id, "critique", 1, "w2") is not None
    assert execute._finish_shard(rt, run_id, "critique", 1) is True  # the last one flips the stage
    stage = _stage(rt, run_id, "critique")
    assert (stage.status, stage.shards_done) == ("completing", 2)


def test_items_are_written_once(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    execute.advance(rt, run_id)
    record = PromptItem(id="p-1", prompt="same item, delivered twice")
    assert execute._record_item(rt, run_id, "critique", record) is True
    assert execute._record_item(rt, run_id, "critique", record) is False
    with rt.sessions() as session:
        rows = session.scalars(select(ItemRow).where(ItemRow.run_id == run_id)).all()
    assert [(r.item_id, r.payload) for r in rows] == [("p-1", record.model_dump())]
    assert _stage(rt, run_id, "critique").done == 1


def test_sweep_requeues_dead_workers_work_once_per_ttl(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    execute.advance(rt, run_id)
    claim_shard(rt, run_id, "critique", 1, "dead-worker")
    assert state.sweep(rt) == []  # a live heartbeat: nothing to do
    with rt.sessions() as session:
        stage_id = _stage(rt, run_id, "critique").id
        shard = session.scalars(select(ShardRow).where(ShardRow.stage_run_id == stage_id, ShardRow.index == 1)).one()
    _age(rt, ShardRow, rt.lease_ttl_s + 1, id=shard.id)
    assert state.sweep(rt) == [state.Dispatch("generate.critique_shard", (run_id, "critique", 1))]
    assert state.sweep(rt) == []  # re-enqueued already; not again until another TTL has passed
    # A stale training stage is re-enqueued too.
    other = make_run(rt)
    _start_sft(rt, other)
    claim_stage(rt, other, "sft", "dead-trainer")
    _age(rt, StageRunRow, rt.lease_ttl_s + 1, run_id=other, name="sft")
    assert state.Dispatch("train.sft", (other, "sft")) in state.sweep(rt)


def test_sweep_restarts_a_run_whose_advance_was_lost(rt: state.Runtime) -> None:
    run_id = make_run(rt)  # queued: its control.advance message never arrived
    assert state.sweep(rt) == [state.Dispatch("control.advance", (run_id,))]


def test_sweep_requeues_work_whose_message_the_broker_lost(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    execute.advance(rt, run_id)
    claim_shard(rt, run_id, "critique", 0, "alive")  # shard 0 is being worked on; shard 1 waits in the queue
    assert state.sweep(rt) == []  # waiting for less than the visibility timeout is normal
    with rt.sessions.begin() as session:  # ... but after it, a Redis restart without persistence lost the message
        session.execute(
            update(StageRunRow)
            .where(StageRunRow.run_id == run_id, StageRunRow.name == "critique")
            .values(started_at=utcnow() - timedelta(seconds=rt.requeue_after_s + 1))
        )
    assert state.sweep(rt) == [state.Dispatch("generate.critique_shard", (run_id, "critique", 1))]
    assert state.sweep(rt) == []
    with rt.sessions() as session:
        messages = session.scalars(select(EventRow.message).where(EventRow.run_id == run_id)).all()
    assert "shard 1: message lost; re-enqueued" in messages


def test_fail_marks_the_stage_and_the_run_with_the_reason(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    execute.advance(rt, run_id)
    state.fail(rt, run_id, None, "cannot load model 'x': no config.json")  # no stage named: the unfinished one
    with rt.sessions() as session:
        run = session.get(RunRow, run_id)
        assert (run.status, run.error) == ("failed", "stage critique: cannot load model 'x': no config.json")
    stage = _stage(rt, run_id, "critique")
    assert (stage.status, stage.error) == ("failed", "cannot load model 'x': no config.json")
    assert execute.advance(rt, run_id) == []  # a failed run does not move on
    assert renew_shard(rt, run_id, 1, "anyone") == "cancelled"  # running shards stop at their next heartbeat
