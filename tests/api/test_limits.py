"""Request limits on every route: per-key rate limits (429 with Retry-After) and body size limits (413).

python -m pytest tests/api/test_limits.py -q
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Service, auth, error_of, v1_routes

from api.main import create_app


@pytest.fixture
def limited(api_service: Service) -> Iterator[TestClient]:
    app = create_app(api_service.settings(rate_limit="5/minute", max_request_bytes=2_000, max_upload_bytes=10_000))
    with TestClient(app) as client:
        yield client


def test_each_key_has_its_own_rate_limit(limited: TestClient) -> None:
    for _ in range(5):
        assert limited.get("/v1/runs", headers=auth()).status_code == 200
    refused = limited.get("/v1/runs", headers=auth())
    status, detail, _ = error_of(refused)
    assert (status, detail) == (429, "rate limit exceeded: 5 per 1 minute per API key (the server's RLAIF_RATE_LIMIT)")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert limited.get("/v1/constitutions", headers=auth()).status_code == 429  # every route counts
    assert limited.get("/v1/runs", headers=auth("bob")).status_code == 200  # another key is not affected
    assert limited.get("/healthz").status_code == 200  # health is never limited


def test_api_processes_can_share_the_window_in_redis(api_service: Service) -> None:
    """With RLAIF_RATE_LIMIT_STORAGE in Redis, two API processes (here: two apps) count against one window."""
    shared = api_service.broker_url.replace("redis://", "async+redis://")
    settings = api_service.settings(rate_limit="4/minute", rate_limit_storage=shared)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        codes = [client.get("/v1/runs", headers=auth()).status_code for client in (first, second) * 3]
    assert codes == [200, 200, 200, 200, 429, 429]


def test_requests_without_a_key_are_limited_by_address(limited: TestClient) -> None:
    """Guessing keys is slowed down too: unauthenticated requests count against the client address."""
    codes = [limited.get("/v1/runs", headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(3)]
    codes += [limited.get("/v1/runs").status_code for _ in range(3)]
    assert codes == [401, 401, 401, 401, 401, 429]
    assert limited.get("/v1/runs", headers=auth()).status_code == 200  # a valid key is counted on its own


BODY_ROUTES = [("POST", "/v1/constitutions"), ("POST", "/v1/prompt-sets"), ("POST", "/v1/runs")]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_every_route_refuses_oversized_bodies(api_service: Service, chunked: bool) -> None:
    """A declared length above the limit is refused on every route before a byte is read; a chunked body (no
    length) is counted while a route reads it. (Routes that take no body never read one: nothing to count.)"""
    app = create_app(api_service.settings(max_request_bytes=2_000, max_upload_bytes=10_000))
    routes = v1_routes(app)
    assert ("POST", "/v1/runs/x-0000000000000000/resume") in routes and len(routes) >= 15
    assert set(BODY_ROUTES) <= set(routes)
    body = b"x" * 200_000
    with TestClient(app) as client:
        for method, path in BODY_ROUTES if chunked else routes:
            content = iter([body[:50_000]] * 4) if chunked else body
            response = client.request(method, path, content=content, headers=auth())
            status, detail, _ = error_of(response)
            assert status == 413, (method, path, status, detail)
            assert "request body larger than" in detail, (method, path, detail)


def test_uploads_have_the_upload_limit_and_json_the_request_limit(api_service: Service) -> None:
    app = create_app(api_service.settings(max_request_bytes=2_000, max_upload_bytes=10_000))
    prompts = [f"prompt number {i}?" for i in range(300)]  # ~7 kB of JSON: above the request limit, below upload
    with TestClient(app) as client:
        assert client.post("/v1/prompt-sets", json=prompts, headers=auth()).status_code == 201
        big_run = {"constitution_id": "c", "prompt_set_id": "p", "config": {"note": "x" * 5_000}}
        assert error_of(client.post("/v1/runs", json=big_run, headers=auth()))[0] == 413
        too_big = [f"prompt number {i}?" for i in range(600)]
        assert error_of(client.post("/v1/prompt-sets", json=too_big, headers=auth()))[0] == 413
