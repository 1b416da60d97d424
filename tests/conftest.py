"""Shared fixtures: environment for fast, quiet CPU tests, and the two real models.

`tiny_model` is a randomly initialised 2-layer Llama with the embedded SmolLM2 tokenizer (fast unit tests);
`embedded_model` is the real SmolLM2-135M-Instruct (slow tests). Both come from the model cache, which the
first use fills (the GGUF conversion takes ~20 s once).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

# Redis, databases and worker processes of the service tests (tests/api, tests/workers, test_end_to_end.py).
pytest_plugins = ["service_fixtures"]


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Registry name of the tiny random model, prepared in the cache."""
    from rlaif.modeling import prepare_model

    prepare_model("tiny-random-llama")
    return "tiny-random-llama"


@pytest.fixture(scope="session")
def embedded_model() -> str:
    """Registry name of the embedded SmolLM2-135M-Instruct, prepared in the cache."""
    from rlaif.modeling import prepare_model

    prepare_model("smollm2-135m-instruct")
    return "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def packaged_data() -> Path:
    """The evaluation and development sets shipped in the package (rlaif/data, built by scripts/build_data.py)."""
    from rlaif.data import DATA_DIR

    return DATA_DIR
