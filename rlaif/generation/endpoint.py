"""Endpoint backend: a Generator over a declared OpenAI-compatible endpoint (`endpoint:<name>`, RLAIF_ENDPOINTS).

With `api: completions` (the default) prompts are rendered locally with the endpoint's `tokenizer` (its chat
template), checked against and fitted to the context exactly as the in-process backends do
(`common.prepare_conversations`), and sent as text to /v1/completions with n, temperature, top_p, a per-prompt
seed derived from the call's seed and the prompt's index, and max_tokens; the server stops at the model's EOS.
With `api: chat` the conversations go to /v1/chat/completions and the server renders them (still fitted to the
context first when a tokenizer is declared). Requests run through `EndpointClient`: bounded concurrency, rate
limits, retries, the result cache and usage accounting.

Token ids of a completion are the local tokenizer's ids of its text, plus the stop token when the server says
it stopped there. Log-probs are not offered: the policy (PPO's rollouts) is always trained in process.

    from rlaif.generation import make_generator
    generator = make_generator("endpoint:big-feedback", GenerationBackendConfig())
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif.config import SamplingConfig
from rlaif.endpoints import CACHE_DIR, USAGE_DIR, EndpointConfig
from rlaif.generation import Completion, Conversation
from rlaif.generation.common import (
    check_conversation,
    context_length,
    copy_greedy,
    mark_truncated,
    model_eos_ids,
    prepare_conversations,
    render_conversation,
    row_seeds,
    stop_token_ids,
)
from rlaif.generation.endpoint_client import EndpointClient
from rlaif.modeling import load_tokenizer, resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def endpoint_context(cfg: EndpointConfig, tokenizer: PreTrainedTokenizerBase | None) -> int | None:
    """The served model's context: context_length, else the tokenizer folder's config.json; None when unknown."""
    if cfg.context_length is not None:
        return cfg.context_length
    if cfg.tokenizer is None:
        return None
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(resolve_model(cfg.tokenizer))
    except (OSError, ValueError):
        model_config = None
    return context_length(model_config, tokenizer)


def stage_client(spec: str, role: str, stage_dir: Path | None) -> EndpointClient:
    """The client of `spec` for a stage: its cache and usage ledger in the stage folder (none without one)."""
    return EndpointClient.for_spec(
        spec,
        role=role,
        cache_dir=None if stage_dir is None else stage_dir / CACHE_DIR,
        usage_dir=None if stage_dir is None else stage_dir / USAGE_DIR,
    )


class EndpointGenerator:
    """Generator over an OpenAI-compatible endpoint (completions or chat API)."""

    def __init__(self, spec: str, *, client: EndpointClient | None = None, role: str = "feedback"):
        self.model_name = spec
        self.client = client if client is not None else stage_client(spec, role, None)
        cfg = self.client.cfg
        self.tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer is not None else None
        self.context = endpoint_context(cfg, self.tokenizer)
        self.stop_ids = (
            stop_token_ids(self.tokenizer, model_eos_ids(resolve_model(cfg.tokenizer)))
            if self.tokenizer is not None and cfg.tokenizer is not None
            else []
        )

    @property
    def usage(self) -> dict[str, Any]:
        return self.client.usage

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
        """n completions per conversation, in input order. Same seed and inputs -> same requests (see Generator)."""
        if return_logprobs:
            raise ValueError(
                f"{self.model_name}: an endpoint generator returns no log-probs (the policy is trained in process)"
            )
        if self.tokenizer is not None and self.context is not None:
            fitted, prompts, per_prompt, truncated = prepare_conversations(
                self.tokenizer, conversations, n, sampling, self.context, fit_context
            )
        else:  # (chat API without a tokenizer: the server renders and checks the context)
            if n < 1:
                raise ValueError(f"n must be >= 1, got {n}")
            for index, conversation in enumerate(conversations):
                check_conversation(index, conversation)
            fitted, prompts, truncated = list(conversations), [[] for _ in conversations], set()
            per_prompt = 1 if sampling.temperature == 0.0 else n
        greedy = sampling.temperature == 0.0
        cfg = self.client.cfg
        common = {
            "model": cfg.model,
            "n": per_prompt,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
        }
        bodies: list[dict[str, Any]] = []
        seeds = row_seeds(seed, len(fitted))
        for index, conversation in enumerate(fitted):
            body = {**common, "seed": seeds[index]}
            if cfg.api == "completions":
                body["prompt"] = render_conversation(self.tokenizer, conversation)
            else:
                body["messages"] = list(conversation)
            bodies.append(body)
        path = "/completions" if cfg.api == "completions" else "/chat/completions"
        tokens = [len(p) + sampling.max_new_tokens * per_prompt for p in prompts]
        responses = self.client.post_many(path, bodies, tokens=tokens, progress=progress, desc=self.model_name)
        results = [copy_greedy(self._completions(r, per_prompt), n, greedy) for r in responses]
        log.debug("generated %d x %d completions with %s", len(bodies), n, self.model_name)
        return mark_truncated(results, truncated)

    def _completions(self, response: dict[str, Any], expected: int) -> list[Completion]:
        """The choices of one response as Completions, in choice order."""
        choices = sorted(response.get("choices") or [], key=lambda c: int(c.get("index", 0)))
        if len(choices) != expected:
            raise ValueError(f"{self.model_name}: asked for {expected} completions, the endpoint sent {len(choices)}")
        out: list[Completion] = []
        for choice in choices:
            text = choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content")
            text = text or ""
            finished = choice.get("finish_reason") == "stop"
            ids: list[int] = []
            if self.tokenizer is not None:
                ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                if finished and self.stop_ids:
                    ids.append(self.stop_ids[0])
            out.append(Completion(text=text, token_ids=ids, finished=finished))
        return out
