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
BATCH_ROWS = 16  # sequences sampled together


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

    Prompts are batched (left-padded, `BATCH_ROWS` rows at a time); row k of a prompt is sampled with its own
    generator seeded by derive_seed(seed, "kl", prompt id, k), so a prompt's samples do not depend on which prompts
    share its batch (up to the float rounding of padded attention). A prompt whose tokens and `max_new_tokens` exceed
    the models' context is left out of the estimate (logged), never fatal.
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
    stop_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    context = min(context_length(policy.config, tokenizer), context_length(reference.config, tokenizer))
    fitting: list[tuple[str, list[int]]] = []
    too_long: list[str] = []
    for prompt, prompt_id in zip(prompts, ids, strict=True):
        prompt_ids = chat_prompt_ids(tokenizer, prompt)
        if len(prompt_ids) + max_new_tokens > context:
            too_long.append(prompt_id)
        else:
            fitting.append((prompt_id, prompt_ids))
    # Batches of prompts of similar length (little padding), each prompt's samples in the same batch. Sampling a
    # token at a time is memory-bound on CPU: one prompt per call took 4.9 of the 12.6 minutes of a 58-prompt
    # evaluation; a batch of 16 rows costs about what one row does.
    fitting.sort(key=lambda item: len(item[1]))
    per_batch = max(1, BATCH_ROWS // samples_per_prompt)
    per_prompt: list[float] = []
    for start in range(0, len(fitting), per_batch):
        batch = fitting[start : start + per_batch]
        per_prompt += _batch_kl(policy, reference, batch, samples_per_prompt, max_new_tokens, seed, stop_id, pad_id)
    if too_long:
        log.warning("KL to SFT: %d prompt(s) longer than the context left out: %s", len(too_long), ", ".join(too_long))
    n = len(per_prompt)
    mean = sum(per_prompt) / n if n else 0.0
    se = math.sqrt(sum((x - mean) ** 2 for x in per_prompt) / (n - 1) / n) if n > 1 else None
    return KLEstimate(mean=mean, se=se, prompts=n, samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens)


def _batch_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    batch: Sequence[tuple[str, list[int]]],
    samples_per_prompt: int,
    max_new_tokens: int,
    seed: int,
    stop_id: int,
    pad_id: int,
) -> list[float]:
    """The mean k1 KL of each prompt of `batch` ((id, prompt tokens), left-padded into one batch of rows)."""
    device = next(policy.parameters()).device
    rows = [(prompt_id, k, tokens) for prompt_id, tokens in batch for k in range(samples_per_prompt)]
    width = max(len(tokens) for _, _, tokens in rows)
    query = torch.tensor([[pad_id] * (width - len(t)) + t for _, _, t in rows], device=device)  # (B, Q)
    query_mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for _, _, t in rows], device=device)
    generators = [torch.Generator(device=device).manual_seed(derive_seed(seed, "kl", i, k)) for i, k, _ in rows]
    responses = sample_responses(policy, query, query_mask, max_new_tokens, TEMPERATURE, stop_id, generators)
    responses, response_mask = truncate_at_stop_token(responses, stop_id, pad_id)  # (B, R)
    query_responses = torch.cat([query, responses], dim=1)
    attention_mask = torch.cat([query_mask, torch.ones_like(responses)], dim=1)
    keep = responses.shape[1] + 1
    logprobs = logprobs_from_logits(forward_logits(policy, query_responses, attention_mask, keep)[:, :-1], responses)
    ref_logprobs = logprobs_from_logits(
        forward_logits(reference, query_responses, attention_mask, keep)[:, :-1], responses
    )
    kl = ((logprobs - ref_logprobs) * response_mask).sum(dim=1).view(len(batch), samples_per_prompt)  # (P, S) k1
    return kl.mean(dim=1).tolist()
