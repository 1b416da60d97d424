"""/v1/runs/{id}/report: a run's evaluation report, as JSON figures or as a self-contained HTML page with plots.

The report is written by the evaluate stage (rlaif/stages/evaluate.py) to `<run>/evaluate/report.json`; these
routes only read it (no torch here). 404 for an unknown run (or another owner's), and 404 with a reason while
the run has no finished evaluation.
"""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import HTMLResponse

from api.crud import get_run
from api.deps import OwnerDep, ReadSessionDep, StoreDep
from api.errors import ApiError
from api.schemas import ErrorPublic
from rlaif.evaluation.report import EvalReport, load_report
from rlaif.evaluation.report_html import render_html
from rlaif.pipeline import EVALUATE_STAGE
from rlaif.store import ArtifactStore, StoreError

router = APIRouter(prefix="/runs", tags=["reports"])

_NOT_FOUND = {404: {"model": ErrorPublic}}


def _report(store: ArtifactStore, run_id: str) -> EvalReport:
    try:
        return load_report(store, run_id, EVALUATE_STAGE)
    except StoreError:
        raise ApiError(
            status.HTTP_404_NOT_FOUND,
            f"run {run_id!r} has no evaluation report yet: its evaluate stage has not finished",
        ) from None


@router.get("/{run_id}/report", responses=_NOT_FOUND)
def read_report(run_id: str, session: ReadSessionDep, store: StoreDep, owner: OwnerDep) -> EvalReport:
    """The evaluation figures: win rates with intervals, refusal rates, audits, monitors, training curves, samples."""
    get_run(session, owner, run_id)
    return _report(store, run_id)


@router.get(
    "/{run_id}/report.html",
    response_class=HTMLResponse,
    responses={**_NOT_FOUND, 200: {"content": {"text/html": {}}, "description": "A self-contained page."}},
)
def read_report_html(run_id: str, session: ReadSessionDep, store: StoreDep, owner: OwnerDep) -> HTMLResponse:
    """The report as one HTML page with inline SVG plots (no scripts, nothing loaded from elsewhere)."""
    get_run(session, owner, run_id)
    html = render_html(_report(store, run_id))
    # The page needs nothing from anywhere: say so, so a browser refuses any injected external load too; and no
    # other site may frame it (this CSP replaces the one api/headers.py sends, so it says so itself).
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
    headers = {"Content-Security-Policy": csp}
    return HTMLResponse(html, headers=headers)
