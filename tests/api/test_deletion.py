"""The lifecycle of what users store: DELETE /v1/runs/{id}, /v1/prompt-sets/{id}, /v1/constitutions/{id}, and
`rlaif delete`; disk_bytes on GET /v1/runs/{id}; a finished stage keeps no step state or best-policy copy.

- A run finished by a real worker subprocess (with MLflow on a local file store): every training stage left its
  model, metrics.jsonl and TensorBoard files and no step state; the run's disk_bytes is what is on disk; DELETE
  removes its rows and its folder and reports exactly those bytes freed.
- A queued or running run is 409 (cancel it first), and so is a cancelled one while a worker still holds a lease.
- A constitution version or prompt set that runs use is 409 naming them; a shipped version is 403; other keys'
  ids and unknown ids are 404.
- `rlaif delete RUN_ID` against an API process.

    python -m pytest tests/api/test_deletion.py -q
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from service_fixtures import (
    KEYS,
    REPO,
    TINY_RUN,
    Service,
    ServiceFactory,
    auth,
    claim_shard,
    error_of,
    release_shard,
    wait_for,
)
from sqlalchemy import func, select
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlaif.client import Client
from rlaif.pipeline import TRAINING
from rlaif.service import execute, state
from rlaif.service.db import (
    CheckpointRow,
    EventRow,
    ItemRow,
    RunRow,
    ShardRow,
    StageRunRow,
    get_engine,
    session_factory,
)

RUN_TIMEOUT = 600
MINIMAL = REPO / "constitutions" / "minimal.yaml"


def _on_disk(folder: Path) -> int:
    """Bytes of every file under `folder`, counted here independently of the API (links not followed)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _rows_of(service: Service, run_id: str, stage_ids: list[int]) -> dict[str, int]:
    """How many rows of each table still belong to the run."""
    with session_factory(get_engine(service.db_url))() as session:
        count = lambda table, *where: session.scalar(select(func.count()).select_from(table).where(*where))  # noqa: E731
        return {
            "runs": count(RunRow, RunRow.id == run_id),
            "stage_runs": count(StageRunRow, StageRunRow.run_id == run_id),
            "shards": count(ShardRow, ShardRow.stage_run_id.in_(stage_ids)),
            "items": count(ItemRow, ItemRow.run_id == run_id),
            "events": count(EventRow, EventRow.run_id == run_id),
            "checkpoints": count(CheckpointRow, CheckpointRow.run_id == run_id),
        }


def _leases(service: Service, run_id: str) -> list[str]:
    """Workers holding a lease on a stage or shard of the run."""
    with session_factory(get_engine(service.db_url))() as session:
        stage_ids = select(StageRunRow.id).where(StageRunRow.run_id == run_id)
        stages = select(StageRunRow.lease_owner).where(
            StageRunRow.run_id == run_id, StageRunRow.lease_owner.is_not(None)
        )
        shards = select(ShardRow.lease_owner).where(
            ShardRow.stage_run_id.in_(stage_ids), ShardRow.lease_owner.is_not(None)
        )
        return [*session.scalars(stages), *session.scalars(shards)]


def _inputs(client: Client, n_prompts: int = 4) -> tuple[str, str]:
    con = client.upload_constitution(MINIMAL.read_bytes())
    prompts = client.json("POST", "/v1/prompt-sets", json=[f"Deletion question {i}?" for i in range(n_prompts)])
    return con["id"], prompts["id"]


# ---------------------------------------------------------------- a service with a worker and an API process


@pytest.fixture(scope="module")
def live(
    service_factory: ServiceFactory, service_tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A SQLite service of this module's own: an API process and a worker process, MLflow on a local file store."""
    mlruns = tmp_path_factory.mktemp("mlruns")
    service = service_factory.new("sqlite", mlflow_tracking_uri=mlruns.as_uri(), mlflow_experiment="deletion")
    url = service.start_api()
    service.start_worker("w1")
    client = Client(url, KEYS["alice"])
    yield service, url, client, mlruns
    client.close()
    service.stop_all()


@pytest.fixture(scope="module")
def finished_run(live: Any) -> dict[str, Any]:
    """A whole run on tiny-random-llama, finished by the worker."""
    service, _, client, _ = live
    constitution_id, prompt_set_id = _inputs(client)
    run = client.create_run({"constitution_id": constitution_id, "prompt_set_id": prompt_set_id, "config": TINY_RUN})
    run = wait_for(
        lambda: (r := client.run(run["id"]))["status"] in ("succeeded", "failed") and r, RUN_TIMEOUT, "the run"
    )
    assert run["status"] == "succeeded", (run["error"], service.log("w1")[-3000:])
    return run


def test_a_finished_run_is_deleted_with_its_rows_and_every_byte_on_disk(
    live: Any, finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, url, client, mlruns = live
    run_id = finished_run["id"]
    folder = service.artifacts / "runs" / run_id
    # Every training stage kept its model, metrics and TensorBoard curves, and nothing to resume from.
    trained = [s["name"] for s in finished_run["stages"] if s["kind"] in TRAINING]
    assert trained == ["sft", "reward_model", "ppo"]
    for stage in trained:
        names = {p.name for p in (folder / stage).iterdir()}
        # No steps/ (step states), no best/ (PPO's best-policy copies), no temporary folders.
        assert (
            {"metrics.jsonl", "model", "tensorboard"}
            <= names
            <= {"metrics.jsonl", "model", "tensorboard", "samples.jsonl"}
        ), stage
    curves = EventAccumulator(str(folder / "ppo" / "tensorboard"))
    curves.Reload()
    assert {"objective/kl", "policy/clipfrac", "loss/value"} <= set(curves.Tags()["scalars"])
    assert [e.step for e in curves.Scalars("objective/kl")] == [1, 2]
    # The worker logged each training stage to the server's MLflow.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (to read the file store here, as rlaif does to write)
    tracking = MlflowClient(mlruns.as_uri())
    experiment = tracking.get_experiment_by_name("deletion")
    assert experiment is not None
    logged = {r.info.run_name: r for r in tracking.search_runs([experiment.experiment_id])}
    assert set(logged) == {f"{run_id}/{stage}" for stage in trained}
    for stage, metric in (("sft", "loss/train"), ("reward_model", "loss/train"), ("ppo", "objective/kl")):
        assert (
            logged[f"{run_id}/{stage}"].info.status == "FINISHED" and metric in logged[f"{run_id}/{stage}"].data.metrics
        )

    shown = client.run(run_id)["disk_bytes"]
    assert shown == _on_disk(folder) > 0
    with session_factory(get_engine(service.db_url))() as session:
        stage_ids = list(session.scalars(select(StageRunRow.id).where(StageRunRow.run_id == run_id)))
    before = _rows_of(service, run_id, stage_ids)
    assert all(before.values()), before  # rows of every kind to delete
    checkpoint = client.checkpoints(run_id)[0]

    bob = Client(url, KEYS["bob"])
    assert error_of(bob.http.delete(f"/v1/runs/{run_id}"))[:2] == (404, f"run {run_id!r} not found")
    assert folder.is_dir()

    deleted = client.delete_run(run_id)
    assert deleted == {"id": run_id, "bytes_freed": shown}
    assert not folder.exists() and not [p for p in folder.parent.iterdir() if run_id in p.name]  # nothing set aside
    assert _rows_of(service, run_id, stage_ids) == dict.fromkeys(before, 0)
    for path in (f"/v1/runs/{run_id}", f"/v1/checkpoints/{checkpoint['id']}", f"/v1/runs/{run_id}/report"):
        assert error_of(client.http.get(path))[0] == 404, path
    assert error_of(client.http.delete(f"/v1/runs/{run_id}"))[:2] == (404, f"run {run_id!r} not found")
    # Its inputs are used by no run now: they can go too.
    inputs = (
        f"/v1/prompt-sets/{finished_run['prompt_set_id']}",
        f"/v1/constitutions/{finished_run['constitution_id']}",
    )
    for path in inputs:
        assert client.http.delete(path).status_code == 204, path
        assert error_of(client.http.get(path))[0] == 404, path


def test_rlaif_delete_removes_a_stopped_run(live: Any, tmp_path: Path) -> None:
    service, url, client, _ = live
    constitution_id, prompt_set_id = _inputs(client)
    run = client.create_run({"constitution_id": constitution_id, "prompt_set_id": prompt_set_id, "config": TINY_RUN})
    client.cancel(run["id"])  # the worker may have started it: it stops at its next heartbeat and lets go
    wait_for(lambda: not _leases(service, run["id"]), 60, "the cancelled run's worker to let go of its leases")
    env = service.env(RLAIF_API_URL=url, RLAIF_API_KEY=KEYS["alice"])
    argv = [sys.executable, "-m", "rlaif", "delete", run["id"]]
    unconfirmed = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, input="n\n")
    assert unconfirmed.returncode == 1 and client.run(run["id"])["status"] == "cancelled"  # asked, and kept
    on_disk = _on_disk(service.artifacts / "runs" / run["id"])
    done = subprocess.run([*argv, "--yes"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deleted run {run['id']}" in done.stdout and int(done.stdout.split()[-1]) == on_disk > 0
    assert not (service.artifacts / "runs" / run["id"]).exists()
    again = subprocess.run([*argv, "--yes"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and f"HTTP 404: run {run['id']!r} not found" in again.stderr


# ---------------------------------------------------------------- refusals (in-process API, SQLite and PostgreSQL)


def _run(api: TestClient, constitution_id: str, prompt_set_id: str) -> str:
    body = {"constitution_id": constitution_id, "prompt_set_id": prompt_set_id, "config": TINY_RUN}
    response = api.post("/v1/runs", json=body, headers=auth())
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_run_that_has_not_stopped_is_409(api: TestClient, api_service: Service) -> None:
    con = api.post("/v1/constitutions", content=MINIMAL.read_bytes(), headers=auth()).json()["id"]
    prompts = api.post("/v1/prompt-sets", json=[f"Still running {i}?" for i in range(4)], headers=auth()).json()["id"]
    run_id = _run(api, con, prompts)
    assert error_of(api.delete(f"/v1/runs/{run_id}", headers=auth()))[:2] == (
        409, f"run {run_id} is queued: cancel it first (POST /v1/runs/{run_id}/cancel)",
    )  # fmt: skip
    # Started by the state machine, as a worker's control task would, and a shard taken by a (pretend) worker.
    rt = state.Runtime.from_settings(api_service.settings())
    assert execute.advance(rt, run_id)
    shard_id = claim_shard(rt, run_id, "critique", 0, "worker-a")
    assert shard_id is not None
    assert error_of(api.delete(f"/v1/runs/{run_id}", headers=auth()))[1].startswith(f"run {run_id} is running")
    assert api.post(f"/v1/runs/{run_id}/cancel", headers=auth()).status_code == 200
    # Cancelled, but worker-a still holds its fresh lease: it may still write into the folder.
    refused = api.delete(f"/v1/runs/{run_id}", headers=auth())
    assert error_of(refused)[:2] == (409, f"run {run_id}: a worker is still stopping; retry shortly")
    assert 1 <= int(refused.headers["Retry-After"]) <= api_service.settings().lease_ttl_s
    folder = api_service.artifacts / "runs" / run_id
    on_disk = _on_disk(folder)
    release_shard(rt, run_id, shard_id, "worker-a")  # what a worker does once it has stopped
    answer = api.delete(f"/v1/runs/{run_id}", headers=auth())
    assert answer.status_code == 200 and answer.json() == {"id": run_id, "bytes_freed": on_disk}
    assert on_disk > 0 and not folder.exists()


def test_inputs_that_runs_use_are_409_naming_them(api: TestClient) -> None:
    # A version of its own (a new name is new content), so that only this test's runs use it.
    document = MINIMAL.read_text().replace("name: minimal", "name: deletion-test", 1)
    con = api.post("/v1/constitutions", content=document.encode(), headers=auth()).json()["id"]
    prompts = api.post("/v1/prompt-sets", json=[f"In use {i}?" for i in range(4)], headers=auth()).json()["id"]
    used_by = [_run(api, con, prompts), _run(api, con, prompts)]
    for what, path, ident in (("constitution", "constitutions", con), ("prompt set", "prompt-sets", prompts)):
        status, detail, errors = error_of(api.delete(f"/v1/{path}/{ident}", headers=auth()))
        assert (status, detail) == (
            409,
            f"{what} {ident} is used by 2 run(s): {', '.join(used_by)}; delete those runs first",
        )
        assert errors == [f"used by run {run_id}" for run_id in used_by]
        assert api.get(f"/v1/{path}/{ident}", headers=auth()).status_code == 200  # still there
        assert error_of(api.delete(f"/v1/{path}/{ident}", headers=auth("bob")))[:2] == (
            404,
            f"{what} {ident!r} not found",
        )
    for run_id in used_by:
        assert api.post(f"/v1/runs/{run_id}/cancel", headers=auth()).status_code == 200
        assert api.delete(f"/v1/runs/{run_id}", headers=auth()).status_code == 200
    for path, ident in (("prompt-sets", prompts), ("constitutions", con)):  # used by no run now
        response = api.delete(f"/v1/{path}/{ident}", headers=auth())
        assert response.status_code == 204 and response.content == b"", response.text
        assert error_of(api.get(f"/v1/{path}/{ident}", headers=auth()))[0] == 404
        assert error_of(api.delete(f"/v1/{path}/{ident}", headers=auth()))[0] == 404


def test_shipped_versions_and_unknown_ids(api: TestClient) -> None:
    listed = api.get("/v1/constitutions", headers=auth()).json()["data"]
    shipped = next(c for c in listed if c["owner"] == "shipped")
    status, detail, _ = error_of(api.delete(f"/v1/constitutions/{shipped['id']}", headers=auth()))
    assert status == 403
    assert (
        detail == f"constitution {shipped['id']} is shipped with the server ({shipped['source']}): it cannot be deleted"
    )
    assert api.get(f"/v1/constitutions/{shipped['id']}", headers=auth()).status_code == 200
    for path, what in (("runs", "run"), ("prompt-sets", "prompt set"), ("constitutions", "constitution")):
        ident = f"{what.split()[0][:3]}-0000000000000000"
        assert error_of(api.delete(f"/v1/{path}/{ident}", headers=auth()))[:2] == (404, f"{what} {ident!r} not found")
