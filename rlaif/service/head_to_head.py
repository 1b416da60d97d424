"""Head-to-head comparisons of two finished runs, as the service stores and runs them (no table: one file each).

The state of the head-to-head of run A against run B is one JSON file, `<A>/head_to_head/<B>.json`
(`HeadToHeadState`), keyed by the ordered pair (A's win rate over B is not B's over A, which is its complement
only up to ties and the principles drawn per pair id). It lives under run A, so deleting A deletes it. It is
always written whole and atomically (temporary file, then rename), so a reader sees one state or the next.

- `queue(store, a, b)` (the API, POST): a state to reuse when a finished result is there for the same two
  evaluations, or a fresh `pending` state written now (the caller then sends the task).
- `rlaif.service.execute.run_head_to_head(rt, a, b)` (the `judge.head_to_head` task): re-reads both runs' rows,
  configs and answers, skips a result already done for these evaluations (a redelivered message, a second
  request), else marks it running, judges (rlaif.evaluation.compare.judge_head_to_head) and writes `done`;
  `fail` writes `failed` with the reason. This module imports no torch: the API reads and queues with it.

    python -c "from rlaif.service.execute import run_head_to_head; help(run_head_to_head)"
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from rlaif.evaluation.head_to_head import HeadToHeadState
from rlaif.evaluation.report import load_report
from rlaif.pipeline import EVALUATE_STAGE
from rlaif.store import ArtifactStore, StoreError, atomic_write_json

log = logging.getLogger(__name__)

FOLDER = "head_to_head"  # under run A's folder: one <B>.json per opponent
TASK = "judge.head_to_head"  # workers/judge.py; args (run_a, run_b). On `judge`: it loads the judge model.


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def state_path(store: ArtifactStore, a: str, b: str, create: bool = False) -> Path:
    return store.inside(store.stage_dir(a, FOLDER, create=create) / f"{b}.json")


def read_state(store: ArtifactStore, a: str, b: str) -> HeadToHeadState | None:
    """The stored state, or None when there is none (or it cannot be read: it is then judged again)."""
    path = state_path(store, a, b)
    if not path.is_file():
        return None
    try:
        return HeadToHeadState.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        log.warning("%s is not a valid head-to-head state; it will be judged again", path)
        return None


def write_state(store: ArtifactStore, state: HeadToHeadState) -> None:
    a, b = state.run_ids
    atomic_write_json(state_path(store, a, b, create=True), state.model_dump(mode="json"))


def report_stamps(store: ArtifactStore, a: str, b: str) -> dict[str, str]:
    """run id -> created_at of its evaluation report (StoreError when one has none)."""
    return {run_id: load_report(store, run_id, EVALUATE_STAGE).created_at for run_id in dict.fromkeys((a, b))}


def current(store: ArtifactStore, a: str, b: str) -> HeadToHeadState | None:
    """The stored state when it belongs to the runs' present evaluations (None when absent or stale)."""
    state = read_state(store, a, b)
    if state is None:
        return None
    try:
        stamps = report_stamps(store, a, b)
    except StoreError:
        return None
    return state if state.reports == stamps else None


def queue(store: ArtifactStore, a: str, b: str) -> tuple[HeadToHeadState, bool]:
    """(state, whether the caller must send the task). A done result of the same evaluations, or one pending or
    running, is reused as it is; a failed, stale or missing one is replaced by a fresh pending state."""
    state = current(store, a, b)
    if state is not None and state.status != "failed":
        return state, False
    state = HeadToHeadState(run_ids=(a, b), status="pending", reports=report_stamps(store, a, b), queued_at=now())
    write_state(store, state)
    return state, True


def fail(store: ArtifactStore, a: str, b: str, reason: str) -> None:
    """Record why the head-to-head failed (a POST queues it again)."""
    found = read_state(store, a, b)
    base = found if found is not None else HeadToHeadState(run_ids=(a, b), status="failed")
    write_state(store, base.model_copy(update={"status": "failed", "finished_at": now(), "error": reason}))
