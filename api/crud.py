"""Row helpers shared by the routes: owner-scoped look-ups, constitution versions, row -> schema conversion."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from fastapi import status
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, not_found, pydantic_problems
from api.schemas import (
    BudgetFigures,
    CheckpointFile,
    CheckpointPublic,
    ConstitutionDetail,
    ConstitutionPublic,
    PrincipleSummary,
    RunBudgetPublic,
    RunPublic,
    RunSummary,
    StageStatus,
)
from rlaif.budget import RunBudget, estimate_budget
from rlaif.config import RunConfig, upgrade_config
from rlaif.constitution import Constitution, ConstitutionError, load_constitution
from rlaif.service.db import (
    SHIPPED_OWNER,
    CheckpointRow,
    ConstitutionRow,
    PreferenceSetRow,
    PromptSetRow,
    RunRow,
    StageRunRow,
    insert_ignore,
    utcnow,
)

log = logging.getLogger(__name__)

R = TypeVar("R", PromptSetRow, PreferenceSetRow, RunRow, CheckpointRow)

# (path, mtime_ns, size) -> parsed constitution, so a listing re-parses only files that changed; and the
# (database, file version) pairs already registered, so a listing writes only when a file changed.
_SHIPPED_CACHE: dict[tuple[str, int, int], Constitution | None] = {}
_REGISTERED: set[tuple[str, tuple[str, int, int]]] = set()


# A version made by PATCH records its parent in `source`, as "patch:<parent id>" (no column of its own: the
# parent is where the version came from, which is what `source` says for uploads and shipped files).
PATCH_SOURCE = "patch"


def patch_parent(row: ConstitutionRow) -> str | None:
    """The version a PATCH made this one from, or None (an upload or a shipped file)."""
    kind, _, parent = row.source.partition(":")
    return parent if kind == PATCH_SOURCE and parent and row.owner != SHIPPED_OWNER else None


def constitution_id(owner: str, sha256: str) -> str:
    """Deterministic version id: the same content from the same owner is the same version."""
    return "con-" + hashlib.sha256(f"{owner}\n{sha256}".encode()).hexdigest()[:16]


def upsert_constitution(
    session: Session, owner: str, constitution: Constitution, source: str
) -> tuple[ConstitutionRow, bool]:
    """The row of this version (inserted when new); True when it was new."""
    sha = constitution.sha256
    row = {
        "id": constitution_id(owner, sha),
        "owner": owner,
        "sha256": sha,
        "name": constitution.name,
        "source": source,
        "document": constitution.model_dump(mode="json"),
        "principles": len(constitution.principles),
        "created_at": utcnow(),
    }
    created = insert_ignore(session, ConstitutionRow, [row], unique=["owner", "sha256"]) > 0
    return session.scalars(
        select(ConstitutionRow).where(ConstitutionRow.owner == owner, ConstitutionRow.sha256 == sha)
    ).one(), created


def sync_shipped(session: Session, folder: Path) -> None:
    """Register the current version of every valid file in the shipped folder (an edited file = a new version)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
            continue
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in _SHIPPED_CACHE:
            try:
                _SHIPPED_CACHE[key] = load_constitution(path)
            except ConstitutionError as exc:
                log.warning("shipped constitution %s is invalid and not listed:\n%s", path, exc)
                _SHIPPED_CACHE[key] = None
        constitution = _SHIPPED_CACHE[key]
        database = str(session.get_bind().url)
        if constitution is not None and (database, key) not in _REGISTERED:
            upsert_constitution(session, SHIPPED_OWNER, constitution, source=path.name)
            session.commit()
            _REGISTERED.add((database, key))


def _row(session: Session, model: type[Any], ident: str) -> Any:
    # No id holds a NUL character, and PostgreSQL cannot even compare with one: such an id is simply not found.
    return None if "\x00" in ident else session.get(model, ident)


def get_constitution(session: Session, owner: str, ident: str) -> ConstitutionRow:
    row = _row(session, ConstitutionRow, ident)
    if row is None or row.owner not in (owner, SHIPPED_OWNER):
        raise not_found("constitution", ident)
    return row


def _get_owned(session: Session, model: type[R], what: str, owner: str, ident: str) -> R:
    """The row, or 404 when it does not exist *or* belongs to another key (never reveal that it exists)."""
    row = _row(session, model, ident)
    if row is None or row.owner != owner:
        raise not_found(what, ident)
    return row


def get_prompt_set(session: Session, owner: str, ident: str) -> PromptSetRow:
    return _get_owned(session, PromptSetRow, "prompt set", owner, ident)


def get_preference_set(session: Session, owner: str, ident: str) -> PreferenceSetRow:
    return _get_owned(session, PreferenceSetRow, "preference set", owner, ident)


def get_run(session: Session, owner: str, ident: str) -> RunRow:
    return _get_owned(session, RunRow, "run", owner, ident)


def get_checkpoint(session: Session, owner: str, ident: str) -> CheckpointRow:
    return _get_owned(session, CheckpointRow, "checkpoint", owner, ident)


# ---------------------------------------------------------------- row -> schema


def constitution_public(row: ConstitutionRow, detail: bool = False) -> ConstitutionPublic:
    principles = [PrincipleSummary(id=p["id"], tags=p["tags"]) for p in row.document["principles"]]
    fields: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "source": PATCH_SOURCE if patch_parent(row) else row.source,
        "parent": patch_parent(row),
        "sha256": row.sha256,
        "principles": principles,
        "created_at": row.created_at,
    }
    if detail:
        return ConstitutionDetail(**fields, document=row.document)
    return ConstitutionPublic(**fields)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round(((end or utcnow()) - start).total_seconds(), 3)


def stage_status(row: StageRunRow) -> StageStatus:
    result = row.result or {}
    return StageStatus(
        name=row.name,
        kind=row.kind,
        iteration=row.iteration,
        queue=row.task.split(".", 1)[0],
        status=row.status,
        done=row.done,
        total=row.total,
        shards_done=row.shards_done,
        shards_total=row.shards_total,
        attempts=row.attempts,
        started_at=row.started_at,
        finished_at=row.finished_at,
        seconds=_seconds(row.started_at, row.finished_at),
        error=row.error,
        counts=result.get("counts", {}),
        metrics=result.get("metrics", {}),
    )


class StoredConfig(NamedTuple):
    """A run's stored config: parsed, or (`cfg` None) as far as its JSON decodes, with the reason."""

    cfg: RunConfig | None
    raw: dict[str, Any]
    error: str | None


def stored_config(row: RunRow) -> StoredConfig:
    """The run's config as stored, upgraded from the version it was stored with (rlaif.config.upgrade_config).
    One that no longer validates (stored by an older or a faulty version: an infinity stored as null; or by a
    newer rlaif) is reported, never raised: the run must still list, read and cancel."""
    try:
        raw = json.loads(row.config_json)
    except ValueError as exc:
        return StoredConfig(None, {}, f"stored config is not JSON: {exc}")
    if not isinstance(raw, dict):
        return StoredConfig(None, {}, "stored config is not a JSON object")
    try:
        raw = upgrade_config(raw)
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = pydantic_problems(exc, prefix=["config"])
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        return StoredConfig(None, raw, f"stored config does not validate: {shown}")
    except ValueError as exc:
        return StoredConfig(None, raw, f"stored config cannot be read: {exc}")
    return StoredConfig(cfg, cfg.model_dump(mode="json"), None)


def run_summary(row: RunRow, stored: StoredConfig | None = None) -> RunSummary:
    cfg, _, config_error = stored or stored_config(row)
    return RunSummary(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        constitution_id=row.constitution_id,
        prompt_set_id=row.prompt_set_id,
        preference_set_id=row.preference_set_id,
        policy_model=cfg.policy_model if cfg else None,
        iterations=cfg.iterations if cfg else None,
        policy_optimization=cfg.policy_optimization if cfg else None,
        created_at=row.created_at,
        finished_at=row.finished_at,
        error=row.error,
        config_error=config_error,
    )


def budget_public(budget: RunBudget) -> RunBudgetPublic:
    stages = {name: BudgetFigures(**cost._asdict()) for name, cost in budget.stages.items()}
    return RunBudgetPublic(**budget.total._asdict(), stages=stages)


def run_public(session: Session, row: RunRow) -> RunPublic:
    stored = stored_config(row)
    cfg = stored.cfg
    stages = session.scalars(select(StageRunRow).where(StageRunRow.run_id == row.id).order_by(StageRunRow.position))
    return RunPublic(
        **run_summary(row, stored).model_dump(),
        constitution_sha256=row.constitution_sha256,
        judge_model=(cfg.judge.model or cfg.policy_model) if cfg else None,
        train_prompts=row.train_prompts,
        eval_prompts=row.eval_prompts,
        started_at=row.started_at,
        stages=[stage_status(s) for s in stages],
        config=stored.raw,
        budget=budget_public(estimate_budget(cfg, row.train_prompts, row.eval_prompts)) if cfg else None,
    )


def checkpoint_public(row: CheckpointRow) -> CheckpointPublic:
    files = [CheckpointFile(path=p, bytes=i["bytes"], sha256=i["sha256"]) for p, i in sorted(row.files.items())]
    return CheckpointPublic(
        id=row.id,
        run_id=row.run_id,
        stage=row.stage,
        step=row.step,
        metrics=row.metrics,
        files=files,
        created_at=row.created_at,
        download_url=f"/v1/checkpoints/{row.id}/download",
    )


# ---------------------------------------------------------------- deleting inputs

SHOWN_RUNS = 20  # run ids named in a 409's detail (its errors list every one)


def refuse_if_used(session: Session, what: str, ident: str, column: Any) -> None:
    """409 naming the runs whose `column` (RunRow.prompt_set_id, .preference_set_id, .constitution_id) is `ident`: a
    run keeps the inputs it was started from, so they go only after the runs (DELETE /v1/runs/{id})."""
    users = list(session.scalars(select(RunRow.id).where(column == ident).order_by(RunRow.created_at, RunRow.id)))
    if not users:
        return
    named = ", ".join(users[:SHOWN_RUNS]) + (f" and {len(users) - SHOWN_RUNS} more" if len(users) > SHOWN_RUNS else "")
    detail = f"{what} {ident} is used by {len(users)} run(s): {named}; delete those runs first"
    raise ApiError(status.HTTP_409_CONFLICT, detail, [f"used by run {run_id}" for run_id in users])
