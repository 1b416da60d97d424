"""Tasks of the `judge` queue: soft AI-feedback labels, one shard of comparisons at a time; two runs head to head."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from rlaif.service import execute, head_to_head
from rlaif.service.state import worker_identity
from workers.policy import runtime, send, stage_task

log = logging.getLogger(__name__)


@stage_task("judge.label_shard")
def label_shard(task: Task, run_id: str, stage: str, shard: int) -> None:
    """Stage 4: label the shard's comparisons under sampled principles, both orders."""
    send(execute.run_shard(runtime(), run_id, stage, shard, worker_identity(task.request.id)))


def _head_to_head_failed(run_a: str, ids: tuple[Any, ...], reason: str) -> None:
    """A failed head-to-head is its own file's state, never the runs': both runs stay as they finished."""
    try:
        head_to_head.fail(runtime().store, run_a, ids[0], reason)
    except Exception:
        log.exception("head to head %s vs %s: could not record its failure (%s)", run_a, ids[0], reason)


@stage_task(head_to_head.TASK, record=_head_to_head_failed)
def judge_head_to_head(task: Task, run_a: str, run_b: str) -> None:
    """Judge run A's evaluated answers against run B's (idempotent: a result already written is kept)."""
    execute.run_head_to_head(runtime(), run_a, run_b)
