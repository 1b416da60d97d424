"""Tasks of the `judge` queue: soft AI-feedback labels, one shard of comparisons at a time."""

from __future__ import annotations

from celery import Task

from rlaif import runs
from workers.policy import runtime, send, stage_task


@stage_task("judge.label_shard")
def label_shard(task: Task, run_id: str, stage: str, shard: int) -> None:
    """Stage 4: label the shard's comparisons under sampled principles, both orders."""
    send(runs.run_shard(runtime(), run_id, stage, shard, runs.worker_identity(task.request.id)))
