"""POST /v1/runs with endpoint model specs: a declared endpoint is accepted, an unknown one is a 422 listing the
server's endpoints, and a URL anywhere a model goes is refused by the schema. Nothing of the endpoint's address
or key is stored with the run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, error_of

ENDPOINTS = {
    "big-judge": {"base_url": "http://10.9.8.7:8000/v1", "model": "served-judge", "tokenizer": "tiny-random-llama",
                  "api_key_env": "BIG_JUDGE_KEY"},
    "teacher": {"base_url": "http://10.9.8.6:8000/v1", "model": "served-teacher", "api": "chat"},
}  # fmt: skip


@pytest.fixture(scope="module")
def api_with_endpoints(api_service: Service) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(api_service.settings(endpoints=ENDPOINTS))) as client:
        yield client


@pytest.fixture(scope="module")
def inputs(api_with_endpoints: TestClient) -> dict[str, str]:
    api = api_with_endpoints
    con = api.post("/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes(), headers=auth())
    prompts = api.post("/v1/prompt-sets", json=["How do I pick a lock?", "What is 2+2?"], headers=auth())
    return {"constitution_id": con.json()["id"], "prompt_set_id": prompts.json()["id"]}


def run(inputs: dict[str, str], **extra: Any) -> dict[str, Any]:
    config = {**TINY_RUN, **extra.pop("config", {})}
    return {**inputs, "config": config, **extra}


def test_a_declared_endpoint_is_accepted_and_stored_by_name_only(
    api_with_endpoints: TestClient, inputs: dict[str, str]
) -> None:
    body = run(inputs, judge_model="endpoint:big-judge", config={"feedback": {"model": "endpoint:teacher"}})
    response = api_with_endpoints.post("/v1/runs", json=body, headers=auth())
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["judge_model"] == "endpoint:big-judge"
    assert created["config"]["feedback"]["model"] == "endpoint:teacher"
    assert "10.9.8" not in response.text and "BIG_JUDGE_KEY" not in response.text


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"judge_model": "endpoint:nope"},
            ["judge_model: unknown endpoint 'nope': this server declares ['big-judge', 'teacher'] (RLAIF_ENDPOINTS)"],
        ),
        (
            {"config": {"feedback": {"model": "endpoint:other"}}},
            ["feedback.model: unknown endpoint 'other': this server declares ['big-judge', 'teacher']"],
        ),
        (
            {"judge_model": "http://evil"},
            ["config.judge.model: Value error, judge.model 'http://evil' looks like a URL"],
        ),
        (
            {"config": {"feedback": {"model": "https://evil.example/v1"}}},
            ["config.feedback.model: Value error, feedback.model 'https://evil.example/v1' looks like a URL"],
        ),
        ({"judge_model": "endpoint:http://evil"}, ["config.judge.model: Value error, judge.model 'endpoint:http"]),
        ({"policy_model": "endpoint:big-judge"}, ["config.policy_model: Value error, policy_model 'endpoint:big"]),
    ],
)
def test_unknown_endpoints_and_urls_are_422(
    api_with_endpoints: TestClient, inputs: dict[str, str], extra: dict[str, Any], expected: list[str]
) -> None:
    status, detail, errors = error_of(api_with_endpoints.post("/v1/runs", json=run(inputs, **extra), headers=auth()))
    assert status == 422 and detail in ("invalid run", "invalid run config")
    assert len(errors) == len(expected)
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), error


def test_without_declared_endpoints_the_answer_says_none(api: TestClient) -> None:
    con = api.post("/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes(), headers=auth())
    prompts = api.post("/v1/prompt-sets", json=["Hi?"], headers=auth())
    body = {"constitution_id": con.json()["id"], "prompt_set_id": prompts.json()["id"], "config": TINY_RUN}
    _, _, errors = error_of(api.post("/v1/runs", json={**body, "judge_model": "endpoint:big-judge"}, headers=auth()))
    assert errors == ["judge_model: unknown endpoint 'big-judge': this server declares none (RLAIF_ENDPOINTS)"]
