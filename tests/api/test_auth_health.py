"""API keys (401s, owners, constant-time compare, never logged), /healthz, the OpenAPI docs, no torch in the API."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from service_fixtures import KEYS, REPO, Service, auth, error_of, free_port, v1_routes


def test_every_route_but_health_needs_a_valid_key(api: TestClient) -> None:
    """401 before the route runs: an anonymous request's body (here: not even JSON) is never read."""
    routes = v1_routes(api.app)
    assert len(routes) >= 19
    garbage = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    for method, path in routes:
        response = api.request(method, path, **garbage)
        assert error_of(response)[:2] == (401, "missing API key: send 'Authorization: Bearer <key>'"), (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        for header in ("Bearer not-a-key", f"Bearer {KEYS['alice'][:-1]}", f"Basic {KEYS['alice']}", "Bearer "):
            answer = api.request(method, path, content=b"{not json", headers={"Authorization": header})
            assert answer.status_code == 401, (method, path, header)  # (a prefix of a valid key is not one)
        assert error_of(api.request(method, path, headers={"Authorization": "Bearer nope"}))[1] == "invalid API key"
    assert api.get("/healthz").status_code == 200


def test_keys_never_reach_the_logs(api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        api.get("/v1/runs", headers=auth())
        api.get("/v1/runs", headers={"Authorization": "Bearer wrong-key-123"})
    assert KEYS["alice"] not in caplog.text and "wrong-key-123" not in caplog.text


def test_an_unconfigured_server_rejects_every_key(api_service: Service) -> None:
    from api.main import create_app

    with TestClient(create_app(api_service.settings(api_keys=""))) as client:
        assert error_of(client.get("/v1/runs", headers=auth()))[:2] == (401, "invalid API key")


def test_healthz_checks_database_and_broker_without_auth(api: TestClient, api_service: Service) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "database": "ok", "broker": "ok"}

    from api.main import create_app

    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(api_service.settings(broker_url=dead_broker))) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "broker": "unreachable: ConnectionError"}


def test_openapi_docs(api: TestClient) -> None:
    assert api.get("/docs").status_code == 200
    schema = api.get("/openapi.json").json()
    assert {"/v1/runs", "/v1/runs/{run_id}/cancel", "/v1/checkpoints/{checkpoint_id}/download", "/healthz"} <= set(
        schema["paths"]
    )
    assert {"RunCreate", "RunPublic", "RunsPublic", "StageStatus"} <= set(schema["components"]["schemas"])
    # Field descriptions of the run config reach the docs.
    assert (
        "Nested RunConfig overrides"
        in schema["components"]["schemas"]["RunCreate"]["properties"]["config"]["description"]
    )


def test_the_api_never_imports_torch() -> None:
    code = "import sys, api.main; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
