"""The failure policy and cancellation with a real worker: a data error fails the run at once with a readable
reason; cancelling a run stops its training stage mid-loop, and the worker goes on serving.

    python -m pytest tests/workers/test_policy.py -q
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, ServiceFactory, auth, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(service_factory: ServiceFactory, service_tiny_model: str) -> Iterator[tuple[Service, TestClient]]:
    """One worker for all queues and an in-process API on the same SQLite run store."""
    from api.main import create_app

    service = service_factory.new("sqlite")
    try:
        service.start_worker("w1")
        with TestClient(create_app(service.settings())) as api:
            yield service, api
    finally:
        service.stop_all()


def _start(api: TestClient, config: dict[str, Any], **extra: Any) -> str:
    con = api.post("/v1/constitutions", content=(REPO / "constitutions/minimal.yaml").read_bytes(), headers=auth())
    prompts = api.post("/v1/prompt-sets", json=[f"Question number {i}?" for i in range(8)], headers=auth())
    request = {"constitution_id": con.json()["id"], "prompt_set_id": prompts.json()["id"], "config": config, **extra}
    response = api.post("/v1/runs", json=request, headers=auth())
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _finished(api: TestClient, run_id: str) -> dict[str, Any] | None:
    run = api.get(f"/v1/runs/{run_id}", headers=auth()).json()
    return run if run["status"] in ("succeeded", "failed", "cancelled") else None


def test_a_data_error_fails_the_run_at_once_with_its_reason(served: tuple[Service, TestClient], tmp_path: Path) -> None:
    service, api = served
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # passes the API's check, but has no weights
    run_id = _start(api, TINY_RUN, policy_model=str(broken))
    run = wait_for(lambda: _finished(api, run_id), 120, "the run to fail")
    assert run["status"] == "failed"
    stage = run["stages"][0]
    assert (stage["name"], stage["status"]) == ("critique", "failed")
    assert run["error"] == f"stage critique: {stage['error']}"
    assert str(broken) in stage["error"]  # readable: names the model it could not load
    assert not stage["error"].startswith("Traceback")
    assert all(s["status"] == "pending" for s in run["stages"][1:])
    events = api.get(f"/v1/runs/{run_id}/events", params={"kind": "message"}, headers=auth()).json()["data"]
    assert events[-1]["level"] == "error" and events[-1]["message"] == f"run failed: {run['error']}"
    assert "Retry in" not in service.log("w1")  # failed fast, not retried


def test_cancel_stops_training_mid_loop(served: tuple[Service, TestClient]) -> None:
    service, api = served
    long_sft = {**TINY_RUN, "sft": {**TINY_RUN["sft"], "epochs": 100, "checkpoint_every": 100000}}
    run_id = _start(api, long_sft)

    def training() -> bool:
        metrics = api.get(f"/v1/runs/{run_id}/events", params={"kind": "metrics", "stage": "sft"}, headers=auth())
        return len(metrics.json()["data"]) >= 2

    wait_for(training, 120, "SFT to log two steps")
    cancelled = api.post(f"/v1/runs/{run_id}/cancel", headers=auth()).json()
    assert cancelled["status"] == "cancelled"
    wait_for(lambda: f"run {run_id}: stage sft stopped: cancelled" in service.log("w1"), 30, "the worker to stop SFT")
    run = api.get(f"/v1/runs/{run_id}", headers=auth()).json()
    sft = next(s for s in run["stages"] if s["name"] == "sft")
    assert sft["status"] == "cancelled" and 2 <= sft["done"] < sft["total"]
    assert not (service.artifacts / "runs" / run_id / "sft" / "model").exists()
    # The worker is still serving: the next run goes through to the end.
    next_run = _start(api, TINY_RUN)
    assert wait_for(lambda: _finished(api, next_run), 180, "the next run")["status"] == "succeeded"


def test_a_database_outage_is_retried_not_failed(make_service, service_tiny_model: str) -> None:
    """PostgreSQL refuses connections for a while (a restart): the task retries with backoff, then succeeds."""
    from service_fixtures import POSTGRES_URL, make_run
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from rlaif.service import state
    from rlaif.service.db import RunRow
    from workers.app import create_celery

    service: Service = make_service("postgresql")
    rt = state.Runtime.from_settings(service.settings())
    run_id = make_run(rt)
    service.start_worker("w1")
    database = make_url(service.db_url).database
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:  # close the database and drop every open connection to it
        connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        )
    try:
        create_celery(service.settings()).send_task(state.ADVANCE, args=[run_id])
        retry = f"control.advance({run_id}): transient error, retry in"
        wait_for(lambda: retry in service.log("w1"), 60, "a retry of the advance")
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()

    def started() -> bool:
        with rt.sessions() as session:
            run = session.get(RunRow, run_id)
            return run is not None and run.status == "running"

    wait_for(started, 90, "the retried advance to start the run")
    with rt.sessions.begin() as session:  # enough: stop the run here
        run = session.get(RunRow, run_id)
        assert run is not None and state.cancel(session, run)
    assert f"run {run_id} failed" not in service.log("w1")  # retried, never failed
