"""Start vLLM's OpenAI-compatible server from the vLLM virtualenv (.venv-vllm) on loopback, for the endpoint tests
and bench/bench_endpoint_judge.py. The caller's process needs no vLLM: the server is a subprocess.

Where .venv-vllm is missing: a pytest failure naming the command that builds it, or a skip with RLAIF_TEST_VLLM=0.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
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


@dataclass
class VLLMServer:
    """A running server: its URL and key stay the same for the whole session, even across `kill` and `restart`
    (the same port, the same key), so a fixture built on it stays valid after a test that restarted it."""

    base_url: str
    key: str
    log: Path
    model_folder: Path
    port: int
    proc: subprocess.Popen[bytes]
    starts: int = 1

    def freeze(self) -> None:
        """SIGSTOP the server and its engine process: connections are still accepted (by the kernel, into the
        listen backlog) and then hang, so a request sent now is in flight until the server is thawed or killed."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL the whole process group (the API server and its engine core), as an OOM kill or a lost node
        would: no shutdown, the requests in flight are dropped and the port stops listening."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> float:
        """Start the server again on the same port with the same key (after `kill`); seconds until it answered.
        Its log is a new file next to the first (server.2.log, ...)."""
        assert self.proc.poll() is not None, "restart() is for a killed server"
        self.starts += 1
        self.log = self.log.with_name(f"server.{self.starts}.log")
        self.proc = start_server(VLLM_PYTHON, self.model_folder, SERVED, self.port, self.log, api_key=self.key)
        try:
            return wait_until_up(self.proc, self.base_url, self.log, START_TIMEOUT_S, api_key=self.key)
        except RuntimeError as exc:
            pytest.fail(str(exc))

    def stop(self) -> None:
        """Stop whichever process is serving now (the first or a restarted one): SIGTERM, then SIGKILL after 30 s."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGCONT)  # (a frozen server cannot handle SIGTERM)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def start_vllm_server(model_folder: Path, log: Path) -> Iterator[VLLMServer]:
    """The server for `model_folder` (float32, eager, 2048 tokens, 1 GiB KV cache; an API key required),
    stopped on exit (the process serving then, if a test restarted it)."""
    if not VLLM_PYTHON.exists():
        if os.environ.get("RLAIF_TEST_VLLM", "1") == "0":
            pytest.skip(".venv-vllm is absent and RLAIF_TEST_VLLM=0: no vLLM server to test the endpoint against")
        pytest.fail(
            f"{VLLM_PYTHON} is missing: build it with `RLAIF_VENV=.venv-vllm scripts/setup.sh --with-vllm`, or set "
            "RLAIF_TEST_VLLM=0 to skip the endpoint tests"
        )
    port, key = _free_port(), f"sk-vllm-test-{secrets.token_hex(8)}"
    proc = start_server(VLLM_PYTHON, model_folder, SERVED, port, log, api_key=key)
    server = VLLMServer(f"http://127.0.0.1:{port}/v1", key, log, model_folder, port, proc)
    try:
        try:
            seconds = wait_until_up(proc, server.base_url, log, START_TIMEOUT_S, api_key=key)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        print(f"vLLM server up in {seconds:.0f} s", file=sys.stderr)
        yield server
    finally:
        server.stop()
