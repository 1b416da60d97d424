"""Ctrl-C while the demo watches its run (rlaif/cli/service.py `watch_or_cancel`): the run is cancelled through the
API, not left queued for nobody. A real API subprocess and no worker, so the run waits queued until the signal."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from service_fixtures import KEYS, REPO, Service, wait_for

from rlaif.client import Client

WATCHER = """
import signal
import sys
from pathlib import Path

import typer

from rlaif.cli.service import submit_run, watch_or_cancel
from rlaif.client import Client

# A test suite started in the background by a non-interactive shell (`nohup scripts/test.sh &`) runs with SIGINT
# ignored, and children inherit that: Python then installs no KeyboardInterrupt handler. The terminal a user presses
# Ctrl-C in has the default, which is what this test is about.
signal.signal(signal.SIGINT, signal.default_int_handler)
client = Client(sys.argv[1], sys.argv[2])
repo = Path(sys.argv[3])
run = submit_run(
    client, repo / "constitutions" / "harmless.yaml", repo / "examples" / "demo_prompts.jsonl",
    {"policy_model": sys.argv[4]},
)
print("RUN", run["id"], flush=True)
try:
    watch_or_cancel(client, run["id"], poll=0.2)
except typer.Exit as exc:
    sys.exit(exc.exit_code)
"""


def test_ctrl_c_cancels_the_watched_run(make_service: Callable[..., Service], service_tiny_model: str) -> None:
    service = make_service("sqlite")
    url = service.start_api()
    argv = [sys.executable, "-c", WATCHER, url, KEYS["alice"], str(REPO), service_tiny_model]
    proc = service.spawn("watcher", argv, COLUMNS="200")
    line = wait_for(
        lambda: next((x for x in service.log("watcher").splitlines() if x.startswith("RUN ")), None), 60, "the run"
    )
    run_id = line.split()[1]
    client = Client(url, KEYS["alice"])
    assert client.run(run_id)["status"] == "queued"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, service.log("watcher")
    assert f"interrupted: run {run_id} cancelled" in service.log("watcher")
    assert client.run(run_id)["status"] == "cancelled"
