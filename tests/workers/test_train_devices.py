"""A train worker with RLAIF_TRAIN_DEVICES=2 runs a training stage on two gloo ranks under torchrun
(rlaif/service/ranks.py): the task keeps the lease, rank 0's steps reach the service, a cancel stops both ranks,
and a failing rank fails the attempt with its stderr.

    python -m pytest tests/workers/test_train_devices.py -q
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from pydantic import ValidationError
from service_fixtures import Service, make_run, wait_for
from sqlalchemy import select

from rlaif.config import RunConfig
from rlaif.modeling import load_causal_lm
from rlaif.service import execute, ranks, state
from rlaif.service.db import EventRow, RunRow, StageRunRow
from rlaif.settings import Settings
from rlaif.stages.contract import StageContext
from rlaif.store import ArtifactStore, verify_manifest
from workers.app import create_celery


def test_train_devices_is_at_least_one() -> None:
    assert Settings().train_devices == 1
    with pytest.raises(ValidationError, match="train_devices"):
        Settings(train_devices=0)


@pytest.mark.parametrize(
    ("overrides", "stage", "why"),
    [
        ({}, "sft", None),
        ({}, "reward_model", None),
        ({}, "ppo", None),
        ({"policy_optimization": "dpo"}, "dpo", None),
        ({"ppo": {"rollout_backend": "vllm"}}, "ppo", "ppo.rollout_backend vllm runs in one process"),
        ({"policy_optimization": "online_dpo"}, "online_dpo", "stage online_dpo (online_dpo) runs in one process"),
        ({"policy_optimization": "best_of_n"}, "best_of_n", "stage best_of_n (best_of_n) runs in one process"),
    ],
)
def test_which_stages_run_data_parallel(overrides: dict, stage: str, why: str | None, tmp_path) -> None:
    cfg = RunConfig().with_overrides(overrides)
    ctx = StageContext.of(ArtifactStore(tmp_path), "r", stage, cfg=cfg)
    reason = ranks.single_process_reason(importlib.import_module(f"rlaif.stages.{ctx.spec.definition.module}"), ctx)
    assert reason == why if why is None else reason.startswith(why)


def _sft_running(service: Service, overrides: dict[str, Any]) -> tuple[state.Runtime, str]:
    """A run whose critique stage ran in this process and whose SFT task is sent to a train worker on 2 ranks."""
    rt = state.Runtime.from_settings(service.settings())
    run_id = make_run(rt, {"critique": {"sampling": {"max_new_tokens": 4}}, **overrides})
    pending = execute.advance(rt, run_id)
    for dispatch in pending:
        pending += execute.run_shard(rt, *dispatch.args, owner="test") if dispatch.task != state.ADVANCE else []
    assert execute.advance(rt, run_id) == [state.Dispatch("train.sft", (run_id, "sft"))]
    service.start_worker("w1", queues="train")
    create_celery(service.settings()).send_task("train.sft", args=[run_id, "sft"])
    return rt, run_id


def _sft(rt: state.Runtime, run_id: str) -> StageRunRow:
    with rt.sessions() as session:
        return session.scalars(select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == "sft")).one()


def _events(rt: state.Runtime, run_id: str, kind: str = "message") -> list[EventRow]:
    with rt.sessions() as session:
        query = select(EventRow).where(EventRow.run_id == run_id, EventRow.kind == kind).order_by(EventRow.id)
        return list(session.scalars(query))


@pytest.mark.slow
def test_sft_runs_on_two_ranks(make_service, service_tiny_model: str) -> None:
    service: Service = make_service("sqlite", train_devices=2)
    rt, run_id = _sft_running(service, {})
    wait_for(lambda: _sft(rt, run_id).status in ("succeeded", "failed"), 300, "SFT to finish")
    sft = _sft(rt, run_id)
    assert sft.status == "succeeded", service.log("w1")[-4000:]
    assert sft.result["extra"]["data_parallel_ranks"] == 2
    assert sft.total and sft.done == sft.total
    # Rank 0's steps reached the service as metrics events, each once, in order.
    steps = [event.step for event in _events(rt, run_id, "metrics") if event.stage == "sft"]
    assert steps == list(range(1, sft.total + 1))
    assert "stage sft: on 2 data-parallel ranks" in [event.message for event in _events(rt, run_id)]
    log = service.log("w1")
    assert "rank 1/2 joined the gloo process group" in log and "rank 0/2 joined the gloo process group" in log
    model_dir = service.artifacts / "runs" / run_id / "sft" / "model"
    verify_manifest(model_dir)
    assert load_causal_lm(str(model_dir), dtype="float32", device="cpu").config.model_type


@pytest.mark.slow
def test_a_cancel_stops_both_ranks(make_service, service_tiny_model: str) -> None:
    service: Service = make_service("sqlite", train_devices=2)
    rt, run_id = _sft_running(service, {"sft": {"epochs": 100, "checkpoint_every": 5}})
    wait_for(lambda: (_sft(rt, run_id).done or 0) >= 2, 300, "two SFT steps reported")
    with rt.sessions.begin() as session:
        run = session.get(RunRow, run_id)
        assert run is not None and state.cancel(session, run)
    wait_for(lambda: "stage sft stopped: cancelled" in service.log("w1"), 120, "the task to stop")
    log = service.log("w1")
    assert "rank 0: stage sft stopped: cancelled" in log and "rank 1: stage sft stopped: cancelled" in log
    assert not (service.artifacts / "runs" / run_id / "sft" / "model").exists()


@pytest.mark.slow
def test_a_failing_rank_fails_the_attempt(make_service, service_tiny_model: str) -> None:
    service: Service = make_service("sqlite", train_devices=2)
    # 3 sequences per step in one process; not divisible over 2 ranks, so each rank raises.
    rt, run_id = _sft_running(service, {"sft": {"batch_size": 3, "micro_batch_size": 1}})
    wait_for(lambda: _sft(rt, run_id).status == "failed", 300, "SFT to fail")
    with rt.sessions() as session:
        run = session.get(RunRow, run_id)
        assert run is not None and run.status == "failed"
        assert "a data-parallel rank failed" in run.error
        assert "sft.batch_size 3 is not divisible by the world size 2" in run.error
