"""Fixtures of the endpoint tests: a constitution, and one real vLLM OpenAI server per test session.

`vllm_server` starts vLLM's OpenAI-compatible server from the vLLM virtualenv (.venv-vllm, built by
`RLAIF_VENV=.venv-vllm scripts/setup.sh --with-vllm`) as a subprocess on loopback, serving the embedded model in
float32 (vLLM's CPU attention refuses the tiny model's head_dim of 16) and requiring an API key. The test itself
runs in the main virtualenv: only the server needs vLLM. It takes a minute or two to start on 2 cores, so it is
started once. Where .venv-vllm is missing the tests fail with the command that builds it, unless RLAIF_TEST_VLLM=0,
which skips them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from vllm_server import VLLMServer, start_vllm_server

from rlaif.constitution import Constitution, load_constitution
from rlaif.settings import settings


@pytest.fixture(scope="session")
def minimal_constitution() -> Constitution:
    return load_constitution(settings.constitutions_dir / "minimal.yaml")


@pytest.fixture(scope="session")
def vllm_server(embedded_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    from rlaif.modeling import prepare_model

    with start_vllm_server(prepare_model(embedded_model), tmp_path_factory.mktemp("vllm") / "server.log") as server:
        yield server
