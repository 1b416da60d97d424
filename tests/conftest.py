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
def shared_data() -> Path:
    """The development data sets in ../shared/data (read-only; never copied into the repo)."""
    for candidate in (
        os.environ.get("RLAIF_SHARED_DATA", ""),  # unset -> "" (Path("") would be the cwd, whose README.md exists)
        str(Path(__file__).resolve().parents[2] / "shared" / "data"),
        "/work/shared/data",  # where the development machines (and CI, which clones elsewhere) keep it
    ):
        if candidate and (Path(candidate) / "README.md").exists():
            return Path(candidate)
    raise FileNotFoundError(
        "the development data (../shared/data or /work/shared/data) is not present: set RLAIF_SHARED_DATA to its folder"
    )
