"""KL(aligned || SFT) on the held-out prompts, measured the same way for every policy optimisation method.

PPO logs its KL to the reference at every update, but DPO, online DPO and best-of-n runs log none, and a training
curve measures on training prompts. Here every method's policy is measured alike: per held-out prompt, responses
sampled from the aligned policy at temperature 1 (pure ancestral sampling, seeded by the prompt's id), and per
sequence the k1 estimator sum_t (log pi_aligned - log pi_sft) over the response tokens (Huang et al. 2022; its
expectation under the aligned policy is the sequence-level KL). The mean over prompts and its standard error.

    from rlaif.evaluation.kl import sampled_kl
    sampled_kl("<aligned folder>", "<sft folder>", ["How do I bake bread?"], ["p0"], max_new_tokens=32, seed=0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from rlaif.evaluation.report import KLEstimate
from rlaif.generation.common import context_length, derive_seed
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.rl.sequences import forward_logits, logprobs_from_logits, sample_responses, truncate_at_stop_token
from rlaif.training import chat_prompt_ids

log = logging.getLogger(__name__)

TEMPERATURE = 1.0  # the policy's own distribution: the KL is of pi_aligned, not of a sharpened copy of it


@torch.no_grad()
def sampled_kl(
    aligned: str,
    sft: str,
    prompts: Sequence[str],
    ids: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int,
    samples_per_prompt: int = 1,
    dtype: str = "float32",
) -> KLEstimate:
    """The k1 estimate of KL(aligned || sft) per held-out prompt, averaged: mean and standard error over prompts.

    One prompt at a time, its `samples_per_prompt` rows in one batch (one prompt, no padding), row k seeded by
    derive_seed(seed, "kl", prompt id, k): a prompt's samples do not depend on the other prompts. A prompt whose
    tokens and `max_new_tokens` exceed the models' context is left out of the estimate (logged), never fatal.
    """
    # Loaded here, by name, although the evaluate stage has just generated with both models: it generates through
    # generator objects (rlaif/evaluation/compare.py generate_answers) on the run's backend, which may be vLLM (an
    # engine, no torch module to score with) and whose dtype is generation.dtype ("auto": bfloat16 where fast),
    # while this estimate is float32; and it frees each model before loading the next on purpose, one model in
    # memory at a time. Handing its models over would make the KL depend on the generation backend and dtype, and
    # hold two models during generation; the reload costs ~0.6 s per 135M model on CPU (measured: tiny-random-llama
    # 0.55 s, SmolLM2-135M 0.68 s, model and tokenizer, from the cache), small beside the sampling below.
    tokenizer = load_tokenizer(sft)
    policy, reference = load_causal_lm(aligned, dtype=dtype), load_causal_lm(sft, dtype=dtype)
    device = next(policy.parameters()).device
    stop_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    context = min(context_length(policy.config, tokenizer), context_length(reference.config, tokenizer))
    per_prompt: list[float] = []
    too_long: list[str] = []
    for prompt, prompt_id in zip(prompts, ids, strict=True):
        prompt_ids = chat_prompt_ids(tokenizer, prompt)
        if len(prompt_ids) + max_new_tokens > context:
            too_long.append(prompt_id)
            continue
        query = torch.tensor([prompt_ids] * samples_per_prompt, device=device)  # (S, Q)
        query_mask = torch.ones_like(query)
        generators = [
            torch.Generator(device=device).manual_seed(derive_seed(seed, "kl", prompt_id, k))
            for k in range(samples_per_prompt)
        ]
        responses = sample_responses(policy, query, query_mask, max_new_tokens, TEMPERATURE, stop_id, generators)
        responses, response_mask = truncate_at_stop_token(responses, stop_id, pad_id)  # (S, R)
        query_responses = torch.cat([query, responses], dim=1)
        attention_mask = torch.cat([query_mask, torch.ones_like(responses)], dim=1)
        keep = responses.shape[1] + 1
        logprobs = logprobs_from_logits(
            forward_logits(policy, query_responses, attention_mask, keep)[:, :-1], responses
        )
        ref_logprobs = logprobs_from_logits(
            forward_logits(reference, query_responses, attention_mask, keep)[:, :-1], responses
        )
        kl = ((logprobs - ref_logprobs) * response_mask).sum(dim=1)  # (S,) k1 per sequence
        per_prompt.append(float(kl.mean()))
    if too_long:
        log.warning("KL to SFT: %d prompt(s) longer than the context left out: %s", len(too_long), ", ".join(too_long))
    n = len(per_prompt)
    mean = sum(per_prompt) / n if n else 0.0
    se = math.sqrt(sum((x - mean) ** 2 for x in per_prompt) / (n - 1) / n) if n > 1 else None
    return KLEstimate(mean=mean, se=se, prompts=n, samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens)
