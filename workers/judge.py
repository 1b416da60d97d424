"""Tasks of the `judge` queue: soft AI-feedback labels, one shard of comparisons at a time."""

from __future__ import annotations

from celery import Task

from rlaif.service import execute
from rlaif.service.state import worker_identity
from workers.policy import runtime, send, stage_task


@stage_task("judge.label_shard")
def label_shard(task: Task, run_id: str, stage: str, shard: int) -> None:
    """Stage 4: label the shard's comparisons under sampled principles, both orders."""
    send(execute.run_shard(runtime(), run_id, stage, shard, worker_identity(task.request.id)))
