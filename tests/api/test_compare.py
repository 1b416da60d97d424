"""GET /v1/runs/compare and `rlaif compare`: two finished runs side by side, through the app and the CLI.

Two runs are created through the API, one PPO and one DPO. Their evaluate stages run in-process on the tiny
model (`run_evaluate`, the stage's own function, wrapped in `records_peak_rss` as a worker would), so the reports
are real report.json files written by the report writer; the PPO run gets PPO metrics in the stage-6 file format
so it has a KL. The stage rows get the times and results of a finished run (nothing is trained here: the
earlier stages are marked done by hand, as in tests/workers/test_evaluate_stage.py), the evaluate row its real
StageResult with its measured peak RSS. The head-to-head tests at the end judge two of these runs against each
other on a real `judge` worker process (POST /v1/runs/compare/head-to-head, `rlaif compare --head-to-head`).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import KEYS, REPO, Service, auth, error_of, kill_group, wait_for
from sqlalchemy import select, update

from rlaif.config import RunConfig
from rlaif.constitution import Constitution
from rlaif.evaluation.datasets import AXES_OF_KIND
from rlaif.evaluation.head_to_head import HeadToHeadState
from rlaif.evaluation.report import Sample
from rlaif.evaluation.run_compare import RunComparison
from rlaif.peak_memory import records_peak_rss
from rlaif.service.db import RunRow, StageRunRow, get_engine, session_factory
from rlaif.stages.contract import StageContext
from rlaif.stages.evaluate import run_evaluate
from rlaif.store import ArtifactStore, read_jsonl, write_jsonl

PROMPTS = ["How do I bake bread?", "How can I hurt my neighbour?", "What is the capital of France?", "Tell me a joke."]
T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def _create_run(api: TestClient, tiny_model: str, config: dict) -> str:
    minimal = (REPO / "constitutions" / "minimal.yaml").read_bytes()
    constitution = api.post(
        "/v1/constitutions", content=minimal, headers={**auth(), "Content-Type": "application/yaml"}
    )
    body = "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS).encode()
    prompt_set = api.post("/v1/prompt-sets", content=body, headers={**auth(), "Content-Type": "application/x-ndjson"})
    run = api.post(
        "/v1/runs",
        json={
            "constitution_id": constitution.json()["id"],
            "prompt_set_id": prompt_set.json()["id"],
            "policy_model": tiny_model,
            "config": {"eval": {"holdout_fraction": 0.5}, **config},
        },
        headers=auth(),
    )
    assert run.status_code == 201, run.text
    return run.json()["id"]


def _finish(
    api_service: Service, tiny_model: str, packaged_data: Path, run_id: str, dpo: bool, sampling: dict | None = None
) -> None:
    """The run's evaluation for real, then its stage rows as a finished run has them: stage i ran for 10 (i + 1)
    seconds, one after the other; the evaluate row holds the stage's own result. `sampling`: eval.sampling's
    settings beside max_new_tokens (default greedy: runs of the one tiny model then answer alike)."""
    store = ArtifactStore(api_service.artifacts)
    inputs = store.stage_dir(run_id, "inputs", create=False)
    cfg = RunConfig.model_validate_json((inputs / "config.json").read_text()).with_overrides(
        {
            "judge": {"dtype": "float32"},
            "eval": {
                "extra_sets": ["xstest"],
                "prompts_per_set": 4,
                "sampling": {"max_new_tokens": 8, **(sampling or {})},
                "principles_per_pair": 1,
                "bootstrap_resamples": 50,
                "refusal_judge": False,
            },
        }
    )
    if not dpo:  # PPO's metrics.jsonl: the KL grows to 0.4 at the last update
        rows = [{"step": s, "objective/kl": 0.1 * s, "objective/scores": 0.1 * s} for s in range(1, 5)]
        write_jsonl(store.path(run_id, "ppo", "metrics.jsonl"), rows)
    constitution = Constitution.model_validate(json.loads((inputs / "constitution.json").read_text()))
    # The run's own models replaced by the tiny one (nothing was trained); its PPO metrics are read from the plan.
    models = {"base": tiny_model, "sft": tiny_model, "policy": tiny_model, "reward_model": None}
    ctx = StageContext.of(store, run_id, "evaluate", cfg=cfg, constitution=constitution, models=models)
    result = records_peak_rss(run_evaluate)(ctx, data_dir=packaged_data, progress=False)
    with session_factory(get_engine(api_service.db_url)).begin() as session:
        rows = session.scalars(select(StageRunRow).where(StageRunRow.run_id == run_id).order_by(StageRunRow.position))
        start = T0
        for i, row in enumerate(rows.all()):
            row.status, row.started_at = "succeeded", start
            row.finished_at = start = start + dt.timedelta(seconds=10 * (i + 1))
            row.result = result.model_dump(mode="json") if row.kind == "evaluate" else {"metrics": {}}
        session.execute(update(RunRow).where(RunRow.id == run_id).values(status="succeeded", finished_at=start))


@pytest.fixture(scope="module")
def two_runs(api: TestClient, api_service: Service, tiny_model: str, packaged_data: Path) -> tuple[str, str]:
    ppo = _create_run(api, tiny_model, {})
    dpo = _create_run(api, tiny_model, {"policy_optimization": "dpo"})
    _finish(api_service, tiny_model, packaged_data, ppo, dpo=False)
    _finish(api_service, tiny_model, packaged_data, dpo, dpo=True)
    return ppo, dpo


def test_two_finished_runs_side_by_side(api: TestClient, two_runs: tuple[str, str]) -> None:
    ppo, dpo = two_runs
    response = api.get("/v1/runs/compare", params={"ids": f"{ppo},{dpo}"}, headers=auth())
    assert response.status_code == 200, response.text
    comparison = RunComparison.model_validate(response.json())
    assert [r.id for r in comparison.runs] == [ppo, dpo]  # the order asked for
    assert [r.policy_optimization for r in comparison.runs] == ["ppo", "dpo"]
    for column in comparison.runs:
        report = api.get(f"/v1/runs/{column.id}/report", headers=auth()).json()
        assert column.status == "succeeded" and column.evaluated == "aligned" and column.report_missing is None
        for axis, stats in (("harmless", column.harmless_win_rate), ("helpful", column.helpful_win_rate)):
            entry = next(
                e["stats"]
                for e in report["win_rates"]
                if (e["dataset"], e["axis"], e["model"], e["baseline"]) == ("all", axis, "aligned", "base")
            )
            assert stats.model_dump() == entry and stats.ci_low <= stats.win_rate <= stats.ci_high
        for group, stats in (("harmful", column.refusal), ("safe_lookalike", column.over_refusal)):
            entry = next(
                e["stats"]
                for e in report["refusals"]
                if (e["group"], e["model"], e["detector"]) == (group, "aligned", "patterns")
            )
            assert stats.model_dump() == entry and stats.n == 2  # XSTest: 2 unsafe, 2 safe
        summary = next(s for s in report["model_summaries"] if s["role"] == "aligned")
        assert column.mean_tokens == summary["mean_tokens"]
        # stage i took 10 (i + 1) s; the evaluate stage recorded its own peak memory, the others nothing
        assert [s.seconds for s in column.stages] == [10.0 * (i + 1) for i in range(len(column.stages))]
        assert column.seconds == sum(s.seconds for s in column.stages)
        evaluate = column.stages[-1]
        assert evaluate.name == "evaluate" and evaluate.peak_rss_mb is not None and evaluate.peak_rss_mb > 50
        assert all(s.peak_rss_mb is None for s in column.stages[:-1]) and column.peak_rss_mb == evaluate.peak_rss_mb
    assert comparison.runs[0].ppo_kl == pytest.approx(0.4) and comparison.runs[1].ppo_kl is None
    # (the sampled KL needs a distinct aligned policy: here sft and policy are the same tiny model)
    assert [r.kl_to_sft for r in comparison.runs] == [None, None]
    # the union of both plans, each run's order kept
    assert comparison.stage_names.index("dpo") < comparison.stage_names.index("evaluate")
    assert {"reward_model", "ppo", "dpo"} <= set(comparison.stage_names)
    assert "dpo" not in [s.name for s in comparison.runs[0].stages]


def test_a_run_without_its_evaluation_has_null_figures_and_says_why(
    api: TestClient, two_runs: tuple[str, str], tiny_model: str
) -> None:
    fresh = _create_run(api, tiny_model, {})
    response = api.get("/v1/runs/compare", params={"ids": f"{two_runs[0]},{fresh}"}, headers=auth())
    assert response.status_code == 200, response.text
    column = RunComparison.model_validate(response.json()).runs[1]
    assert (column.status, column.report_missing) == ("queued", "its evaluate stage has not finished")
    assert column.harmless_win_rate is None and column.refusal is None and column.kl_to_sft is None
    assert column.seconds is None and all(s.status == "pending" and s.seconds is None for s in column.stages)


def test_ids_are_checked(api: TestClient, two_runs: tuple[str, str]) -> None:
    ppo, dpo = two_runs
    for ids, count in ((ppo, 1), (f"{ppo}, ,", 1), (",".join([ppo, dpo, *(f"run-{i:016d}" for i in range(7))]), 9)):
        status, detail, errors = error_of(api.get("/v1/runs/compare", params={"ids": ids}, headers=auth()))
        assert (status, detail, errors) == (
            422,
            "cannot compare these runs",
            [f"ids: give 2 to 8 run ids separated by commas, got {count}"],
        )
    status, _, errors = error_of(api.get("/v1/runs/compare", params={"ids": f"{ppo},{dpo},{ppo}"}, headers=auth()))
    assert (status, errors) == (422, [f"ids: {ppo} is given 2 times; give each run once"])
    assert error_of(api.get("/v1/runs/compare", headers=auth()))[0] == 422  # (no ids at all)
    status, detail, _ = error_of(api.get("/v1/runs/compare", params={"ids": f"{ppo},run-nope"}, headers=auth()))
    assert (status, detail) == (404, "run 'run-nope' not found")
    status, detail, _ = error_of(api.get("/v1/runs/compare", params={"ids": f"{ppo},{dpo}"}, headers=auth("bob")))
    assert (status, detail) == (404, f"run {ppo!r} not found")  # another key's runs are not shown
    assert api.get("/v1/runs/compare", params={"ids": f"{ppo},{dpo}"}).status_code == 401


# The CLI prints what GET /v1/runs/compare answers, and the route's answer is checked on both databases above; the
# CLI's own code has nothing database-specific, so this test runs once, against SQLite: its PostgreSQL parameter is
# left out here (the test is never collected for it) instead of being skipped at run time.
@pytest.mark.parametrize("api_service", ["sqlite"], indirect=True)
def test_rlaif_compare_prints_the_table_and_the_json(api_service: Service, two_runs: tuple[str, str]) -> None:
    ppo, dpo = two_runs
    url = api_service.start_api()
    proc = api_service.procs[-1]
    try:
        env = api_service.env(RLAIF_API_URL=url, RLAIF_API_KEY=KEYS["alice"], COLUMNS="200")
        argv = [sys.executable, "-m", "rlaif", "compare", ppo, dpo]
        table = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert table.returncode == 0, table.stdout + table.stderr
        lines = table.stdout.splitlines()
        assert ppo in table.stdout and dpo in table.stdout
        for label in (
            "harmlessness win rate vs base",
            "over-refusal, safe prompts",
            "KL to SFT",
            "evaluate (time, peak",
        ):
            assert any(label in line for line in lines), (label, table.stdout)
        kl = next(line for line in lines if "PPO KL, last update" in line)
        assert "0.400" in kl and kl.rstrip(" │").endswith("-")  # the DPO run has no PPO KL
        sampled = next(line for line in lines if "KL to SFT (held-out, sampled)" in line)
        assert "0.400" not in sampled  # PPO's curve value stays out of the sampled row
        as_json = subprocess.run([*argv, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert as_json.returncode == 0, as_json.stderr
        printed = RunComparison.model_validate_json(as_json.stdout)
        served = api_service_get(url, ppo, dpo)
        assert printed == served
        one = subprocess.run(argv[:-1], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert one.returncode == 1 and "HTTP 422: cannot compare these runs" in one.stderr
        assert "give 2 to 8 run ids separated by commas, got 1" in one.stderr
    finally:
        api_service.procs.remove(proc)
        kill_group(proc)


def api_service_get(url: str, *ids: str) -> RunComparison:
    from rlaif.client import Client

    client = Client(url, KEYS["alice"])
    try:
        return RunComparison.model_validate(client.compare(list(ids)))
    finally:
        client.close()


# ---------------------------------------------------------------- head to head
#
# Run A's evaluated answers judged against run B's by a real `judge` worker process (Celery, solo pool) on the tiny
# model. The route's own checks are database-agnostic and the result is a file, so these run once, on SQLite.
# `sampled` answers at temperature 1 (the other runs greedily), so its answers differ from the PPO run's and the
# judge is really asked; the PPO and DPO runs answer alike (one tiny model, greedy, same seed and prompts).

HEAD_TO_HEAD = "/v1/runs/compare/head-to-head"


@pytest.fixture(scope="module")
def sampled(api: TestClient, api_service: Service, tiny_model: str, packaged_data: Path) -> str:
    run_id = _create_run(api, tiny_model, {})
    _finish(api_service, tiny_model, packaged_data, run_id, dpo=False, sampling={"temperature": 1.0, "top_p": 1.0})
    return run_id


@pytest.fixture(scope="module")
def judge_worker(api_service: Service, service_tiny_model: str) -> Iterator[None]:
    proc = api_service.start_worker("judge-h2h", queues="judge")
    yield
    api_service.procs.remove(proc)
    kill_group(proc)


def _answers(api_service: Service, run_id: str) -> dict[str, Sample]:
    path = ArtifactStore(api_service.artifacts).path(run_id, "evaluate", "answers.jsonl")
    return {s.id: s for s in read_jsonl(path, Sample)}


def _judged(api: TestClient, a: str, b: str) -> HeadToHeadState:
    def done() -> HeadToHeadState | None:
        response = api.get(HEAD_TO_HEAD, params={"ids": f"{a},{b}"}, headers=auth())
        assert response.status_code == 200, response.text
        found = HeadToHeadState.model_validate(response.json())
        assert found.status != "failed", found.error
        return found if found.status == "done" else None

    return wait_for(done, 180, f"the head to head of {a} vs {b}")


@pytest.mark.parametrize("api_service", ["sqlite"], indirect=True)
def test_head_to_head_is_judged_by_a_worker_and_then_reused(
    api: TestClient, api_service: Service, two_runs: tuple[str, str], sampled: str, judge_worker: None
) -> None:
    ppo, _ = two_runs
    response = api.post(HEAD_TO_HEAD, json={"run_ids": [ppo, sampled]}, headers=auth())
    assert response.status_code == 202, response.text
    assert HeadToHeadState.model_validate(response.json()).status == "pending"
    judged = _judged(api, ppo, sampled)
    result = judged.result
    assert result is not None and judged.run_ids == (ppo, sampled) and (result.run_a, result.run_b) == (ppo, sampled)
    # The shared prompts, counted from the two answer files: all of them (same held-out split, same XSTest draw).
    ours, theirs = _answers(api_service, ppo), _answers(api_service, sampled)
    shared = [i for i in ours if i in theirs and ours[i].prompt == theirs[i].prompt]
    assert result.prompts == len(shared) == len(ours) == 6 and result.mismatched == []
    assert any(ours[i].answers["aligned"] != theirs[i].answers["aligned"] for i in shared)  # the judge was asked
    report = api.get(f"/v1/runs/{ppo}/report", headers=auth()).json()
    assert result.judge_model == report["judge_model"] == result.judge_model_b and result.note is None
    assert (result.role_a, result.role_b) == ("aligned", "aligned")
    for axis in ("harmless", "helpful"):
        stats = result.axis(axis)
        # only the held-out prompts count on an axis (XSTest measures refusals): 2 of the 4 prompts held out
        assert stats is not None and stats.n == sum(AXES_OF_KIND[ours[i].kind].count(axis) for i in shared) == 2
        assert 0.0 <= stats.ci_low <= stats.win_rate <= stats.ci_high <= 1.0
        assert stats.wins + stats.losses + stats.ties == stats.n
    # A second request reuses the file: 200 with the same result, nothing queued, the file not written again.
    path = ArtifactStore(api_service.artifacts).path(ppo, "head_to_head", f"{sampled}.json")
    written = path.stat().st_mtime_ns
    again = api.post(HEAD_TO_HEAD, json={"run_ids": [ppo, sampled]}, headers=auth())
    assert again.status_code == 200, again.text
    assert HeadToHeadState.model_validate(again.json()) == judged
    time.sleep(1.0)  # (a task sent by mistake would have rewritten the file by now: the result is a few pairs)
    assert path.stat().st_mtime_ns == written
    # GET /v1/runs/compare carries it
    comparison = RunComparison.model_validate(
        api.get("/v1/runs/compare", params={"ids": f"{ppo},{sampled}"}, headers=auth()).json()
    )
    assert comparison.head_to_head == [result]


@pytest.mark.parametrize("api_service", ["sqlite"], indirect=True)
def test_identical_answers_head_to_head_are_exactly_half(
    api: TestClient, api_service: Service, two_runs: tuple[str, str], judge_worker: None
) -> None:
    ppo, dpo = two_runs
    assert all(
        x.answers["aligned"] == y.answers["aligned"]
        for x, y in zip(_answers(api_service, ppo).values(), _answers(api_service, dpo).values(), strict=True)
    )
    for a, b in ((ppo, dpo), (ppo, ppo)):  # two runs that answered alike; a run against itself
        response = api.post(HEAD_TO_HEAD, json={"run_ids": [a, b]}, headers=auth())
        assert response.status_code == 202, response.text
        result = _judged(api, a, b).result
        assert result is not None and result.prompts == 6
        for entry in result.axes:
            # every pair identical: p = 1/2 each, a tie; wins 0, losses 0, ties n = 2, win rate (0 + 2 / 2) / 2
            stats = entry.stats
            assert (stats.n, stats.wins, stats.losses, stats.ties) == (2, 0, 0, 2)
            assert stats.win_rate == 0.5 and stats.soft_win_rate == 0.5 and stats.flip_rate == 0.0


@pytest.mark.parametrize("api_service", ["sqlite"], indirect=True)
def test_head_to_head_requests_are_checked(api: TestClient, two_runs: tuple[str, str], tiny_model: str) -> None:
    ppo, dpo = two_runs
    status, detail, _ = error_of(api.post(HEAD_TO_HEAD, json={"run_ids": [ppo, dpo]}, headers=auth("bob")))
    assert (status, detail) == (404, f"run {ppo!r} not found")  # another key's runs
    status, detail, _ = error_of(api.get(HEAD_TO_HEAD, params={"ids": f"{ppo},{dpo}"}, headers=auth("bob")))
    assert (status, detail) == (404, f"run {ppo!r} not found")
    fresh = _create_run(api, tiny_model, {})
    status, detail, errors = error_of(api.post(HEAD_TO_HEAD, json={"run_ids": [ppo, fresh]}, headers=auth()))
    assert (status, detail) == (409, "cannot compare these runs head to head")
    assert errors == [f"run {fresh}: its evaluation has not succeeded (evaluate stage pending)"]
    status, detail, _ = error_of(api.get(HEAD_TO_HEAD, params={"ids": f"{dpo},{fresh}"}, headers=auth()))
    assert status == 404 and "POST /v1/runs/compare/head-to-head" in detail  # never requested
    assert error_of(api.post(HEAD_TO_HEAD, json={"run_ids": [ppo, dpo, fresh]}, headers=auth()))[0] == 422
    assert error_of(api.get(HEAD_TO_HEAD, params={"ids": ppo}, headers=auth()))[0] == 422


@pytest.mark.parametrize("api_service", ["sqlite"], indirect=True)
def test_rlaif_compare_head_to_head_waits_and_prints_the_rows(
    api_service: Service, two_runs: tuple[str, str], sampled: str, judge_worker: None
) -> None:
    ppo, _ = two_runs
    url = api_service.start_api()
    proc = api_service.procs[-1]
    try:
        env = api_service.env(RLAIF_API_URL=url, RLAIF_API_KEY=KEYS["alice"], COLUMNS="250")
        # sampled vs ppo: not judged yet that way round, so the command queues it and waits for the worker
        argv = [sys.executable, "-m", "rlaif", "compare", sampled, ppo, "--head-to-head"]
        table = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert table.returncode == 0, table.stdout + table.stderr
        assert f"head to head {sampled} vs {ppo}: pending" in table.stderr
        assert f"head to head {sampled} vs {ppo}: done" in table.stderr
        for axis in ("harmlessness", "helpfulness"):
            line = next(
                line for line in table.stdout.splitlines() if f"{sampled} vs {ppo} (head to head), {axis}" in line
            )
            assert "n=2" in line
        assert "KL to SFT (held-out, sampled)" in table.stdout  # the rest of the table as before
        one = subprocess.run([*argv[:-2], "--head-to-head"], cwd=REPO, env=env, capture_output=True, text=True)
        assert one.returncode == 1 and "--head-to-head compares 2 runs (A against B), got 1" in one.stderr
    finally:
        api_service.procs.remove(proc)
        kill_group(proc)
