"""What one run may cost (the run budget, RLAIF_MAX_RUN_*) and what one key may use (RLAIF_QUOTA_*), over the
API with two keys: the key over its quota is refused with the figure and the limit, the other key is not.

Each test has a fresh service (database, artifact root) and apps with the settings it tests. The runs are
TINY_RUN on 4 prompts: 1 held out (holdout_fraction 0.25), 3 trained on. By hand, the tokens they may generate:
critique 3 prompts x (1 answer + 2 x 1 round) x 8 = 72, pairs 3 x 2 responses x 8 = 48, PPO 8 episodes x 8 = 64,
evaluate 3 models x 1 prompt x 8 = 24: 208 in all.

    python -m pytest tests/api/test_quotas.py -q
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, error_of

from api.main import create_app

TOKENS = 208  # one TINY_RUN on 4 prompts (see above)
PROMPTS = ["quota one?", "quota two?", "quota three?", "quota four?"]


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request: pytest.FixtureRequest, make_service: Callable[..., Service]) -> Service:
    return make_service(request.param)


@contextmanager
def app(service: Service, **settings: Any) -> Iterator[TestClient]:
    with TestClient(create_app(service.settings(**settings))) as client:
        yield client


def run_request(api: TestClient, owner: str, prompts: list[str] = PROMPTS, **config: Any) -> dict[str, Any]:
    """A run request on a constitution and a prompt set uploaded by `owner`."""
    con = api.post(
        "/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes(), headers=auth(owner)
    )
    prompt_set = api.post("/v1/prompt-sets", json=prompts, headers=auth(owner))
    assert con.status_code in (200, 201) and prompt_set.status_code == 201, prompt_set.text  # (200: known version)
    ids = {"constitution_id": con.json()["id"], "prompt_set_id": prompt_set.json()["id"]}
    return {**ids, "config": {**TINY_RUN, **config}}


def test_a_run_over_the_budget_is_422_with_the_estimate_and_the_limit(service: Service) -> None:
    """Issue 16's run at 1,000 prompts, on the default limits: shards of 1, 16 responses per prompt, 10
    iterations. 750 prompts are trained on (250 held out); C(16, 2) = 120 comparisons each = 90,000 judge shards
    per iteration; 750 critique + 10 x (750 pairs + 90,000 judge) = 908,250 shards, above 100,000."""
    with app(service) as api:
        prompts = [f"budget question {i}?" for i in range(1000)]
        request = run_request(api, "alice", prompts, shard_size=1, pairs={"responses_per_prompt": 16}, iterations=10)
        status, detail, errors = error_of(api.post("/v1/runs", json=request, headers=auth()))
        assert (status, detail) == (
            422,
            "run over the server's budget on 750 training and 250 held-out prompts: make it smaller (fewer prompts, "
            "iterations or responses per prompt, larger shard_size)",
        )
        assert errors == [
            "shards: 908,250 estimated, above the server's limit of 100,000 (RLAIF_MAX_RUN_SHARDS); most in stage "
            "judge: 90,000"
        ]
        assert api.get("/v1/runs", headers=auth()).json()["count"] == 0  # nothing stored
        assert not (service.artifacts / "runs").exists()
        usage = api.get("/v1/usage", headers=auth()).json()
        assert usage["run_limits"] == {
            "items": 10_000_000,
            "shards": 100_000,
            "generated_tokens": 1_000_000_000,
            "optimizer_steps": 1_000_000,
        }
    with app(service, max_run_generated_tokens=200, max_run_shards=None) as api:
        status, _, errors = error_of(api.post("/v1/runs", json=request, headers=auth()))
        assert status == 422 and [e.split(":")[0] for e in errors] == ["generated_tokens"]  # (shards: no limit)
        status, _, errors = error_of(api.post("/v1/runs", json=run_request(api, "alice"), headers=auth()))
        assert (status, errors) == (
            422,
            [
                "generated_tokens: 208 estimated, above the server's limit of 200 (RLAIF_MAX_RUN_GENERATED_TOKENS); "
                "most in stage critique: 72"
            ],
        )
        shorter = run_request(api, "alice", ppo={**TINY_RUN["ppo"], "response_length": 7})
        created = api.post("/v1/runs", json=shorter, headers=auth())
        assert created.status_code == 201, created.text  # 208 - 8 episodes x 1 token = 200: at the limit
        assert created.json()["budget"]["generated_tokens"] == 200


def test_concurrent_runs_per_key(service: Service) -> None:
    with app(service, quota_concurrent_runs=1) as api:
        first = api.post("/v1/runs", json=run_request(api, "alice"), headers=auth()).json()
        refused = api.post("/v1/runs", json=run_request(api, "alice"), headers=auth())
        assert error_of(refused)[:2] == (
            429,
            "quota exceeded: the key has 1 run(s) queued or running, the limit is 1 (the server's "
            "RLAIF_QUOTA_CONCURRENT_RUNS); wait for one to finish, or cancel one",
        )
        assert "Retry-After" not in refused.headers  # (nobody knows when a run finishes)
        assert api.post("/v1/runs", json=run_request(api, "bob"), headers=auth("bob")).status_code == 201
        usage = api.get("/v1/usage", headers=auth()).json()
        assert (usage["active_runs"], usage["quotas"]["concurrent_runs"]) == (1, 1)
        assert api.post(f"/v1/runs/{first['id']}/cancel", headers=auth()).status_code == 200
        second = api.post("/v1/runs", json=run_request(api, "alice"), headers=auth())
        assert second.status_code == 201
        # Resuming the cancelled run would make two.
        assert error_of(api.post(f"/v1/runs/{first['id']}/resume", headers=auth()))[0] == 429
        assert api.post(f"/v1/runs/{second.json()['id']}/cancel", headers=auth()).status_code == 200
        assert api.post(f"/v1/runs/{first['id']}/resume", headers=auth()).json()["status"] == "queued"


def test_generated_tokens_per_day_per_key(service: Service) -> None:
    with app(service, quota_tokens_per_day=300) as api:
        first = api.post("/v1/runs", json=run_request(api, "alice"), headers=auth())
        assert (first.status_code, first.json()["budget"]["generated_tokens"]) == (201, TOKENS)
        refused = api.post("/v1/runs", json=run_request(api, "alice"), headers=auth())
        assert error_of(refused)[:2] == (
            429,
            "quota exceeded: this run may generate 208 tokens and the key's runs of today 208, the limit is 300 per "
            "UTC day (the server's RLAIF_QUOTA_TOKENS_PER_DAY)",
        )
        assert 1 <= int(refused.headers["Retry-After"]) <= 86_400  # the next quota day starts at midnight UTC
        assert api.post("/v1/runs", json=run_request(api, "bob"), headers=auth("bob")).status_code == 201
        usage = api.get("/v1/usage", headers=auth()).json()
        assert (usage["tokens_today"], usage["quotas"]["tokens_per_day"]) == (TOKENS, 300)
        assert usage["day_started_at"].endswith("T00:00:00Z")
        # A run alone over the quota: 4 critique rounds make critique 3 x (1 + 2 x 4) x 8 = 216, 352 in all.
        alone = api.post(
            "/v1/runs",
            json=run_request(api, "bob", critique={**TINY_RUN["critique"], "rounds": 4}),
            headers=auth("bob"),
        )
        status, detail, _ = error_of(alone)
        assert status == 429 and detail.endswith("this run alone is over it: make it smaller"), detail
        assert (
            detail.startswith("quota exceeded: this run may generate 352 tokens") and "Retry-After" not in alone.headers
        )
        # A run cancelled before it started generated nothing: its tokens are given back.
        assert api.post(f"/v1/runs/{first.json()['id']}/cancel", headers=auth()).status_code == 200
        assert api.get("/v1/usage", headers=auth()).json()["tokens_today"] == 0
        assert api.post("/v1/runs", json=run_request(api, "alice"), headers=auth()).status_code == 201


def test_stored_bytes_per_key(service: Service) -> None:
    """403, not 429: waiting does not free storage, deleting runs does."""
    with app(service) as api:
        alices, bobs = run_request(api, "alice"), run_request(api, "bob")
        uploads = api.get("/v1/usage", headers=auth()).json()
        assert uploads["run_bytes"] == 0 and uploads["stored_bytes"] == uploads["upload_bytes"] > 0
        assert api.get("/v1/usage", headers=auth("bob")).json()["stored_bytes"] == uploads["stored_bytes"]
    limit = uploads["stored_bytes"] + 1
    with app(service, quota_stored_bytes=limit) as api:
        run = api.post("/v1/runs", json=alices, headers=auth())  # below the limit: its inputs then pass it
        assert run.status_code == 201, run.text
        folder = service.artifacts / "runs" / run.json()["id"]
        run_bytes = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        usage = api.get("/v1/usage", headers=auth()).json()
        assert (usage["run_bytes"], usage["stored_bytes"]) == (run_bytes, uploads["stored_bytes"] + run_bytes)
        assert usage["quotas"]["stored_bytes"] == limit
        assert error_of(api.post("/v1/runs", json=alices, headers=auth()))[:2] == (
            403,
            f"quota exceeded: the key stores {usage['stored_bytes']:,} bytes, the limit is {limit:,} (the server's "
            "RLAIF_QUOTA_STORED_BYTES); delete runs to make room",
        )
        assert api.post("/v1/runs", json=bobs, headers=auth("bob")).status_code == 201
