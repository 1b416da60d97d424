"""/v1/runs: start a run (config validated here, at the edge), list, status, events, metrics, cancel, checkpoints,
and compare runs side by side (and two of them head to head, judged by a worker)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import quotas
from api.crud import (
    checkpoint_public,
    get_constitution,
    get_preference_set,
    get_prompt_set,
    get_run,
    run_public,
    run_summary,
    stored_config,
)
from api.deps import CeleryDep, OwnerDep, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError, pydantic_problems
from api.schemas import (
    INT64_MAX,
    CheckpointsPublic,
    ColumnText,
    ErrorPublic,
    EventPublic,
    EventsPublic,
    HeadToHeadCreate,
    MetricsPublic,
    RunCreate,
    RunDeleted,
    RunPublic,
    RunsPublic,
    StageMetrics,
)
from rlaif.config import RunConfig
from rlaif.constitution import Constitution
from rlaif.endpoints import endpoint_name
from rlaif.evaluation.head_to_head import HeadToHead, HeadToHeadState
from rlaif.evaluation.report import ANSWERS_FILE, REPORT_FILE, EvalReport, load_report
from rlaif.evaluation.run_compare import MAX_COMPARED_RUNS, RunComparison, RunFacts, StageFacts, compare_runs
from rlaif.modeling import HUB_ID, REGISTRY
from rlaif.pipeline import EVALUATE_STAGE
from rlaif.preference_sets import pin_preference_set
from rlaif.service import head_to_head, state
from rlaif.service.db import CheckpointRow, EventRow, RunRow, StageRunRow
from rlaif.store import ArtifactStore, StoreError
from workers.app import send_all

log = logging.getLogger(__name__)

router = APIRouter(prefix="/runs", tags=["runs"])

_NOT_FOUND = {404: {"model": ErrorPublic}}


def _unprocessable(detail: str, errors: list[str]) -> ApiError:
    return ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, detail, errors)


def build_config(body: RunCreate) -> RunConfig:
    """RunConfig defaults <- body.config overrides <- the body's explicit fields; 422 listing every problem."""
    explicit: dict[str, Any] = {}
    if body.policy_model is not None:
        explicit["policy_model"] = body.policy_model
    if body.iterations is not None:
        explicit["iterations"] = body.iterations
    if body.principles.critique is not None:
        explicit["critique"] = {"principles": body.principles.critique}
    judge: dict[str, Any] = {}
    if body.principles.judge is not None:
        judge["principles"] = body.principles.judge
    if body.judge_model is not None:
        judge["model"] = body.judge_model
    if judge:
        explicit["judge"] = judge
    try:
        return RunConfig().with_overrides(body.config).with_overrides(explicit)
    except ValidationError as exc:
        raise _unprocessable("invalid run config", pydantic_problems(exc, prefix=["config"])) from None


def model_problem(name: str, field: str, roots: list[Path], endpoints: Collection[str] = ()) -> str | None:
    """Why `name` may not be used as a model (None when it may), checked without importing torch.

    A registered name; a folder with a config.json under one of the server's model roots, named by absolute
    path; when the hub is reachable, a hub id; or `endpoint:<name>` for an endpoint the server declares
    (RLAIF_ENDPOINTS). Any other path is refused with the same answer whether it exists or not, so a request can
    neither load nor probe files on the server.
    """
    if name in REGISTRY:
        return None
    endpoint = endpoint_name(name)
    if endpoint is not None:
        if endpoint in endpoints:
            return None
        return (
            f"{field}: unknown endpoint {endpoint!r}: this server declares {sorted(endpoints) or 'none'} "
            "(RLAIF_ENDPOINTS)"
        )
    if not name.strip():
        return f"{field}: empty model name"
    unknown = (
        f"{field}: unknown model {name!r}: use one of {sorted(REGISTRY)}, or a model folder under the server's "
        f"RLAIF_MODEL_ROOTS ({', '.join(map(str, roots)) or 'none configured'})"
    )
    if "\x00" in name or len(name) > 1024:
        return unknown
    if HUB_ID.fullmatch(name) and ".." not in name:
        return unknown if os.environ.get("HF_HUB_OFFLINE", "1") == "1" else None
    path = Path(name)
    if not path.is_absolute():
        return unknown
    try:
        resolved = path.resolve()  # (symlinks followed: a link inside a root to elsewhere is outside)
        inside = any(resolved == root or root in resolved.parents for root in roots)
        if inside and (resolved / "config.json").is_file():
            return None
    except (OSError, RuntimeError, ValueError):  # a name too long for a path, a loop of links
        return unknown
    return f"{field}: no model folder {name!r} (with a config.json) under RLAIF_MODEL_ROOTS" if inside else unknown


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        403: {
            "model": ErrorPublic,
            "description": "The key's stored-bytes quota is used up (RLAIF_QUOTA_STORED_BYTES).",
        },
        404: {"model": ErrorPublic},
        422: {
            "model": ErrorPublic,
            "description": "Invalid run, or one over the server's run budget (RLAIF_MAX_RUN_*).",
        },
        429: {
            "model": ErrorPublic,
            "description": "Rate limit, or the key's quota of concurrent runs or of tokens per day (api/quotas.py).",
        },
    },
)
def create_run(
    body: RunCreate, session: SessionDep, store: StoreDep, owner: OwnerDep, celery: CeleryDep, settings: SettingsDep
) -> RunPublic:
    """Validate, check the run's estimated budget and the key's quotas (GET /v1/usage), pin the inputs
    (<run>/inputs/: train and held-out prompts, constitution, config, the preference set's human pairs) and start
    the run."""
    constitution_row = get_constitution(session, owner, body.constitution_id)
    prompt_set = get_prompt_set(session, owner, body.prompt_set_id)
    preference_set = (
        None if body.preference_set_id is None else get_preference_set(session, owner, body.preference_set_id)
    )
    cfg = build_config(body)
    constitution = Constitution.model_validate(constitution_row.document)
    problems = []
    for field, selectors in (
        ("principles.critique", cfg.critique.principles),
        ("principles.judge", cfg.judge.principles),
        # The evaluation runs last: a selector that matches nothing must fail now, not after the training.
        ("config.eval.harmless_principles", cfg.eval.harmless_principles),
        ("config.eval.helpful_principles", cfg.eval.helpful_principles),
    ):
        try:
            constitution.select(selectors)
        except ValueError as exc:
            problems.append(f"{field}: {exc}")
    roles = (
        ("policy_model", cfg.policy_model),
        ("judge_model", cfg.judge.model),
        ("feedback.model", cfg.feedback.model),
    )
    for field, model in roles:
        if model is not None and (
            problem := model_problem(model, field, settings.model_root_paths(), settings.endpoints.keys())
        ):
            problems.append(problem)
    if preference_set is not None and cfg.policy_optimization == "dpo":
        # (a set the run would never read: DPO trains on the AI labels directly, with no reward model)
        problems.append("preference_set_id: human pairs train the reward model, and a dpo run has none")
    if problems:
        raise _unprocessable("invalid run", problems)
    try:
        run = state.create_run(
            session,
            store,
            owner=owner,
            constitution=constitution_row,
            prompt_set=prompt_set,
            cfg=cfg,
            admit=lambda budget: quotas.admit_run(session, store, owner, settings, budget),
        )
    except ValueError as exc:
        raise _unprocessable("invalid run", [str(exc)]) from None
    if preference_set is not None:
        # Pinned like the prompts: the run trains on the pairs as they are now, whatever happens to the set.
        run.preference_set_id = preference_set.id
        pin_preference_set(store, run.id, preference_set.id, preference_set.items)
    session.commit()
    try:
        send_all(celery, [state.Dispatch(state.ADVANCE, (run.id,))])
    except Exception as exc:  # the broker is down or does not answer (RLAIF_BROKER_TIMEOUT_S): the run stays queued
        log.warning("run %s created but not enqueued (%s); a control sweep will start it", run.id, type(exc).__name__)
        why = f"waiting to be enqueued: the broker did not answer ({type(exc).__name__}); the control sweep starts the run"
        state.add_event(session, run.id, why, level="warning")
        session.commit()
    return run_public(session, run)


@router.get("")
def list_runs(
    session: ReadSessionDep,
    owner: OwnerDep,
    skip: int = Query(0, ge=0, le=INT64_MAX),
    limit: int = Query(50, ge=1, le=500),
) -> RunsPublic:
    """The caller's runs, newest first."""
    count = session.scalar(select(func.count()).select_from(RunRow).where(RunRow.owner == owner)) or 0
    rows = session.scalars(
        select(RunRow).where(RunRow.owner == owner).order_by(RunRow.created_at.desc()).offset(skip).limit(limit)
    )
    return RunsPublic(data=[run_summary(r) for r in rows], count=count)


def _run_facts(session: Session, store: ArtifactStore, run: RunRow) -> RunFacts:
    """A run's stage rows and evaluation report, as the comparison reads them (no server paths in reasons)."""
    cfg = stored_config(run).cfg
    report: EvalReport | None = None
    missing = None
    try:
        report = load_report(store, run.id, EVALUATE_STAGE)
    except StoreError:
        written = (store.stage_dir(run.id, EVALUATE_STAGE, create=False) / REPORT_FILE).is_file()
        missing = "its evaluation report cannot be read" if written else "its evaluate stage has not finished"
    rows = session.scalars(select(StageRunRow).where(StageRunRow.run_id == run.id).order_by(StageRunRow.position))
    stages = [
        StageFacts(
            name=row.name,
            kind=row.kind,
            iteration=row.iteration,
            status=row.status,
            started_at=row.started_at,
            finished_at=row.finished_at,
            result=row.result or {},
        )
        for row in rows
    ]
    return RunFacts(
        id=run.id,
        status=run.status,
        policy_optimization=cfg.policy_optimization if cfg else None,
        policy_model=cfg.policy_model if cfg else None,
        report=report,
        report_missing=missing,
        stages=stages,
    )


# Declared before /{run_id}, which would otherwise take "compare" for a run id.
@router.get("/compare", responses={**_NOT_FOUND, 422: {"model": ErrorPublic}})
def compare_runs_route(
    session: ReadSessionDep,
    owner: OwnerDep,
    store: StoreDep,
    ids: ColumnText = Query(
        ...,
        max_length=4096,
        description=f"2 to {MAX_COMPARED_RUNS} of the caller's run ids, comma-separated: ?ids=run-a,run-b",
    ),
) -> RunComparison:
    """The runs side by side, in the order given: policy optimisation, win rates against the base (harmlessness,
    helpfulness) and refusal and over-refusal rates with their intervals, mean answer length, the KL to the SFT
    model, and per stage the wall time and peak memory where recorded. A run without a finished evaluation has
    null figures and says why. 404 for a run that is unknown or another key's; 422 for fewer than 2 or more than
    8 ids, or one given twice."""
    wanted = [part.strip() for part in ids.split(",") if part.strip()]
    if not 2 <= len(wanted) <= MAX_COMPARED_RUNS:
        raise _unprocessable(
            "cannot compare these runs",
            [f"ids: give 2 to {MAX_COMPARED_RUNS} run ids separated by commas, got {len(wanted)}"],
        )
    repeated = sorted({i for i in wanted if wanted.count(i) > 1})
    if repeated:
        raise _unprocessable(
            "cannot compare these runs",
            [f"ids: {i} is given {wanted.count(i)} times; give each run once" for i in repeated],
        )
    found = [get_run(session, owner, run_id) for run_id in wanted]  # every id is checked before any report is read
    return compare_runs([_run_facts(session, store, run) for run in found], _head_to_heads(store, wanted))


def _head_to_heads(store: ArtifactStore, ids: list[str]) -> list[HeadToHead]:
    """The finished head-to-heads of the current evaluations among these runs, either way round, in id order."""
    results = []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            for first, second in ((a, b), (b, a)):
                found = head_to_head.current(store, first, second)
                if found is not None and found.result is not None:
                    results.append(found.result)
    return results


def _evaluation_problem(session: Session, store: ArtifactStore, run: RunRow) -> str | None:
    """Why the run cannot be compared head to head (None when its evaluation succeeded and its answers are there)."""
    row = session.scalars(
        select(StageRunRow).where(StageRunRow.run_id == run.id, StageRunRow.name == EVALUATE_STAGE)
    ).one_or_none()
    if row is None:
        return f"run {run.id} has no evaluate stage"
    if row.status != "succeeded":
        return f"run {run.id}: its evaluation has not succeeded (evaluate stage {row.status})"
    try:
        load_report(store, run.id, EVALUATE_STAGE)
    except StoreError:
        return f"run {run.id}: its evaluation report cannot be read"
    if not (store.stage_dir(run.id, EVALUATE_STAGE, create=False) / ANSWERS_FILE).is_file():
        return f"run {run.id}: its evaluation kept no answers ({ANSWERS_FILE})"
    return None


@router.post(
    "/compare/head-to-head",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"model": HeadToHeadState, "description": "Already judged for these two evaluations: the result."},
        **_NOT_FOUND,
        409: {"model": ErrorPublic, "description": "A run's evaluation has not succeeded."},
        503: {"model": ErrorPublic, "description": "The broker did not answer: nothing was queued; POST again."},
    },
)
def create_head_to_head(
    body: HeadToHeadCreate,
    response: Response,
    session: ReadSessionDep,
    owner: OwnerDep,
    store: StoreDep,
    celery: CeleryDep,
) -> HeadToHeadState:
    """Queue the judging of run A's evaluated answers against run B's on the prompts both evaluations answered
    (same id and text), harmlessness and helpfulness, by A's evaluation judge, on a `judge` worker. 202 with the
    state (pending, or running when a request before this one queued it); 200 with the result when it is already
    done for these evaluations (it is never judged twice). 404 for a run unknown or another key's; 409 when a run's
    evaluation has not succeeded."""
    a, b = body.run_ids
    runs = [get_run(session, owner, run_id) for run_id in dict.fromkeys((a, b))]
    problems = [p for run in runs if (p := _evaluation_problem(session, store, run)) is not None]
    if problems:
        raise ApiError(status.HTTP_409_CONFLICT, "cannot compare these runs head to head", problems)
    found, send = head_to_head.queue(store, a, b)
    if send:
        try:
            send_all(celery, [state.Dispatch(head_to_head.TASK, (a, b))])
        except Exception as exc:  # (the broker does not answer: a failed state lets the next POST queue it again)
            reason = f"not queued: the broker did not answer ({type(exc).__name__}); POST again"
            head_to_head.fail(store, a, b, reason)
            raise ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, reason) from None
    if found.status == "done":
        response.status_code = status.HTTP_200_OK
    return found


@router.get("/compare/head-to-head", responses={**_NOT_FOUND, 422: {"model": ErrorPublic}})
def read_head_to_head(
    session: ReadSessionDep,
    owner: OwnerDep,
    store: StoreDep,
    ids: ColumnText = Query(..., max_length=512, description="Run A and run B, comma-separated: ?ids=run-a,run-b"),
) -> HeadToHeadState:
    """The head-to-head of A against B: pending | running | done (with the result) | failed (with the reason).
    404 for a run unknown or another key's, or when none was requested for these evaluations (POST first)."""
    wanted = [part.strip() for part in ids.split(",") if part.strip()]
    if len(wanted) != 2:
        raise _unprocessable("cannot read this head to head", [f"ids: give 2 run ids (A,B), got {len(wanted)}"])
    a, b = wanted
    for run_id in dict.fromkeys(wanted):
        get_run(session, owner, run_id)
    found = head_to_head.current(store, a, b)
    if found is None:
        raise ApiError(
            status.HTTP_404_NOT_FOUND,
            f"no head to head of {a} against {b} for their present evaluations: POST /v1/runs/compare/head-to-head",
        )
    return found


@router.get("/{run_id}", responses=_NOT_FOUND)
def read_run(run_id: str, session: ReadSessionDep, owner: OwnerDep, store: StoreDep) -> RunPublic:
    """Overall status and, per stage: status, done/total, timings, error, counts and final metrics; the bytes
    its artifacts take on disk."""
    run = run_public(session, get_run(session, owner, run_id))
    return run.model_copy(update={"disk_bytes": store.run_bytes(run_id)})


@router.get("/{run_id}/events", responses=_NOT_FOUND)
def read_events(
    run_id: str,
    session: ReadSessionDep,
    owner: OwnerDep,
    after: int = Query(
        0, ge=0, le=INT64_MAX, description="Return events with an id above this (the previous page's next_after)."
    ),
    limit: int = Query(100, ge=1, le=1000),
    kind: Literal["message", "metrics"] | None = Query(None, description="Only this kind of event."),
    stage: ColumnText | None = Query(None, description="Only events of this stage."),
) -> EventsPublic:
    """Events in order: log messages and per-step metrics."""
    get_run(session, owner, run_id)
    query = select(EventRow).where(EventRow.run_id == run_id, EventRow.id > after)
    if kind is not None:
        query = query.where(EventRow.kind == kind)
    if stage is not None:
        query = query.where(EventRow.stage == stage)
    rows = session.scalars(query.order_by(EventRow.id).limit(limit)).all()
    return EventsPublic(data=[EventPublic.model_validate(r) for r in rows], next_after=rows[-1].id if rows else after)


@router.get("/{run_id}/metrics", responses=_NOT_FOUND)
def read_metrics(run_id: str, session: ReadSessionDep, owner: OwnerDep) -> MetricsPublic:
    """Final metrics of every finished stage and the per-step history of training stages."""
    get_run(session, owner, run_id)
    stages = session.scalars(select(StageRunRow).where(StageRunRow.run_id == run_id).order_by(StageRunRow.position))
    out = {s.name: StageMetrics(final=(s.result or {}).get("metrics", {}), history=[]) for s in stages}
    events = session.scalars(
        select(EventRow).where(EventRow.run_id == run_id, EventRow.kind == "metrics").order_by(EventRow.id)
    )
    for event in events:
        if event.stage in out:
            out[event.stage].history.append({**(event.data or {}), "step": event.step})
    return MetricsPublic(stages=out)


@router.post("/{run_id}/cancel", responses={**_NOT_FOUND, 409: {"model": ErrorPublic}})
def cancel_run(run_id: str, session: SessionDep, owner: OwnerDep) -> RunPublic:
    """Cancel a queued or running run; its workers stop at their next heartbeat. 409 when it already finished."""
    run = get_run(session, owner, run_id)
    if not state.cancel(session, run):
        raise ApiError(status.HTTP_409_CONFLICT, f"run {run_id} already finished ({run.status}); nothing to cancel")
    session.commit()
    return run_public(session, run)


@router.post("/{run_id}/resume", responses={**_NOT_FOUND, 409: {"model": ErrorPublic}})
def resume_run(
    run_id: str, session: SessionDep, owner: OwnerDep, celery: CeleryDep, settings: SettingsDep
) -> RunPublic:
    """Continue a failed or cancelled run from its last completed stage and step (finished shards and step
    checkpoints are kept). 409 when the run has not stopped, or a worker is still stopping (with Retry-After);
    429 when the key has its quota of runs queued or running."""
    run = get_run(session, owner, run_id)
    if run.status not in quotas.ACTIVE:  # (resuming an active run is a 409 below, whatever the quota)
        quotas.check_concurrent_runs(session, owner, settings)
    try:
        dispatches = state.resume(session, run, settings.lease_ttl_s)
    except state.ResumeRefused as exc:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else None
        raise ApiError(status.HTTP_409_CONFLICT, str(exc), headers=headers) from None
    session.commit()
    try:
        send_all(celery, dispatches)
    except Exception as exc:  # the broker is down: the control sweep re-enqueues the resumed work
        log.warning("run %s resumed but not enqueued (%s); a control sweep will pick it up", run_id, type(exc).__name__)
    return run_public(session, run)


@router.get("/{run_id}/checkpoints", responses=_NOT_FOUND)
def list_checkpoints(run_id: str, session: ReadSessionDep, owner: OwnerDep) -> CheckpointsPublic:
    """The run's model checkpoints: stage, step, metrics, and every file with its size and SHA-256."""
    get_run(session, owner, run_id)
    rows = session.scalars(
        select(CheckpointRow).where(CheckpointRow.run_id == run_id).order_by(CheckpointRow.created_at)
    ).all()
    return CheckpointsPublic(data=[checkpoint_public(r) for r in rows], count=len(rows))


@router.delete("/{run_id}", responses={**_NOT_FOUND, 409: {"model": ErrorPublic}})
def delete_run(run_id: str, session: SessionDep, owner: OwnerDep, store: StoreDep, settings: SettingsDep) -> RunDeleted:
    """Delete a finished, failed or cancelled run: its stages, events, checkpoints and every artifact on disk.
    409 while it is queued or running (cancel it first), or while a worker is still stopping (with Retry-After)."""
    run = get_run(session, owner, run_id)
    try:
        freed = state.delete_run(session, store, run, settings.lease_ttl_s)
    except state.DeleteRefused as exc:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else None
        raise ApiError(status.HTTP_409_CONFLICT, str(exc), headers=headers) from None
    return RunDeleted(id=run_id, bytes_freed=freed)
