"""The rule behind `generation.backend: auto` and `ppo.rollout_backend: auto` (rlaif/generation/backend_choice.py):
every branch with the machine's facts given, the reason each one reports, and what this machine picks.

    python -m pytest tests/generation/test_backend_choice.py -q
"""

from __future__ import annotations

import pytest
import torch

from rlaif.config import GENERATION_BREAK_EVEN_TOKENS, GenerationBackendConfig, PPOConfig, RunConfig
from rlaif.generation.backend_choice import (
    BackendChoice,
    choose_generation_backend,
    choose_rollout_backend,
    detect_vllm,
    generation_backend,
    rollout_backend,
)


def test_both_backends_default_to_auto() -> None:
    cfg = RunConfig()
    assert cfg.generation.backend == "auto" and cfg.ppo.rollout_backend == "auto"
    assert cfg.generation.vllm_break_even_tokens == GENERATION_BREAK_EVEN_TOKENS == 2_500


@pytest.mark.parametrize(
    ("vllm", "cuda", "tokens", "expected"),
    [
        (False, True, 10**6, BackendChoice("transformers", "auto: transformers (vllm not installed)")),
        (True, True, None, BackendChoice("vllm", "auto: vllm (vllm importable, CUDA GPU present)")),
        (True, True, 10, BackendChoice("vllm", "auto: vllm (vllm importable, CUDA GPU present)")),
        # 64 prompts x K=3 x 64 tokens = 12,288 tokens: past the break-even.
        (
            True,
            False,
            64 * 3 * 64,
            BackendChoice("vllm", "auto: vllm (vllm importable, ~12,288 generated tokens >= 2,500 break-even)"),
        ),
        # exactly at the break-even counts as past it
        (
            True,
            False,
            2_500,
            BackendChoice("vllm", "auto: vllm (vllm importable, ~2,500 generated tokens >= 2,500 break-even)"),
        ),
        # the demo's pairs stage: 12 prompts x K=2 x 96 tokens = 2,304 tokens
        (
            True,
            False,
            12 * 2 * 96,
            BackendChoice(
                "transformers",
                "auto: transformers (vllm importable, no CUDA GPU, ~2,304 generated tokens < 2,500 break-even)",
            ),
        ),
        (
            True,
            False,
            None,
            BackendChoice("transformers", "auto: transformers (vllm importable, no CUDA GPU, no token estimate)"),
        ),
    ],
)
def test_auto_generation_backend(vllm: bool, cuda: bool, tokens: int | None, expected: BackendChoice) -> None:
    assert choose_generation_backend("auto", tokens, vllm=vllm, cuda=cuda) == expected


def test_the_break_even_is_a_setting_and_an_explicit_backend_is_kept() -> None:
    assert choose_generation_backend("auto", 1_000, vllm=True, cuda=False, break_even=1_000).backend == "vllm"
    assert choose_generation_backend("auto", 999, vllm=True, cuda=False, break_even=1_000).backend == "transformers"
    for configured in ("transformers", "vllm"):
        for vllm in (False, True):
            choice = choose_generation_backend(configured, 10**6, vllm=vllm, cuda=True)
            assert choice == BackendChoice(configured, f"configured: {configured}")
    with pytest.raises(ValueError, match="unknown generation backend 'my.module.Engine'"):
        choose_generation_backend("my.module.Engine", None, vllm=True, cuda=False)


@pytest.mark.parametrize(
    ("vllm", "cuda", "updates", "world_size", "backend", "reason"),
    [
        (False, True, 100, 1, "transformers", "auto: transformers (vllm not installed)"),
        # the vLLM rollout engine is one in-process engine: data-parallel ranks sample with the policy
        (
            True,
            True,
            100,
            2,
            "transformers",
            "auto: transformers (data-parallel on 2 ranks; the vLLM rollout engine is one in-process engine)",
        ),
        (True, True, 1, 1, "vllm", "auto: vllm (vllm importable, CUDA GPU present)"),
        (
            True,
            False,
            2,
            1,
            "vllm",
            "auto: vllm (vllm importable, 2 rollout batches; its start-up pays back within the first step on CPU, "
            "bench/README.md)",
        ),
        (
            True,
            False,
            1,
            1,
            "transformers",
            "auto: transformers (vllm importable, no CUDA GPU, 1 rollout batch: too few to pay its start-up)",
        ),
    ],
)
def test_auto_rollout_backend(vllm: bool, cuda: bool, updates: int, world_size: int, backend: str, reason: str) -> None:
    assert choose_rollout_backend("auto", updates, world_size, vllm=vllm, cuda=cuda) == (backend, reason)


def test_an_explicit_rollout_backend_is_kept() -> None:
    assert choose_rollout_backend("transformers", 100, 1, vllm=True, cuda=True) == (
        "transformers",
        "configured: transformers",
    )
    # (an explicit vllm under torchrun is refused by train_ppo itself, with the remedy)
    assert choose_rollout_backend("vllm", 1, 1, vllm=False, cuda=False) == ("vllm", "configured: vllm")


def test_this_machine() -> None:
    """What the detecting wrappers pick here: in an environment without vllm, 'auto' is transformers everywhere,
    exactly the engine of the former default; an endpoint model is its endpoint whatever the backend."""
    on_gpu = torch.cuda.is_available()
    expected = "vllm" if detect_vllm() and on_gpu else "transformers"
    assert generation_backend("tiny-random-llama", "auto", None).backend == expected
    big = generation_backend("tiny-random-llama", "auto", 10**6)
    assert big.backend == ("vllm" if detect_vllm() else "transformers")
    if not detect_vllm():
        assert big.reason == "auto: transformers (vllm not installed)"
        assert rollout_backend("auto", 10, 1) == ("transformers", "auto: transformers (vllm not installed)")
    assert generation_backend("endpoint:big", "vllm", 10**6) == ("endpoint", "endpoint:big is a declared endpoint")
    cfg = GenerationBackendConfig(batch_size=3)
    assert BackendChoice("transformers", "").applied_to(cfg) == GenerationBackendConfig(
        backend="transformers", batch_size=3
    )
    assert BackendChoice("endpoint", "").applied_to(cfg) == cfg
    assert PPOConfig().rollout_backend == "auto"
