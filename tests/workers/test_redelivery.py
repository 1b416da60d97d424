"""Workers die and messages come twice; runs still finish with every item exactly once (style guides 16, 17).

- A worker is SIGKILLed in the middle of a generation shard, its replacement in the middle of SFT; a third
  worker finishes the run: the shard's finished items are kept, SFT resumes from its newest step checkpoint.
- A second delivery of a training task that finds a live lease retries (it does not train a second copy),
  and takes the lease over once the first holder stops heartbeating.

    python -m pytest tests/workers/test_redelivery.py -q
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from service_fixtures import (
    REPO,
    TINY_RUN,
    Service,
    auth,
    check_run_integrity,
    claim_stage,
    kill_group,
    make_run,
    renew_stage,
    wait_for,
)
from sqlalchemy import select

from rlaif.service import execute, state
from rlaif.service.db import EventRow, RunRow, ShardRow, StageRunRow

pytestmark = pytest.mark.slow

# One prompt per generate call (items are stored one by one) and a long SFT with a checkpoint every 2 steps.
SLOW_STAGES = {
    "critique": {"batch_size": 1, "rounds": 1, "sampling": {"max_new_tokens": 16}},
    "sft": {"epochs": 30, "checkpoint_every": 2},
}


def _state(rt: state.Runtime, run_id: str, stage: str) -> tuple[StageRunRow, list[ShardRow]]:
    with rt.sessions() as session:
        row = session.scalars(select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == stage)).one()
        shards = session.scalars(select(ShardRow).where(ShardRow.stage_run_id == row.id).order_by(ShardRow.index)).all()
        return row, list(shards)


def _messages(rt: state.Runtime, run_id: str) -> list[str]:
    with rt.sessions() as session:
        return list(session.scalars(select(EventRow.message).where(EventRow.run_id == run_id).order_by(EventRow.id)))


def _run_status(rt: state.Runtime, run_id: str) -> str:
    with rt.sessions() as session:
        run = session.get(RunRow, run_id)
        assert run is not None
        return run.status


def test_killed_workers_lose_nothing(make_service, service_tiny_model: str) -> None:
    from api.main import create_app

    service: Service = make_service("sqlite")
    rt = state.Runtime.from_settings(service.settings())
    first = service.start_worker("w1")
    with TestClient(create_app(service.settings())) as api:
        con = api.post("/v1/constitutions", content=(REPO / "constitutions/minimal.yaml").read_bytes(), headers=auth())
        prompts = (REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:8]
        files = {"file": ("p.jsonl", "\n".join(prompts).encode(), "application/x-ndjson")}
        prompt_set = api.post("/v1/prompt-sets", files=files, headers=auth()).json()
        config = {**TINY_RUN, **SLOW_STAGES, "sft": {**TINY_RUN["sft"], **SLOW_STAGES["sft"]}}
        request = {"constitution_id": con.json()["id"], "prompt_set_id": prompt_set["id"], "config": config}
        run_id = api.post("/v1/runs", json=request, headers=auth()).json()["id"]

    # 1. Kill the first worker once its first shard has stored an item but before the shard is done.
    def mid_shard() -> bool:
        stage, shards = _state(rt, run_id, "critique")
        return stage.done >= 1 and any(s.status == "running" for s in shards) and stage.shards_done == 0

    wait_for(mid_shard, 120, "a critique shard with some items done", interval=0.05)
    kill_group(first)
    stage, shards = _state(rt, run_id, "critique")
    interrupted = next(s for s in shards if s.status == "running")
    done_at_kill = stage.done
    assert 1 <= done_at_kill < interrupted.size

    # 2. A replacement (with the periodic sweep) picks the shard up once its lease is stale; kill it mid-SFT.
    second = service.start_worker("w2", beat=True)
    steps = service.artifacts / "runs" / run_id / "sft" / "steps"
    wait_for(lambda: list(steps.glob("step-*")), 180, "an SFT step checkpoint")
    kill_group(second)
    assert not (steps.parent / "model").exists()  # killed mid-training, before the model was saved
    sft, _ = _state(rt, run_id, "sft")
    assert sft.status == "running"

    # 3. A third worker finishes the run: SFT resumes from its newest step state instead of starting over.
    service.start_worker("w3", beat=True)
    wait_for(lambda: _run_status(rt, run_id) in ("succeeded", "failed"), 300, "the run to finish")
    check_run_integrity(service, run_id)  # every item once, in the DB and the exports
    assert f"critique shard {interrupted.index}: {interrupted.size} items, {done_at_kill} already done" in service.log(
        "w2"
    )
    assert "resumed from step state" in service.log("w3")
    _, shards = _state(rt, run_id, "critique")
    assert shards[interrupted.index].attempts == 2
    sft, _ = _state(rt, run_id, "sft")
    assert sft.attempts == 2 and sft.done == sft.total
    messages = _messages(rt, run_id)
    # (The dead worker's messages come back through the control sweep or Redis' visibility timeout, whichever is
    # first; the lease makes the later copy a no-op.)
    assert "stage sft: stale lease taken over; resuming from the newest checkpoint" in messages


def test_a_second_delivery_waits_for_a_live_lease(make_service, service_tiny_model: str) -> None:
    service: Service = make_service("postgresql")
    rt = state.Runtime.from_settings(service.settings())
    run_id = make_run(rt, {"critique": {"sampling": {"max_new_tokens": 4}}})
    # Bring the run to a running SFT stage in this process, then hold its lease as another (live) worker.
    pending = execute.advance(rt, run_id)
    for dispatch in pending:
        pending += execute.run_shard(rt, *dispatch.args, owner="test") if dispatch.task != state.ADVANCE else []
    assert execute.advance(rt, run_id) == [state.Dispatch("train.sft", (run_id, "sft"))]
    assert claim_stage(rt, run_id, "sft", "live-elsewhere")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.5):
            renew_stage(rt, run_id, "sft", "live-elsewhere")

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    try:
        service.start_worker("w1")
        from workers.app import create_celery

        create_celery(service.settings()).send_task("train.sft", args=[run_id, "sft"])
        wait_for(lambda: service.log("w1").count("is leased by a live worker; retrying in 4 s") >= 2, 60, "two retries")
        sft, _ = _state(rt, run_id, "sft")
        assert (sft.lease_owner, sft.attempts) == ("live-elsewhere", 1)  # no second copy trained meanwhile
        assert not (service.artifacts / "runs" / run_id / "sft" / "metrics.jsonl").exists()
    finally:
        stop.set()
        beating.join()
    # The holder stops heartbeating (it died): the retried message takes over and the run goes on to the end.
    wait_for(lambda: _run_status(rt, run_id) in ("succeeded", "failed"), 240, "the run to finish")
    check_run_integrity(service, run_id)
    sft, _ = _state(rt, run_id, "sft")
    assert sft.attempts == 2
    assert "stage sft: stale lease taken over; resuming from the newest checkpoint" in _messages(rt, run_id)


def test_a_broker_restart_loses_messages_but_not_the_run(make_service, redis_server, service_tiny_model: str) -> None:
    """Redis restarts without persistence mid-stage: queued shards are gone; the control sweep re-enqueues them."""
    service: Service = make_service("sqlite", visibility_timeout_s=10)
    rt = state.Runtime.from_settings(service.settings())
    run_id = make_run(rt, {"critique": {"batch_size": 1, "sampling": {"max_new_tokens": 16}}})
    from workers.app import create_celery

    service.start_worker("w1", beat=True)
    create_celery(service.settings()).send_task(state.ADVANCE, args=[run_id])
    wait_for(lambda: _state(rt, run_id, "critique")[0].done >= 1, 120, "the first critique item", interval=0.05)
    redis_server.restart()  # shard 1's message, queued behind shard 0, is lost with everything else
    wait_for(lambda: _run_status(rt, run_id) in ("succeeded", "failed"), 240, "the run to finish")
    check_run_integrity(service, run_id)
    assert "shard 1: message lost; re-enqueued" in _messages(rt, run_id)
