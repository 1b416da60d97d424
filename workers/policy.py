"""The one retry and failure policy of every task (style guide 18), and the per-process runtime.

- A live lease held by another worker (`LeaseBusy`): retry after the lease TTL, which is below the Redis
  visibility timeout, so exactly one message of the work stays alive.
- Transient errors (broker or database connection drops, a locked SQLite file): retry with exponential backoff
  and full jitter, up to `MAX_TRANSIENT_RETRIES`, then fail the run.
- Everything else (bad config or data: ValueError, ConstitutionError, ModelError, StoreError...; and bugs):
  fail fast. The stage and the run are marked failed with a readable reason, which the API returns.
  Cores never swallow exceptions; they only add context to them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from rlaif import runs
from rlaif.constitution import ConstitutionError
from rlaif.modeling import ModelError
from rlaif.settings import settings
from rlaif.store import StoreError
from workers.app import TIME_LIMITS, Queue, app

log = logging.getLogger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    sqlalchemy.exc.OperationalError,  # connection refused or dropped, "database is locked"
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
    TimeoutError,
)
# Named for readers; anything not transient fails fast, these just get their message without a type prefix.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    ConstitutionError,
    ModelError,
    StoreError,
    FileNotFoundError,
)
MAX_TRANSIENT_RETRIES = 8


@functools.cache
def _runtime(pid: int) -> runs.Runtime:
    return runs.Runtime.from_settings(settings)


def runtime() -> runs.Runtime:
    """The run store and artifact store of this worker process (built after a prefork child starts)."""
    return _runtime(os.getpid())


def send(dispatches: Iterable[runs.Dispatch]) -> None:
    """Enqueue what the state machine asked for; routing follows the task names."""
    for dispatch in dispatches:
        app.send_task(dispatch.task, args=list(dispatch.args))


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the task ran past its time limit"
    text = str(exc).strip() or "(no message)"
    return text if isinstance(exc, DATA_ERRORS) else f"{type(exc).__name__}: {text}"


def stage_task(name: str) -> Callable[[Callable[..., None]], Task]:
    """Register `fn(task, run_id, *ids)` as Celery task `name` on the queue its prefix names, with the policy above."""
    queue = Queue(name.split(".", 1)[0])
    soft, hard = TIME_LIMITS[queue]

    def decorate(fn: Callable[..., None]) -> Task:
        @app.task(name=name, bind=True, soft_time_limit=soft, time_limit=hard, max_retries=None)
        @functools.wraps(fn)
        def task(self: Task, run_id: str, *ids: Any) -> None:
            stage = ids[0] if ids else None
            try:
                fn(self, run_id, *ids)
            except Retry:
                raise
            except runs.LeaseBusy as exc:
                log.info("%s", exc)
                raise self.retry(countdown=exc.countdown) from None
            except TRANSIENT as exc:
                if self.request.retries < MAX_TRANSIENT_RETRIES:
                    countdown = get_exponential_backoff_interval(2, self.request.retries, 300, full_jitter=True)
                    where = ", ".join(map(str, (run_id, *ids)))
                    log.warning("%s(%s): transient error, retry in %d s: %s", name, where, countdown, exc)
                    raise self.retry(countdown=countdown) from exc
                runs.fail(runtime(), run_id, stage, f"gave up after {MAX_TRANSIENT_RETRIES} retries: {reason_of(exc)}")
            except Exception as exc:
                log.exception("%s %s %s failed", name, run_id, ids)
                runs.fail(runtime(), run_id, stage, reason_of(exc))

        return task

    return decorate
