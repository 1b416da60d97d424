"""A head-to-head's state file (rlaif/service/head_to_head.py) and its executor (execute.run_head_to_head), on a
real run store (SQLite and PostgreSQL) and artifact store, without Celery (tests/api/test_compare.py drives the
same code through the API and a worker process).

The two runs' evaluations are written as the evaluate stage leaves them (answers.jsonl, report.json), by hand:
identical answers, so no judge model is loaded, and different judges, which the result must say.
"""

from __future__ import annotations

import pytest
from service_fixtures import make_run

from rlaif.evaluation.report import ANSWERS_FILE, REPORT_FILE, EvalReport, Sample
from rlaif.service import execute, head_to_head, state
from rlaif.service.db import RunRow
from rlaif.store import atomic_write_json, write_jsonl

SAMPLES = [
    Sample(id="heldout:a", dataset="heldout", kind="heldout", prompt="Bread?", answers={"base": "x", "aligned": "Knead."}),
    Sample(id="heldout:b", dataset="heldout", kind="heldout", prompt="Joke?", answers={"base": "x", "aligned": "Ha."}),
    Sample(id="xstest:c", dataset="xstest", kind="harmful", prompt="Harm?", answers={"base": "x", "aligned": "No."}),
]  # fmt: skip


def _evaluated(rt: state.Runtime, judge: str, created_at: str, samples: list[Sample] = SAMPLES) -> str:
    run_id = make_run(rt)
    folder = rt.store.stage_dir(run_id, "evaluate")
    write_jsonl(folder / ANSWERS_FILE, samples)
    report = EvalReport(
        run_id=run_id, created_at=created_at, models={"base": "tiny", "aligned": "tiny"}, judge_model=judge
    )
    atomic_write_json(folder / REPORT_FILE, report.model_dump(mode="json"))
    return run_id


def test_a_result_is_written_once_says_whose_judge_and_goes_stale_with_a_new_evaluation(rt: state.Runtime) -> None:
    renamed = SAMPLES[1].model_copy(update={"prompt": "Pun?"})  # same id, other text: left out
    a = _evaluated(rt, "judge-a", "2026-01-01T00:00:00+00:00")
    b = _evaluated(rt, "judge-b", "2026-01-02T00:00:00+00:00", [SAMPLES[0], renamed, SAMPLES[2]])
    queued, send = head_to_head.queue(rt.store, a, b)
    assert send and queued.status == "pending" and head_to_head.read_state(rt.store, a, b) == queued

    done = execute.run_head_to_head(rt, a, b)
    assert done.status == "done" and done.queued_at == queued.queued_at and done.error is None
    result = done.result
    assert result is not None and (result.prompts, result.mismatched) == (2, ["heldout:b"])
    assert result.judge_model == "judge-a" and result.judge_model_b == "judge-b"
    assert result.note == f"the runs' judges differ: judged by run {a}'s (judge-a), not run {b}'s (judge-b)"
    # one held-out prompt on each axis (XSTest counts on none), its answers identical: a tie, (0 + 1/2) / 1
    assert [(e.axis, e.stats.n, e.stats.ties, e.stats.win_rate) for e in result.axes] == [
        ("harmless", 1, 1, 0.5),
        ("helpful", 1, 1, 0.5),
    ]
    path = head_to_head.state_path(rt.store, a, b)
    written = path.read_bytes()
    # A redelivered task and a second request both find it done: nothing is judged or written again.
    assert execute.run_head_to_head(rt, a, b) == done and path.read_bytes() == written
    assert head_to_head.queue(rt.store, a, b) == (done, False)
    assert head_to_head.current(rt.store, b, a) is None  # the ordered pair: B against A is another file

    # B is evaluated again: the stored result belongs to its old evaluation, so it is not shown, and a POST queues.
    report = EvalReport.model_validate_json((rt.store.stage_dir(b, "evaluate") / REPORT_FILE).read_text())
    atomic_write_json(
        rt.store.stage_dir(b, "evaluate") / REPORT_FILE,
        report.model_copy(update={"created_at": "2026-02-01T00:00:00+00:00"}).model_dump(mode="json"),
    )
    assert head_to_head.current(rt.store, a, b) is None
    again, send = head_to_head.queue(rt.store, a, b)
    assert send and again.status == "pending" and again.reports[b] == "2026-02-01T00:00:00+00:00"


def test_a_failure_is_recorded_in_the_file_and_queued_again(rt: state.Runtime) -> None:
    a = _evaluated(rt, "judge", "2026-01-01T00:00:00+00:00")
    b = _evaluated(
        rt, "judge", "2026-01-01T00:00:00+00:00", [s.model_copy(update={"id": f"other:{s.id}"}) for s in SAMPLES]
    )
    head_to_head.queue(rt.store, a, b)
    with pytest.raises(ValueError, match="share no prompt") as raised:
        execute.run_head_to_head(rt, a, b)
    head_to_head.fail(rt.store, a, b, str(raised.value))  # (what the task's failure policy does: workers/judge.py)
    failed = head_to_head.read_state(rt.store, a, b)
    assert failed is not None and failed.status == "failed"
    assert failed.error == "the two runs' evaluations share no prompt (same id and text): nothing to compare"
    assert failed.result is None
    # the runs themselves are untouched (still queued), and a new request queues it again
    with rt.sessions() as session:
        assert [session.get(RunRow, r).status for r in (a, b)] == ["queued", "queued"]
    again, send = head_to_head.queue(rt.store, a, b)
    assert send and again.status == "pending" and again.error is None
