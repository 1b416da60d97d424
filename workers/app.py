"""The Celery app: Redis broker, four queues named after the resource they need, tasks routed by name.

A task's name starts with its queue ("judge.label_shard" runs on `judge`), and `task_routes` matches those
prefixes, so routing is declared once, here. Every task acknowledges late (after it ran) and is rejected back
to the queue when its worker process dies, and a worker takes one message at a time (`prefetch 1`): a killed
worker loses no message. With Redis, an unacknowledged message is delivered again after the visibility
timeout even while its first copy still runs; leases on the stage or shard row (rlaif/service/claims.py) turn that
second copy into a retry instead of a duplicate.

    celery -A workers.app worker -Q control,generate,judge,train --pool solo -l INFO
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from celery import Celery, signals
from kombu import Queue as KombuQueue

from rlaif.service.db import SchemaError, check_database
from rlaif.service.state import Dispatch
from rlaif.settings import Settings, apply_process_defaults, settings


class Queue(StrEnum):
    """Queues, named after the resource their tasks need."""

    control = "control"  # bookkeeping: advance runs, export stages, sweep stale work (fast, no model)
    generate = "generate"  # sampling from a policy: critique-revise, paired responses
    judge = "judge"  # forward passes of the judge model
    train = "train"  # SFT, reward model, PPO: long and checkpointed


# (soft, hard) time limits in seconds per queue. A generation or judging shard is a few minutes at the default
# shard size; training runs for hours, and survives redelivery through its lease rather than a short limit.
TIME_LIMITS: dict[Queue, tuple[int, int]] = {
    Queue.control: (300, 360),
    Queue.generate: (4 * 3600, 4 * 3600 + 300),
    Queue.judge: (4 * 3600, 4 * 3600 + 300),
    Queue.train: (72 * 3600, 72 * 3600 + 600),
}

TASK_MODULES = ["workers.control", "workers.generate", "workers.judge", "workers.train"]


def create_celery(cfg: Settings) -> Celery:
    """The app for these settings (the API builds one to send tasks; workers use `app` below)."""
    celery = Celery("rlaif", broker=cfg.broker_url, backend=cfg.result_backend or cfg.broker_url, include=TASK_MODULES)
    transport = {
        "visibility_timeout": cfg.visibility_timeout_s,
        # Look for messages of dead workers (unacked for longer than the visibility timeout) every 10 s.
        "unacked_restore_throttle": 1,
        # Without these a command waits forever on a broker that accepts connections and never answers, and so
        # does the request or task that publishes (the worker's own BRPOP is polled, not a blocking read).
        "socket_connect_timeout": cfg.broker_timeout_s,
        "socket_timeout": cfg.broker_timeout_s,
    }
    celery.conf.update(
        task_queues=[KombuQueue(queue.value) for queue in Queue],
        task_default_queue=Queue.control.value,
        task_routes={f"{queue.value}.*": {"queue": queue.value} for queue in Queue},
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_ignore_result=True,  # state lives in the run store; nothing reads task results
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # A broker restart must not kill a training task: its message is redelivered and its lease decides.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_timeout=cfg.broker_timeout_s,
        # A publish gives up after 2 retries: at most 3 attempts of a few broker timeouts each, plus 1 s of waits.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 1, "interval_max": 1},
        beat_schedule={
            "sweep-stale-work": {
                "task": "control.sweep",
                "schedule": cfg.sweep_interval_s,
                "options": {"expires": cfg.sweep_interval_s},
            }
        },
        beat_schedule_filename=str(cfg.home / "celerybeat-schedule"),
        worker_hijack_root_logger=True,
        enable_utc=True,
    )
    return celery


def send_all(celery: Celery, dispatches: Iterable[Dispatch]) -> None:
    """Publish what the state machine asked for; routing follows the task names.

    `ignore_result`: nothing reads task results (state lives in the run store), and without it every publish
    first subscribes to the task's result channel, a second broker connection that has no socket timeout.
    """
    for dispatch in dispatches:
        celery.send_task(dispatch.task, args=list(dispatch.args), ignore_result=True)


@signals.worker_init.connect
def _check_database(**_: Any) -> None:
    """A worker refuses to start against a database at a schema revision this code does not run on (it would
    fail every task); an empty database gets the schema. Checked once in the main process, before the pool, which
    also gets the process defaults (passive OpenMP waits, offline hub) before any task imports torch."""
    apply_process_defaults()
    try:
        check_database(settings.db_url)
    except SchemaError as exc:
        raise SystemExit(f"rlaif worker: {exc}") from None


app = create_celery(settings)
