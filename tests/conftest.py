"""Shared fixtures: environment for fast, quiet CPU tests, and the two real models.

`tiny_model` is a randomly initialised 2-layer Llama with the embedded SmolLM2 tokenizer (fast unit tests);
`embedded_model` is the real SmolLM2-135M-Instruct (slow tests). Both come from the model cache, which the
first use fills (the GGUF conversion takes ~20 s once). `tiny_reward_model` is a reward model trained from the
tiny model by stage 5's own function on a few labelled pairs (a few seconds, once per session).
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


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a reward model trained from the tiny model (train_reward_model) on 8 soft-labelled pairs that
    favour a helpful answer over a curt refusal: its scores differ between answers, which is all tests need."""
    from rlaif.config import RewardModelConfig
    from rlaif.records import LabelRecord
    from rlaif.stages.reward_model import train_reward_model

    labels = [
        LabelRecord(
            id=f"p{i}:0:1",
            prompt=f"Request {i}: please help me.",
            response_a="Of course, here is how. " * (1 + i % 3),
            response_b="No." * (1 + i % 2),
            p_a=0.8,
            judgements=[],
        )
        for i in range(8)
    ]
    cfg = RewardModelConfig(batch_size=4, micro_batch_size=2, learning_rate=1e-3, eval_fraction=0.0, dtype="float32")
    out = tmp_path_factory.mktemp("tiny-reward-model")
    train_reward_model(labels, tiny_model, cfg, out, seed=0, progress=False)
    return str(out / "model")
