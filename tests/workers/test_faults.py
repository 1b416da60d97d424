"""Faults a long run must survive, each against real processes; every run still finishes with each item once.

- The API process is killed (SIGKILL) in the middle of a run and started again: the run goes on, the new
  API reports it, and a client that polled through the outage sees it finish.
- A worker is stopped (SIGTERM: warm shutdown) right after a stage finished, and a new one started: the
  next stage's message waited in Redis and the new worker takes it.
- Every PostgreSQL connection is dropped, and new ones refused, for a few seconds in the middle of a stage:
  the task retries with backoff and the run finishes.
- The disk under the artifact root fills up (a small tmpfs): the stage fails with a readable reason, nothing
  stored is corrupt (every manifest verifies, no temporary files left), and after space is freed the run is
  resumed (POST /v1/runs/{id}/resume) and finishes. Needs root for `mount`; skipped where it is refused.
(Worker SIGKILL mid-shard and mid-training, and a Redis restart: tests/workers/test_redelivery.py.)

    python -m pytest tests/workers/test_faults.py -q
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_fixtures import (
    KEYS,
    POSTGRES_URL,
    REPO,
    TINY_RUN,
    Service,
    check_run_integrity,
    kill_group,
    wait_for,
)

from rlaif.client import ApiUnreachable, Client
from rlaif.store import MANIFEST, verify_manifest

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "cancelled")


def _submit(client: Client, config: dict[str, Any] | None = None, n_prompts: int = 8) -> str:
    constitution = client.upload_constitution((REPO / "constitutions" / "minimal.yaml").read_bytes())
    prompts = (REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:n_prompts]
    prompt_set = client.json("POST", "/v1/prompt-sets", content="\n".join(prompts).encode())
    body = {"constitution_id": constitution["id"], "prompt_set_id": prompt_set["id"], "config": config or TINY_RUN}
    return client.create_run(body)["id"]


def _stage(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["stages"] if s["name"] == name)


def _finish(client: Client, run_id: str, timeout: float = 300) -> dict[str, Any]:
    return wait_for(lambda: (r := client.run(run_id))["status"] in TERMINAL and r, timeout, f"run {run_id} to finish")


def test_the_api_process_restarts_mid_run(make_service, service_tiny_model: str) -> None:
    service: Service = make_service("sqlite")
    url = service.start_api()
    api_proc = service.procs[-1]
    service.start_worker("w1", beat=True)
    client = Client(url, KEYS["alice"])
    slow_critique = {**TINY_RUN, "critique": {**TINY_RUN["critique"], "batch_size": 1}}
    run_id = _submit(client, slow_critique)
    wait_for(lambda: _stage(client.run(run_id), "critique")["done"] >= 1, 120, "the first critique item")

    # A user follows the run with `rlaif watch` across the restart.
    watch_env = service.env(RLAIF_API_URL=url, RLAIF_API_KEY=KEYS["alice"], COLUMNS="200")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "rlaif", "watch", run_id], cwd=REPO, env=watch_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    kill_group(api_proc)  # the API dies mid-stage; the worker does not need it
    with pytest.raises(ApiUnreachable, match=f"cannot reach the API at {url}"):
        client.run(run_id)
    time.sleep(2)
    port = int(url.rsplit(":", 1)[1])
    restarted = service.spawn(
        "api-2", [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    )
    wait_for(lambda: _answers(url), 60, "the restarted API")
    assert restarted.poll() is None
    run = _finish(client, run_id)  # the same client, the same URL: the restart cost it nothing but a refused call
    assert run["status"] == "succeeded", run["error"]
    check_run_integrity(service, run_id)
    output, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, output  # the watch waited out the restart and saw the run succeed
    assert f"cannot reach the API at {url}" in output and "retrying" in output
    assert f"run {run_id} succeeded" in output


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_worker_restarted_between_stages(make_service, service_tiny_model: str) -> None:
    service: Service = make_service("postgresql")
    url = service.start_api()
    client = Client(url, KEYS["alice"])
    # The first worker does not take training: when critique ends, SFT's message waits in Redis.
    first = service.start_worker("w1", queues="control,generate,judge")
    run_id = _submit(client)
    wait_for(lambda: _stage(client.run(run_id), "critique")["status"] == "succeeded", 180, "critique to finish")
    assert _stage(client.run(run_id), "sft")["status"] == "running"
    os.killpg(first.pid, signal.SIGTERM)  # warm shutdown, as a deploy does it
    assert first.wait(60) == 0
    service.start_worker("w2", beat=True)  # a new worker on every queue
    run = _finish(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    check_run_integrity(service, run_id)
    assert "Task train.sft[" in service.log("w2") and "Task train.sft[" not in service.log("w1")


def _drop_connections(database: str, seconds: float) -> int:
    """Refuse new connections to `database`, drop every open one, wait, allow again; the number dropped."""
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            dropped = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalar()
        time.sleep(seconds)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    return int(dropped or 0)


def test_the_database_connection_drops_for_a_few_seconds(make_service, service_tiny_model: str) -> None:
    """Twice: in the middle of a generation shard, and in the middle of SFT (while metrics are being copied)."""
    from sqlalchemy.engine import make_url

    service: Service = make_service("postgresql")
    url = service.start_api()
    service.start_worker("w1", beat=True)
    client = Client(url, KEYS["alice"])
    config = {
        **TINY_RUN,
        "critique": {**TINY_RUN["critique"], "batch_size": 1},
        "sft": {**TINY_RUN["sft"], "epochs": 12, "checkpoint_every": 4},
    }
    run_id = _submit(client, config)
    database = make_url(service.db_url).database
    assert database is not None
    wait_for(lambda: _stage(client.run(run_id), "critique")["done"] >= 1, 120, "the first critique item")
    assert _drop_connections(database, 4) >= 2  # (at least the worker's and the API's)
    wait_for(lambda: _stage(client.run(run_id), "sft")["done"] >= 2, 180, "SFT to report two steps")
    assert _drop_connections(database, 4) >= 2

    run = _finish(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    check_run_integrity(service, run_id)
    assert "transient error, retry in" in service.log("w1")  # it noticed, retried, and lost nothing
    history = client.json("GET", f"/v1/runs/{run_id}/metrics")["stages"]["sft"]["history"]
    assert [h["step"] for h in history] == list(range(1, _stage(run, "sft")["total"] + 1))  # no step lost or doubled


# ---------------------------------------------------------------- a full disk


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Write zeros into `folder` until its file system is full (unbuffered: nothing is left to flush)."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096):  # big blocks, then the last pages
            written = size
            while written:
                try:
                    written = os.write(fd, b"\0" * size)
                except OSError:  # ENOSPC: full at this block size
                    written = 0
        assert os.statvfs(folder).f_bavail == 0
    finally:
        os.close(fd)
    return filler


def _check_nothing_corrupt(run_dir: Path) -> int:
    """Every manifest under the run verifies and no temporary file is left behind; the number of manifests."""
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name]
    assert not leftovers, leftovers
    manifests = list(run_dir.rglob(MANIFEST))
    for manifest in manifests:
        verify_manifest(manifest.parent)
    return len(manifests)


def test_a_full_disk_fails_the_stage_cleanly_and_the_run_resumes(make_service, service_tiny_model: str) -> None:
    service: Service = make_service("sqlite")
    with _tmpfs(service.artifacts, "400m"):
        url = service.start_api()
        client = Client(url, KEYS["alice"])
        first = service.start_worker("w1", queues="control,generate,judge")  # no training worker yet
        run_id = _submit(client)
        wait_for(lambda: _stage(client.run(run_id), "critique")["status"] == "succeeded", 180, "critique to finish")
        filler = _fill(service.artifacts)
        service.start_worker("w2", queues="train")  # SFT now starts on a full disk
        run = _finish(client, run_id)
        assert run["status"] == "failed"
        sft = _stage(run, "sft")
        assert sft["status"] == "failed"
        assert "the artifact disk is full" in sft["error"], sft["error"]
        assert "resume" in sft["error"]  # it says what to do
        run_dir = service.artifacts / "runs" / run_id
        assert _check_nothing_corrupt(run_dir) >= 2  # the pinned inputs and critique's export still verify
        assert not (run_dir / "sft" / "model").exists()

        filler.unlink()  # space is freed
        resumed = client.resume(run_id)
        assert resumed["status"] == "running"
        run = _finish(client, run_id)
        assert run["status"] == "succeeded", run["error"]
        check_run_integrity(service, run_id)
        assert _check_nothing_corrupt(run_dir) >= 5
        kill_group(first)
        service.stop_all()  # (before the tmpfs is unmounted)
