"""Tasks of the `control` queue: advance a run through its stages, and sweep up the work of dead workers."""

from __future__ import annotations

import logging

from celery import Task

from rlaif.service import execute, state
from workers.app import app
from workers.policy import TRANSIENT, runtime, send, stage_task

log = logging.getLogger(__name__)


@stage_task("control.advance")
def advance(task: Task, run_id: str) -> None:
    """Export the stage whose shards all finished, start the next stage, or mark the run succeeded."""
    send(execute.advance(runtime(), run_id))


@app.task(name="control.sweep", ignore_result=True)
def sweep() -> None:
    """Periodic (celery beat): re-enqueue stages and shards whose heartbeat went stale, and lost advances."""
    try:
        dispatches = state.sweep(runtime())
    except TRANSIENT as exc:  # the next sweep comes soon; nothing to fail
        log.warning("sweep skipped: %s", exc)
        return
    if dispatches:
        log.info("sweep re-enqueues %s", [(d.task, d.args) for d in dispatches])
    send(dispatches)
