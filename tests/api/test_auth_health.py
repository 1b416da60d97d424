"""API keys (401s, owners, constant-time compare, never logged), /healthz, the OpenAPI docs, no torch in the API."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from service_fixtures import KEYS, REPO, RedisServer, Service, auth, error_of, free_port, v1_routes

from api.routes.health import CACHE_S


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


def broker_counters(redis_server: RedisServer) -> Callable[[], tuple[int, int]]:
    """(connections opened, PINGs answered) so far by the tests' Redis server, read on one connection of its own."""
    server = redis.Redis(port=redis_server.port)

    def counters() -> tuple[int, int]:
        opened = server.info("stats")["total_connections_received"]
        pings = server.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
        return int(opened), int(pings)

    counters()  # (connect now, so this connection is not counted)
    return counters


def test_health_checks_share_one_broker_connection(api_service: Service, redis_server: RedisServer) -> None:
    """50 checks opened 51 Redis connections; now the first opens one and the rest reuse it or the cached answer."""
    from api.main import create_app

    counters = broker_counters(redis_server)
    with TestClient(create_app(api_service.settings())) as client:
        (opened, pings), started = counters(), time.monotonic()
        for _ in range(50):
            assert client.get("/healthz").json()["status"] == "ok"
        time.sleep(CACHE_S)
        assert client.get("/healthz").json()["status"] == "ok"  # the cache has expired: checked again
        elapsed = time.monotonic() - started
        opened_now, pings_now = counters()
    assert opened_now - opened == 1, "health checks opened more than one Redis connection"
    # One check per CACHE_S at most, and the one after the sleep.
    assert 2 <= pings_now - pings <= math.ceil(elapsed / CACHE_S) + 1


def test_a_burst_of_health_checks_leaves_the_api_responsive(
    make_service: Callable[..., Service], redis_server: RedisServer
) -> None:
    """120 concurrent anonymous checks made one authenticated GET take 6 s (each check held a pool thread, a
    session and a new Redis connection); now they share a few checks and the GET stays fast."""
    url = make_service("sqlite").start_api()
    counters = broker_counters(redis_server)

    async def burst() -> tuple[list[httpx.Response], httpx.Response, float, float]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            assert (await client.get("/v1/runs", headers=auth())).status_code == 200  # (warm: connection, key)
            started = time.monotonic()
            checks = [asyncio.ensure_future(client.get("/healthz")) for _ in range(120)]
            await asyncio.wait(checks, return_when=asyncio.FIRST_COMPLETED)  # the server is answering them
            sent = time.monotonic()
            runs = await client.get("/v1/runs", headers=auth())
            latency = time.monotonic() - sent
            answers = await asyncio.gather(*checks)
            return answers, runs, latency, time.monotonic() - started

    time.sleep(CACHE_S)  # (the answer start_api waited for has expired: the burst finds the cache stale)
    (opened, pings) = counters()
    answers, runs, latency, duration = asyncio.run(burst())
    opened_now, pings_now = counters()
    assert [a.status_code for a in answers] == [200] * 120 and runs.status_code == 200
    assert 1 <= pings_now - pings <= math.ceil(duration / CACHE_S) + 1, (
        f"{pings_now - pings} checks in {duration:.1f} s"
    )
    assert opened_now - opened <= 1
    assert latency < 3.0, f"an authenticated GET took {latency:.2f} s during 120 concurrent health checks"


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


# Every URL a docs page names: attributes (src, href, spec-url) and the Swagger UI config (url: '...').
PAGE_URLS = re.compile(r"""(?:\bsrc|\bhref|spec-url)=["']([^"']*)["']|\burl: ?["']([^"']*)["']""")


def test_docs_pages_and_their_assets_come_from_this_server(api: TestClient) -> None:
    """/docs and /redoc loaded Swagger UI and ReDoc from a CDN, so on a server without internet they were blank."""
    for page in ("/docs", "/redoc"):
        response = api.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        urls = [a or b for a, b in PAGE_URLS.findall(response.text)]
        assert len(urls) >= 3, urls  # the script (and style sheet), the favicon, the schema
        assert not re.search(r"https?://", response.text), f"{page} names another server"
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
            asset = api.get(url)
            assert asset.status_code == 200 and asset.content, url
            if url.endswith(".js"):  # (with nosniff, a browser runs a script only if it is served as one)
                assert "javascript" in asset.headers["content-type"], (url, asset.headers["content-type"])
            if url.endswith(".css"):
                assert asset.headers["content-type"].startswith("text/css"), (url, asset.headers["content-type"])


def test_docs_pages_render_the_api_in_chromium_without_internet(make_service: Callable[..., Service]) -> None:
    """Headless Chromium on a machine without internet (as this one is), under the pages' CSP, draws the
    operations of /docs and /redoc (with the CDN's assets both were blank here)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Chromium is needed for the docs page test: apt-get install -y chromium"
    url = make_service("sqlite").start_api()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    # What each page draws per operation: Swagger UI a block with the path, ReDoc a section with an anchor.
    for page, drawn in (("/docs", 'class="opblock-summary-path"'), ("/redoc", 'id="tag/runs/operation/')):
        assert "default-src 'self'" in httpx.get(f"{url}{page}").headers["content-security-policy"]
        dom = subprocess.run(
            [binary, *flags, "--virtual-time-budget=20000", "--dump-dom", f"{url}{page}"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert drawn in dom.stdout and "/v1/runs/{run_id}/resume" in dom.stdout, (page, dom.stderr[-2000:])


def test_every_response_carries_the_security_headers(api: TestClient) -> None:
    responses = [
        api.get("/healthz"),
        api.get("/v1/runs", headers=auth()),
        api.get("/v1/runs"),  # (the front door's own 401)
        api.get("/v1/runs/x-0000000000000000", headers=auth()),  # (an error handler's 404)
        api.get("/docs"),
        api.get("/docs-assets/swagger-ui-bundle.js"),
        api.get("/openapi.json"),
    ]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff", response.url
        assert response.headers["referrer-policy"] == "no-referrer", response.url
        assert response.headers["x-frame-options"] == "DENY", response.url
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], response.url


def test_the_api_never_imports_torch() -> None:
    code = "import sys, api.main; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
