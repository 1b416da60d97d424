"""Ten runs submitted at once, from ten client threads to the API process, all finish with correct results.

Two worker processes share the queues; the run store is SQLite, so the API and both workers contend for one
database file. Each run has its own prompt set, so a mix-up between runs would show: every run's exports hold
its own prompts only, each item once, and each run has its own checkpoints and evaluation report.

    python -m pytest tests/test_many_runs.py -q -s      # -s prints the finishing order and times
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from service_fixtures import KEYS, REPO, TINY_RUN, Service, check_run_integrity, wait_for

from rlaif.client import Client
from rlaif.store import iter_jsonl_dicts

pytestmark = pytest.mark.slow

N_RUNS = 10


def _submit(url: str, index: int) -> tuple[str, str]:
    """Start run `index` on its own prompts (the demo prompts, each tagged with the index); (run id, tag)."""
    client = Client(url, KEYS["alice"])
    constitution = client.upload_constitution((REPO / "constitutions" / "minimal.yaml").read_bytes())
    tag = f"(run {index})"
    rows = [json.loads(line) for line in (REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:8]]
    prompts = [{**row, "prompt": f"{row['prompt']} {tag}"} for row in rows]
    prompt_set = client.json("POST", "/v1/prompt-sets", json={"name": tag, "prompts": prompts})
    body = {"constitution_id": constitution["id"], "prompt_set_id": prompt_set["id"], "config": TINY_RUN}
    return client.create_run(body)["id"], tag


def test_ten_runs_at_once_all_finish(make_service, service_tiny_model: str) -> None:
    service: Service = make_service("sqlite")
    url = service.start_api()
    service.start_worker("w1", beat=True)
    service.start_worker("w2")
    started = time.monotonic()
    with ThreadPoolExecutor(N_RUNS) as pool:
        submitted = list(pool.map(lambda i: _submit(url, i), range(N_RUNS)))
    run_ids = [run_id for run_id, _ in submitted]
    assert len(set(run_ids)) == N_RUNS
    client = Client(url, KEYS["alice"])
    finished: dict[str, float] = {}

    def all_done() -> bool:
        for run_id in run_ids:
            if run_id not in finished and client.run(run_id)["status"] in ("succeeded", "failed", "cancelled"):
                finished[run_id] = time.monotonic() - started
        return len(finished) == N_RUNS

    wait_for(all_done, 900, "ten runs to finish", interval=2.0)
    order = sorted(finished, key=finished.get)  # type: ignore[arg-type]
    print("\nfinished (submission index, seconds):", [(run_ids.index(r), round(finished[r])) for r in order])

    for run_id, tag in submitted:
        run: dict[str, Any] = client.run(run_id)
        assert run["status"] == "succeeded", (run_id, run["error"])
        check_run_integrity(service, run_id)  # every item exactly once, exports in order, manifests verify
        records = service.artifacts / "runs" / run_id / "critique" / "records.jsonl"
        assert all(r["prompt"].endswith(tag) for r in iter_jsonl_dicts(records))  # its own prompts, nobody else's
        assert {c["run_id"] for c in client.checkpoints(run_id)} == {run_id}
        assert client.report(run_id)["run_id"] == run_id
