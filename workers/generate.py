"""Tasks of the `generate` queue: shards of the stages that sample from a policy, and the evaluation."""

from __future__ import annotations

from celery import Task

from rlaif.service import execute
from rlaif.service.state import worker_identity
from workers.policy import runtime, send, stage_task


@stage_task("generate.critique_shard")
def critique_shard(task: Task, run_id: str, stage: str, shard: int) -> None:
    """Stage 1: answer, critique and revise the shard's prompts."""
    send(execute.run_shard(runtime(), run_id, stage, shard, worker_identity(task.request.id)))


@stage_task("generate.pairs_shard")
def pairs_shard(task: Task, run_id: str, stage: str, shard: int) -> None:
    """Stage 3: sample K responses per prompt of the shard from the current policy."""
    send(execute.run_shard(runtime(), run_id, stage, shard, worker_identity(task.request.id)))


@stage_task("generate.evaluate")
def evaluate(task: Task, run_id: str, stage: str) -> None:
    """Stage 7: base, SFT and aligned models answer the held-out prompts; judge win rates, refusals, report."""
    send(execute.run_training(runtime(), run_id, stage, worker_identity(task.request.id)))
