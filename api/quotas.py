"""What one run may cost (the server's run budget, RLAIF_MAX_RUN_*) and what one key may use (RLAIF_QUOTA_*):
the checks a new or resumed run passes, and the figures of GET /v1/usage.

The answers differ by what would help:
- a run over the run budget is 422: no key could start it; the errors name each figure, its estimate, the limit
  and the stage that costs the most;
- a key at its concurrent runs is 429 (no Retry-After: nobody knows when a run finishes);
- a key whose runs of today would pass its tokens per day is 429 with Retry-After until midnight UTC, when the
  quota day starts again (none when the run alone is over the daily quota: waiting would not help);
- a key at its stored bytes is 403: waiting does not help, deleting runs does. (Not 507, a server error that
  clients retry.)

Tokens are counted from the runs' budgets (rlaif/budget.py) on the day each run is created, whether it has run
yet or not, except runs stopped before they started. Concurrent runs are checked without a lock: two requests at
the same moment may both pass (on SQLite the write lock serialises them).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from fastapi import status
from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session

from api.crud import stored_config
from api.errors import ApiError
from api.schemas import BudgetFigures, QuotaLimits, UsagePublic
from rlaif.budget import Cost, RunBudget, estimate_budget
from rlaif.service.db import QUEUED, RUNNING, TERMINAL, ConstitutionRow, PreferenceSetRow, PromptSetRow, RunRow, utcnow
from rlaif.settings import Settings
from rlaif.store import ArtifactStore

ACTIVE = (QUEUED, RUNNING)


def day_start(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day: the start of the quota day."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def run_limits(settings: Settings) -> Cost:
    """The server's run budget (0 = no limit)."""
    limits = (
        settings.max_run_items,
        settings.max_run_shards,
        settings.max_run_generated_tokens,
        settings.max_run_optimizer_steps,
    )
    return Cost(*(limit or 0 for limit in limits))


def active_runs(session: Session, owner: str) -> int:
    query = select(func.count()).select_from(RunRow).where(RunRow.owner == owner, RunRow.status.in_(ACTIVE))
    return session.scalar(query) or 0


def stored_bytes(session: Session, store: ArtifactStore, owner: str) -> tuple[int, int]:
    """(bytes of the key's run folders, bytes of its prompt sets, preference sets and constitutions as stored JSON)."""
    run_ids = session.scalars(select(RunRow.id).where(RunRow.owner == owner))
    run_bytes = sum(store.run_bytes(run_id) for run_id in run_ids)
    upload_bytes = 0
    for column, owner_column in (
        (PromptSetRow.items, PromptSetRow.owner),
        (PreferenceSetRow.items, PreferenceSetRow.owner),
        (ConstitutionRow.document, ConstitutionRow.owner),
    ):
        query = select(func.coalesce(func.sum(func.length(cast(column, Text))), 0)).where(owner_column == owner)
        upload_bytes += int(session.scalar(query) or 0)
    return run_bytes, upload_bytes


def tokens_today(session: Session, owner: str, since: datetime) -> int:
    """Tokens the key's runs created since `since` may generate, by their budgets."""
    rows = session.scalars(select(RunRow).where(RunRow.owner == owner, RunRow.created_at >= since))
    total = 0
    for row in rows:
        if row.started_at is None and row.status in TERMINAL:  # stopped before it started: generated nothing
            continue
        cfg = stored_config(row).cfg
        if cfg is not None:  # (a config that no longer validates never runs)
            total += estimate_budget(cfg, row.train_prompts, row.eval_prompts).total.generated_tokens
    return total


def usage(session: Session, store: ArtifactStore, owner: str, settings: Settings) -> UsagePublic:
    since = day_start(utcnow())
    run_bytes, upload_bytes = stored_bytes(session, store, owner)
    return UsagePublic(
        active_runs=active_runs(session, owner),
        stored_bytes=run_bytes + upload_bytes,
        run_bytes=run_bytes,
        upload_bytes=upload_bytes,
        tokens_today=tokens_today(session, owner, since),
        day_started_at=since,
        quotas=QuotaLimits(
            concurrent_runs=settings.quota_concurrent_runs,
            stored_bytes=settings.quota_stored_bytes,
            tokens_per_day=settings.quota_tokens_per_day,
        ),
        run_limits=BudgetFigures(**{name: limit or None for name, limit in run_limits(settings)._asdict().items()}),
    )


def check_budget(budget: RunBudget, settings: Settings) -> None:
    """422 when the run's estimate passes one of the server's run limits."""
    problems = [
        f"{over.figure}: {over.estimate:,} estimated, above the server's limit of {over.limit:,} "
        f"(RLAIF_MAX_RUN_{over.figure.upper()}); most in stage {over.stage}: {over.stage_estimate:,}"
        for over in budget.exceeded(run_limits(settings))
    ]
    if problems:
        detail = (
            f"run over the server's budget on {budget.train_prompts:,} training and {budget.eval_prompts:,} held-out "
            "prompts: make it smaller (fewer prompts, iterations or responses per prompt, larger shard_size)"
        )
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, detail, problems)


def check_concurrent_runs(session: Session, owner: str, settings: Settings) -> None:
    """429 when the key already has its quota of runs queued or running."""
    limit = settings.quota_concurrent_runs
    if limit is not None and (active := active_runs(session, owner)) >= limit:
        raise ApiError(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"quota exceeded: the key has {active} run(s) queued or running, the limit is {limit} (the server's "
            "RLAIF_QUOTA_CONCURRENT_RUNS); wait for one to finish, or cancel one",
        )


def check_stored_bytes(session: Session, store: ArtifactStore, owner: str, settings: Settings) -> None:
    """403 when the key already stores its quota of bytes."""
    limit = settings.quota_stored_bytes
    if limit is not None and (stored := sum(stored_bytes(session, store, owner))) >= limit:
        raise ApiError(
            status.HTTP_403_FORBIDDEN,
            f"quota exceeded: the key stores {stored:,} bytes, the limit is {limit:,} (the server's "
            "RLAIF_QUOTA_STORED_BYTES); delete runs to make room",
        )


def check_tokens_per_day(session: Session, owner: str, settings: Settings, budget: RunBudget) -> None:
    """429 when this run's tokens and those of the key's runs of today would pass the daily quota."""
    limit = settings.quota_tokens_per_day
    if limit is None:
        return
    now = utcnow()
    since, tokens = day_start(now), budget.total.generated_tokens
    today = tokens_today(session, owner, since)
    if today + tokens <= limit:
        return
    detail = (
        f"quota exceeded: this run may generate {tokens:,} tokens and the key's runs of today {today:,}, the limit "
        f"is {limit:,} per UTC day (the server's RLAIF_QUOTA_TOKENS_PER_DAY)"
    )
    if tokens > limit:  # waiting for the next day would not help
        raise ApiError(status.HTTP_429_TOO_MANY_REQUESTS, f"{detail}; this run alone is over it: make it smaller")
    retry_after = max(1, math.ceil((since + timedelta(days=1) - now).total_seconds()))
    raise ApiError(status.HTTP_429_TOO_MANY_REQUESTS, detail, headers={"Retry-After": str(retry_after)})


def admit_run(session: Session, store: ArtifactStore, owner: str, settings: Settings, budget: RunBudget) -> None:
    """Every check a new run passes before anything of it is stored (rlaif.service.state.create_run's `admit`)."""
    check_budget(budget, settings)
    check_concurrent_runs(session, owner, settings)
    check_stored_bytes(session, store, owner, settings)
    check_tokens_per_day(session, owner, settings, budget)
