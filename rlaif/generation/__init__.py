"""Generation backends behind one protocol: chat conversations in, n sampled completions each out.

`make_generator(model, backend_cfg)` picks the engine: transformers (`hf.py`, the CPU default) or vLLM
(`vllm.py`, imported lazily). Everything that is not the engine call (chat templating, seeding, stop handling,
result types) is shared in `common.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, Field

from rlaif.config import SamplingConfig

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}
Conversation = list[Message]


class Completion(BaseModel):
    """One sampled completion."""

    text: str = Field(description="Decoded completion without the stop token.")
    token_ids: list[int] = Field(default_factory=list, description="Generated token ids (stop token included if hit).")
    logprobs: list[float] | None = Field(default=None, description="Per-token log-probs of token_ids, when asked.")
    finished: bool = Field(description="True when generation stopped at EOS rather than at max_new_tokens.")


class Generator(Protocol):
    """What every backend implements."""

    model_name: str

    def generate(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingConfig,
        seed: int,
        return_logprobs: bool = False,
        progress: bool = True,
    ) -> list[list[Completion]]:
        """n completions per conversation, in input order. Same seed and inputs -> same outputs."""
        ...
