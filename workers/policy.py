"""The one retry and failure policy of every task (style guide 18), and the per-process runtime.

- A live lease held by another worker (`LeaseBusy`): retry after the lease TTL, which is below the Redis
  visibility timeout, so exactly one message of the work stays alive.
- Transient errors (broker or database connection drops, a locked SQLite file, an endpoint that stayed down or
  overloaded through all of its client's own retries): retry with exponential backoff and full jitter, up to
  `MAX_TRANSIENT_RETRIES`, then fail the run. A retried shard skips its stored items, and the endpoint's answers
  before the outage come from its cache.
- A database whose schema is not this code's (a table or column missing: on SQLite that is an OperationalError,
  like a locked file, but no retry fixes it): fail fast with the command that fixes it, `rlaif db upgrade`.
- Everything else (bad config or data: ValueError, ConstitutionError, ModelError, StoreError...; and bugs):
  fail fast. The stage and the run are marked failed with a readable reason, which the API returns.
  Cores never swallow exceptions; they only add context to them.

Recording the failure must not fail the task again: when `state.fail` itself raises (the same schema mismatch,
the database gone), only the run row is marked failed, and if even that fails the error is logged; the task
ends either way (acknowledged), never retried forever.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from rlaif.constitution import ConstitutionError
from rlaif.generation.endpoint_client import EndpointUnavailable
from rlaif.modeling import ModelError
from rlaif.service import state
from rlaif.service.claims import LeaseBusy
from rlaif.service.db import is_schema_mismatch, schema_mismatch_reason
from rlaif.settings import settings
from rlaif.store import StoreError
from workers.app import TIME_LIMITS, Queue, app, send_all

log = logging.getLogger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    sqlalchemy.exc.OperationalError,  # connection refused or dropped, "database is locked" (not "no such column")
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
    TimeoutError,
    # (not its parent EndpointError: a 401 or a 400 stays wrong however often it is sent)
    EndpointUnavailable,
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
LOW_DISK_BYTES = 64 << 20  # a failure with less free space than this is reported as a full disk


@functools.cache
def _runtime(pid: int) -> state.Runtime:
    return state.Runtime.from_settings(settings)


def runtime() -> state.Runtime:
    """The run store and artifact store of this worker process (built after a prefork child starts)."""
    return _runtime(os.getpid())


def send(dispatches: Iterable[state.Dispatch]) -> None:
    """Enqueue what the state machine asked for, on this worker's app (workers.app.send_all)."""
    send_all(app, dispatches)


def disk_full_reason(exc: BaseException, artifact_root: Path, run_id: str) -> str | None:
    """A readable reason when `exc` came from a full artifact disk (None otherwise). torch and safetensors
    wrap ENOSPC in their own errors, so the free space is checked as well as the errno."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    full = any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain)
    try:
        free = shutil.disk_usage(artifact_root).free
    except OSError:
        free = None
    if not full and (free is None or free >= LOW_DISK_BYTES):
        return None
    where = f"{free // (1 << 20)} MiB free under {artifact_root}" if free is not None else str(artifact_root)
    return (
        f"the artifact disk is full ({where}): free space, then resume the run "
        f"(POST /v1/runs/{run_id}/resume, or `rlaif resume {run_id}`); the error was {reason_of(exc)}"
    )


def failure_reason(exc: BaseException, run_id: str) -> str:
    """The readable reason a task failed fast with: a schema mismatch or a full disk say what to do."""
    if is_schema_mismatch(exc):
        return schema_mismatch_reason(exc)
    return disk_full_reason(exc, settings.artifacts_dir.resolve(), run_id) or reason_of(exc)


def record_failure(run_id: str, stage: str | None, reason: str) -> None:
    """`state.fail`, and never an exception out of it: a task whose failure cannot be recorded still ends."""
    try:
        state.fail(runtime(), run_id, stage, reason)
        return
    except Exception:
        log.exception("run %s: could not record its failure (%s); marking the run row only", run_id, reason)
    try:
        state.mark_failed(runtime(), run_id, reason)
    except Exception:
        log.exception("run %s: could not mark it failed either; it keeps its status (%s)", run_id, reason)


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the task ran past its time limit"
    text = str(exc).strip() or "(no message)"
    return text if isinstance(exc, DATA_ERRORS) else f"{type(exc).__name__}: {text}"


def stage_task(
    name: str, record: Callable[[str, tuple[Any, ...], str], None] | None = None
) -> Callable[[Callable[..., None]], Task]:
    """Register `fn(task, run_id, *ids)` as Celery task `name` on the queue its prefix names, with the policy above.
    `record(run_id, ids, reason)` records a failure (default: the stage `ids[0]` and its run are marked failed)."""
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
            except LeaseBusy as exc:
                log.info("%s", exc)
                raise self.retry(countdown=exc.countdown) from None
            except Exception as exc:
                if isinstance(exc, TRANSIENT) and not is_schema_mismatch(exc):
                    if self.request.retries < MAX_TRANSIENT_RETRIES:
                        countdown = get_exponential_backoff_interval(2, self.request.retries, 300, full_jitter=True)
                        where = ", ".join(map(str, (run_id, *ids)))
                        log.warning("%s(%s): transient error, retry in %d s: %s", name, where, countdown, exc)
                        raise self.retry(countdown=countdown) from exc
                    reason = f"gave up after {MAX_TRANSIENT_RETRIES} retries: {reason_of(exc)}"
                else:
                    log.exception("%s %s %s failed", name, run_id, ids)
                    reason = failure_reason(exc, run_id)
                if record is None:
                    record_failure(run_id, stage, reason)
                else:
                    record(run_id, ids, reason)

        return task

    return decorate
