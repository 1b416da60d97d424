"""API under load while a run trains: requests/s and latency percentiles of `GET /v1/runs/{id}`, measured by wrk.

The service runs as a user runs it: `rlaif serve` (one uvicorn process) and `rlaif worker` (one Celery worker,
every queue) as subprocesses on a fresh SQLite run store and artifact root, Redis database 14 of the local
server. One run is submitted on the embedded SmolLM2-135M-Instruct with a long SFT stage (so the worker trains
for the whole measurement). wrk (Debian's `wrk`; `apt-get install wrk`) then hammers `GET /v1/runs/{id}` (the
run's status with every stage, what `rlaif watch` polls) over loopback with keep-alive connections, twice:

- idle: the run is queued, no worker started: the API alone on the machine;
- training: the worker is in SFT, using the CPU (the peer of the API on the same two cores).

The rate limit is switched off for the benchmark (RLAIF_RATE_LIMIT=""): with it on, the figure would be the
limiter's 429 rate. Printed per phase: requests/s, latency p50/p90/p99/max, errors and non-2xx answers, and
the SFT steps the worker took during the window (it kept training).

    python bench/bench_api_load.py                      # about 3 minutes (2 x 60 s of wrk, plus start-up)
    python bench/bench_api_load.py --duration 10 --model tiny-random-llama      # smoke run
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlaif.client import Client  # noqa: E402
from rlaif.settings import settings as user_settings  # noqa: E402

KEY = "bench-key-0123456789"
_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, latency percentiles (ms), request and error counts from wrk's `--latency` report."""

    def ms(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(number) * _UNITS_MS[unit]

    figures: dict[str, float] = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M):
        figures[f"p{pct}_ms"] = ms(value)
    figures["max_ms"] = ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    figures["requests"] = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    figures["socket_errors"] = float(sum(map(int, errors.groups()))) if errors else 0.0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["non_2xx"] = float(non_2xx.group(1)) if non_2xx else 0.0
    return figures


def wrk(url: str, duration: int, connections: int, threads: int) -> dict[str, float]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    argv += ["-H", f"Authorization: Bearer {KEY}", url]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def sft_stage(client: Client, run_id: str) -> dict[str, Any]:
    return next(s for s in client.run(run_id)["stages"] if s["name"] == "sft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=60, help="Seconds of wrk per phase.")
    parser.add_argument("--connections", type=int, default=16, help="wrk keep-alive connections.")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads.")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Policy model of the run.")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14", help="Redis for the benchmark's Celery.")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    home = Path(tempfile.mkdtemp(prefix="rlaif-bench-load-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLAIF_")}
    env.update(
        RLAIF_HOME=str(home),
        RLAIF_MODEL_CACHE=str(user_settings.models_dir),  # the converted model is reused, not converted again
        RLAIF_BROKER_URL=args.broker,
        RLAIF_API_KEYS=f"{KEY}:bench",
        RLAIF_RATE_LIMIT="",
        PYTHONUNBUFFERED="1",
    )
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = (home / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlaif", *argv], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    try:
        subprocess.run(
            [sys.executable, "-c", f"import redis; redis.Redis.from_url({args.broker!r}).flushdb()"], check=True
        )
        spawn("api", "serve", "--port", str(port))
        client = Client(f"http://127.0.0.1:{port}", KEY)
        for _ in range(120):
            try:
                client.health()
                break
            except Exception:
                time.sleep(0.5)
        constitution = client.upload_constitution((REPO / "constitutions" / "harmless.yaml").read_bytes())
        prompt_set = client.upload_prompts(REPO / "examples" / "demo_prompts.jsonl")
        config = {
            "policy_model": args.model,
            "critique": {"rounds": 1, "batch_size": 8, "sampling": {"max_new_tokens": 24}},
            "sft": {"epochs": 100, "batch_size": 2, "micro_batch_size": 2, "max_length": 192, "checkpoint_every": 100},
        }
        run_id = client.create_run(
            {"constitution_id": constitution["id"], "prompt_set_id": prompt_set["id"], "config": config}
        )["id"]
        url = f"http://127.0.0.1:{port}/v1/runs/{run_id}"
        print(f"run {run_id}; wrk -t{args.threads} -c{args.connections} -d{args.duration}s GET {url}", flush=True)

        results: dict[str, dict[str, float]] = {}
        results["idle"] = wrk(url, args.duration, args.connections, args.threads)
        print("idle:", results["idle"], flush=True)

        spawn("worker", "worker", "--pool", "solo", "--name", "bench")
        deadline = time.monotonic() + 900
        while (sft := sft_stage(client, run_id))["status"] != "running" or not sft["done"]:
            if time.monotonic() > deadline or client.run(run_id)["status"] in ("failed", "cancelled"):
                sys.exit(f"the run did not reach SFT training: {client.run(run_id)['error']}")
            time.sleep(1)
        steps_before = sft["done"]
        results["training"] = wrk(url, args.duration, args.connections, args.threads)
        sft = sft_stage(client, run_id)
        results["training"]["sft_steps_during"] = float(sft["done"] - steps_before)
        still = "still training" if sft["status"] == "running" else f"SFT {sft['status']} before the end"
        print("training:", results["training"], f"({still})", flush=True)
        client.cancel(run_id)
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        shutil.rmtree(home, ignore_errors=True)

    print(f"\nGET /v1/runs/{{id}}, {args.duration} s per phase, {args.connections} connections, {os.cpu_count()} CPUs")
    print(
        f"{'phase':<10}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}{'SFT steps':>11}"
    )
    for phase, r in results.items():
        errors = int(r["socket_errors"] + r["non_2xx"])
        steps = f"{int(r['sft_steps_during'])}" if "sft_steps_during" in r else "-"
        print(
            f"{phase:<10}{r['requests_per_s']:>9.1f}{r['p50_ms']:>9.1f}{r['p90_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['max_ms']:>9.1f}{errors:>8}{steps:>11}"
        )
    ratio = results["training"]["requests_per_s"] / results["idle"]["requests_per_s"]
    print(f"training/idle requests/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
