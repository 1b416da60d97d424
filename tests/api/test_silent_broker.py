"""A broker that accepts connections and never answers: the API still answers in seconds, and the run waits.

The API runs as a real uvicorn process whose broker is a `SilentServer` (tests/service_fixtures.py). Creating a
run there must not hang: the publish gives up after the broker timeouts, the run is recorded (queued, with a
warning event saying it is waiting to be enqueued) and answered 201; the control sweep, on a broker that answers,
then enqueues its advance.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import redis
from service_fixtures import REPO, TINY_RUN, Service, SilentServer, auth, free_port, wait_for

# Broker timeouts (RLAIF_BROKER_TIMEOUT_S, 2 s) times the publish attempts, with room for a loaded machine. Before
# the bounded publish, the request never finished.
PUBLISH_BOUND_S = 20.0


def start_api(service: Service, broker_url: str) -> str:
    """The API (uvicorn subprocess) of `service` on another broker; its URL once it serves its OpenAPI schema."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = service.spawn("api", argv, RLAIF_BROKER_URL=broker_url)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the API exited with {proc.returncode}:\n{service.log('api')[-3000:]}")
        try:
            return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, "the API to answer")
    return url


def test_a_silent_broker_delays_a_new_run_by_seconds_and_the_sweep_enqueues_it(
    make_service: Callable[..., Service], silent_broker: SilentServer
) -> None:
    service = make_service("sqlite")
    url = start_api(service, silent_broker.url())
    with httpx.Client(base_url=url, headers=auth(), timeout=120) as client:
        constitution = client.post("/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes())
        prompts = (REPO / "examples" / "demo_prompts.jsonl").read_bytes()
        prompt_set = client.post("/v1/prompt-sets", files={"file": ("demo.jsonl", prompts, "application/x-ndjson")})
        body = {
            "constitution_id": constitution.json()["id"],
            "prompt_set_id": prompt_set.json()["id"],
            "config": TINY_RUN,
        }

        started = time.monotonic()
        response = client.post("/v1/runs", json=body, timeout=PUBLISH_BOUND_S + 30)
        elapsed = time.monotonic() - started
        assert response.status_code == 201, response.text
        assert elapsed < PUBLISH_BOUND_S, f"POST /v1/runs took {elapsed:.1f} s on a silent broker"
        assert silent_broker.connections, "the API never tried the broker"

        run_id = response.json()["id"]
        run = client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "queued" and {stage["status"] for stage in run["stages"]} == {"pending"}
        warnings = [
            e["message"] for e in client.get(f"/v1/runs/{run_id}/events").json()["data"] if e["level"] == "warning"
        ]
        assert any("waiting to be enqueued" in message for message in warnings), warnings

    # The production sweep (workers/control.py), as celery beat runs it, on the service's real Redis.
    queue = redis.Redis.from_url(service.broker_url)
    assert queue.llen("control") == 0
    sweep = "from workers.control import sweep; sweep()"
    result = subprocess.run(
        [sys.executable, "-c", sweep], cwd=REPO, env=service.env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    messages = [json.loads(raw) for raw in queue.lrange("control", 0, -1)]
    sent = [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]
    assert sent == [("control.advance", [run_id])]
