"""Start vLLM's OpenAI-compatible server from the vLLM virtualenv (.venv-vllm) on loopback, for the endpoint tests
and bench/bench_endpoint_judge.py. The caller's process needs no vLLM: the server is a subprocess.

Where .venv-vllm is missing: a pytest failure naming the command that builds it, or a skip with RLAIF_TEST_VLLM=0.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlaif.generation.vllm_server import start_server, wait_until_up

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
SERVED = "smollm"
START_TIMEOUT_S = 600


@dataclass(frozen=True)
class VLLMServer:
    base_url: str
    key: str
    log: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def start_vllm_server(model_folder: Path, log: Path) -> Iterator[VLLMServer]:
    """The server for `model_folder` (float32, eager, 2048 tokens, 1 GiB KV cache; an API key required),
    stopped on exit."""
    if not VLLM_PYTHON.exists():
        if os.environ.get("RLAIF_TEST_VLLM", "1") == "0":
            pytest.skip(".venv-vllm is absent and RLAIF_TEST_VLLM=0: no vLLM server to test the endpoint against")
        pytest.fail(
            f"{VLLM_PYTHON} is missing: build it with `RLAIF_VENV=.venv-vllm scripts/setup.sh --with-vllm`, or set "
            "RLAIF_TEST_VLLM=0 to skip the endpoint tests"
        )
    port, key = _free_port(), f"sk-vllm-test-{secrets.token_hex(8)}"
    proc = start_server(VLLM_PYTHON, model_folder, SERVED, port, log, api_key=key)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            seconds = wait_until_up(proc, base_url, log, START_TIMEOUT_S, api_key=key)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        print(f"vLLM server up in {seconds:.0f} s", file=sys.stderr)
        yield VLLMServer(base_url=base_url, key=key, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
