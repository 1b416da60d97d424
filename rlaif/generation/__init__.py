"""Generation backends behind one protocol: chat conversations in, n sampled completions each out.

`make_generator(model, backend_cfg)` picks the engine (the rule for 'auto': `backend_choice.py`): transformers
(`hf.py`), vLLM (`vllm.py`, imported lazily) or, for an `endpoint:<name>` spec, the declared OpenAI-compatible endpoint
(`endpoint.py`, over `endpoint_client.py`). Everything that is not the engine call (chat templating, seeding, stop handling,
result types) is shared in `common.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field

from rlaif.config import GenerationBackendConfig, SamplingConfig
from rlaif.endpoints import is_endpoint
from rlaif.generation.backend_choice import generation_backend

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}
Conversation = list[Message]


class Completion(BaseModel):
    """One sampled completion."""

    text: str = Field(description="Decoded completion without the stop token.")
    token_ids: list[int] = Field(default_factory=list, description="Generated token ids (stop token included if hit).")
    logprobs: list[float] | None = Field(default=None, description="Per-token log-probs of token_ids, when asked.")
    finished: bool = Field(description="True when generation stopped at EOS rather than at max_new_tokens.")
    prompt_truncated: bool = Field(
        default=False,
        description="True when the prompt was cut to fit the context (fit_context=True; rule in rlaif/truncation.py).",
    )


class Generator(Protocol):
    """What every backend implements."""

    model_name: str

    def generate(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingConfig,
        seed: int | Sequence[int],
        return_logprobs: bool = False,
        progress: bool = True,
        fit_context: bool = False,
    ) -> list[list[Completion]]:
        """n completions per conversation, in input order. Same seed and inputs -> same outputs.

        `seed` is one seed per conversation (a list: give each item a seed from its id, and its completions do not
        depend on which other items share the call), or one int, from which conversation i gets derive_seed(seed, i).

        A prompt that with max_new_tokens does not fit the model's context raises ValueError naming it, or with
        `fit_context` is cut by the rule of rlaif/truncation.py and its completions say `prompt_truncated`.
        """
        ...


def resolve_backend(name: str) -> str:
    """'transformers' or 'vllm' for a configured backend name, for a caller that does not estimate its tokens:
    'auto' = vLLM when importable and a CUDA GPU is present (the rule of backend_choice.py without an estimate)."""
    return generation_backend(None, name, None).backend


def make_generator(
    model: str, backend: GenerationBackendConfig, *, role: str = "feedback", stage_dir: Path | None = None
) -> Generator:
    """The generator for `model` on the configured backend ('auto': `resolve_backend`; a stage that estimates its
    tokens resolves 'auto' itself with backend_choice.generation_backend and passes the result).
    An `endpoint:<name>` spec is the declared endpoint whatever the backend, its result cache and usage ledger in
    `stage_dir` (a stage folder; none without one) under `role`.

    The engine modules are imported here, not at the top, so `import rlaif.generation` stays light and never
    imports vllm.
    """
    if is_endpoint(model):
        from rlaif.generation.endpoint import EndpointGenerator, stage_client

        return EndpointGenerator(model, client=stage_client(model, role, stage_dir))
    if resolve_backend(backend.backend) == "vllm":
        from rlaif.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, dtype=backend.dtype)
    from rlaif.generation.hf import HFGenerator

    return HFGenerator(model, dtype=backend.dtype, batch_size=backend.batch_size)


def cached_generator(
    model: str, backend: GenerationBackendConfig, *, role: str = "feedback", stage_dir: Path | None = None
) -> Generator:
    """`make_generator`, kept for the next call with the same arguments: a worker runs shard after shard of one
    stage on one model, and loading it costs seconds. One is kept (a worker holds one generation model at a time).
    An endpoint's client is per stage folder (its cache and usage ledger live there); a model loaded in process is
    the same for every stage and run, so its key has no folder."""
    folder = str(stage_dir) if stage_dir is not None and is_endpoint(model) else None
    return _cached_generator(model, backend.model_dump_json(), role, folder)


@functools.lru_cache(maxsize=1)
def _cached_generator(model: str, backend_json: str, role: str, stage_dir: str | None) -> Generator:
    backend = GenerationBackendConfig.model_validate_json(backend_json)
    return make_generator(model, backend, role=role, stage_dir=None if stage_dir is None else Path(stage_dir))


def release_cached_generator() -> None:
    """Drop the kept generator (the evaluation loads several models in turn)."""
    _cached_generator.cache_clear()
