"""Resuming a failed or cancelled run (`rlaif.state.resume`, POST /v1/runs/{id}/resume) from its last stage and step.

- State machine: a run failed mid-shard resumes only its unfinished shards (finished items kept); a cancelled
  training stage is re-dispatched and later stages start afresh; running or finished runs are refused; a
  worker that has not let go of its lease yet makes the resume wait (409 with Retry-After).
- Service: a run cancelled in the middle of SFT is resumed through the API on a real worker: SFT continues
  from its newest step checkpoint (not from step 0), no metrics step is logged twice, and the run finishes
  with every item exactly once.

    python -m pytest tests/workers/test_resume.py -q
"""

from __future__ import annotations

from collections import Counter

import pytest
from fastapi.testclient import TestClient
from service_fixtures import (
    REPO,
    TINY_RUN,
    Service,
    auth,
    check_run_integrity,
    error_of,
    make_run,
    release_shard,
    renew_shard,
    wait_for,
)
from sqlalchemy import select, update

from rlaif.client import TERMINAL
from rlaif.service import execute, state
from rlaif.service.db import RunRow, ShardRow, StageRunRow


def _stage(rt: state.Runtime, run_id: str, name: str) -> StageRunRow:
    with rt.sessions() as session:
        return session.scalars(select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == name)).one()


def _resume(rt: state.Runtime, run_id: str) -> list[state.Dispatch]:
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id)
        assert run is not None
        return state.resume(session, run, rt.lease_ttl_s)


def test_a_run_failed_mid_shard_resumes_its_unfinished_shards(rt: state.Runtime) -> None:
    run_id = make_run(rt, {"critique": {"sampling": {"max_new_tokens": 2}}})  # 6 training prompts, shards of 3
    shard_tasks = execute.advance(rt, run_id)
    assert [d.args[2] for d in shard_tasks] == [0, 1]
    execute.run_shard(rt, run_id, "critique", 0, owner="w1")  # shard 0 finishes
    state.fail(rt, run_id, "critique", "OSError: [Errno 28] No space left on device")  # shard 1 never did
    with pytest.raises(state.ResumeRefused, match="only failed or cancelled runs"), rt.sessions.begin() as session:
        running = make_run(rt)
        state.resume(session, session.get(RunRow, running), rt.lease_ttl_s)  # type: ignore[arg-type]

    assert _resume(rt, run_id) == [state.Dispatch("generate.critique_shard", (run_id, "critique", 1))]
    with rt.sessions() as session:
        run = session.get(RunRow, run_id)
        assert run is not None and (run.status, run.error, run.finished_at) == ("running", None, None)
    stage = _stage(rt, run_id, "critique")
    assert (stage.status, stage.error, stage.done, stage.shards_done) == ("running", None, 3, 1)
    assert execute.run_shard(rt, run_id, "critique", 1, owner="w2") == [state.Dispatch(state.ADVANCE, (run_id,))]
    assert execute.advance(rt, run_id) == [state.Dispatch("train.sft", (run_id, "sft"))]  # exported, SFT next
    assert (_stage(rt, run_id, "critique").status, _stage(rt, run_id, "critique").done) == ("succeeded", 6)


def test_a_cancelled_training_stage_is_redispatched_and_later_stages_start_afresh(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    with rt.sessions.begin() as session:  # critique done by hand; SFT running, its worker stopped by the cancel
        session.execute(
            update(StageRunRow)
            .where(StageRunRow.run_id == run_id, StageRunRow.name == "critique")
            .values(status="succeeded")
        )
    assert execute.advance(rt, run_id) == [state.Dispatch("train.sft", (run_id, "sft"))]
    with rt.sessions.begin() as session:
        assert state.cancel(session, session.get(RunRow, run_id))  # type: ignore[arg-type]
    assert _resume(rt, run_id) == [state.Dispatch("train.sft", (run_id, "sft"))]
    statuses = {name: _stage(rt, run_id, name).status for name in ("critique", "sft", "pairs", "ppo", "evaluate")}
    assert statuses == {
        "critique": "succeeded",
        "sft": "running",
        "pairs": "pending",
        "ppo": "pending",
        "evaluate": "pending",
    }
    with pytest.raises(state.ResumeRefused, match="is running"):
        _resume(rt, run_id)


def test_a_worker_still_holding_a_lease_makes_the_resume_wait(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    execute.advance(rt, run_id)
    with rt.sessions.begin() as session:  # shard 0 is being worked on when the run is cancelled
        row = session.scalars(select(StageRunRow).where(StageRunRow.run_id == run_id)).first()
        assert row is not None
        session.execute(
            update(ShardRow).where(ShardRow.stage_run_id == row.id, ShardRow.index == 0).values(lease_owner="w1")
        )
    assert renew_shard(rt, run_id, _shard_id(rt, run_id, 0), "w1") == "ok"
    with rt.sessions.begin() as session:
        state.cancel(session, session.get(RunRow, run_id))  # type: ignore[arg-type]
    with pytest.raises(state.ResumeRefused, match=r"a worker is still stopping \(stage critique shard 0\)") as refused:
        _resume(rt, run_id)
    assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= rt.lease_ttl_s
    release_shard(rt, run_id, _shard_id(rt, run_id, 0), "w1")  # what a stopping worker does
    assert len(_resume(rt, run_id)) == 2  # both shards again; shard 0's stored items will be skipped


def _shard_id(rt: state.Runtime, run_id: str, index: int) -> int:
    with rt.sessions() as session:
        stage = session.scalars(
            select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == "critique")
        ).one()
        return session.scalars(
            select(ShardRow.id).where(ShardRow.stage_run_id == stage.id, ShardRow.index == index)
        ).one()


@pytest.mark.slow
def test_a_run_cancelled_mid_sft_resumes_from_its_step_checkpoint(make_service, service_tiny_model: str) -> None:
    from api.main import create_app

    service: Service = make_service("sqlite")
    service.start_worker("w1")
    long_sft = {**TINY_RUN, "sft": {**TINY_RUN["sft"], "epochs": 12, "checkpoint_every": 2}}
    with TestClient(create_app(service.settings())) as api:
        con = api.post("/v1/constitutions", content=(REPO / "constitutions/minimal.yaml").read_bytes(), headers=auth())
        prompts = (REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:8]
        files = {"file": ("p.jsonl", "\n".join(prompts).encode(), "application/x-ndjson")}
        prompt_set = api.post("/v1/prompt-sets", files=files, headers=auth()).json()
        request = {"constitution_id": con.json()["id"], "prompt_set_id": prompt_set["id"], "config": long_sft}
        run_id = api.post("/v1/runs", json=request, headers=auth()).json()["id"]
        steps = service.artifacts / "runs" / run_id / "sft" / "steps"
        wait_for(lambda: list(steps.glob("step-*")), 180, "an SFT step checkpoint")
        assert error_of(api.post(f"/v1/runs/{run_id}/resume", headers=auth()))[0] == 409  # it is running
        assert api.post(f"/v1/runs/{run_id}/cancel", headers=auth()).json()["status"] == "cancelled"
        wait_for(lambda: f"run {run_id}: stage sft stopped: cancelled" in service.log("w1"), 60, "SFT to stop")
        sft = next(s for s in api.get(f"/v1/runs/{run_id}", headers=auth()).json()["stages"] if s["name"] == "sft")
        done_at_cancel = sft["done"]
        assert 2 <= done_at_cancel < sft["total"]

        resumed = api.post(f"/v1/runs/{run_id}/resume", headers=auth())
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["status"] == "running" and resumed.json()["error"] is None
        run = wait_for(
            lambda: (r := api.get(f"/v1/runs/{run_id}", headers=auth()).json())["status"] in TERMINAL and r,
            300,
            "the resumed run to finish",
        )
        assert run["status"] == "succeeded", run["error"]
        check_run_integrity(service, run_id)
        assert "resumed from step state" in service.log("w1")
        metrics = api.get(
            f"/v1/runs/{run_id}/events", params={"kind": "metrics", "stage": "sft", "limit": 1000}, headers=auth()
        ).json()["data"]
        counts = Counter(event["step"] for event in metrics)
        assert sorted(counts) == list(range(1, sft["total"] + 1)) and set(counts.values()) == {1}
        messages = [e["message"] for e in api.get(f"/v1/runs/{run_id}/events", headers=auth()).json()["data"]]
        assert "run resumed from stage sft (it was cancelled)" in messages
