"""Token-sequence helpers for RL on language models: log-probs at a temperature, stop-token truncation,
padding-safe position ids, and the sampler that produces rollouts.

Temperature detail (Huang et al. 2022, "The N Implementation Details of RLHF with PPO"): responses are
sampled from softmax(logits / T), so the log-probs used in the rollout *and* in training must divide the
logits by the same T, or the PPO ratio is not 1 before the first update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at `labels`: (B, T, V), (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, labels.unsqueeze(-1)).squeeze(-1)


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row, or the row length when there is none: (B, T) -> (B,)."""
    length = bools.shape[-1]
    positions = torch.arange(length, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, length).min(dim=-1).values


def truncate_at_stop_token(
    responses: torch.Tensor, stop_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each response up to and including its first stop token; everything after becomes pad.

    Returns (truncated responses (B, R), response mask (B, R) bool). The mask comes from positions, not from
    `token != pad`, because many tokenizers (SmolLM2 included) use the stop token as the pad token.
    """
    stop_index = first_true_indices(responses == stop_token_id)  # (B,)
    positions = torch.arange(responses.shape[1], device=responses.device).unsqueeze(0)  # (1, R)
    response_mask = positions <= stop_index.unsqueeze(1)
    return torch.where(response_mask, responses, pad_token_id), response_mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of a left-padded row: (B, T) -> (B, T).

    A left-padded prompt must see the same positions as the unpadded one, or its log-probs depend on how
    much padding its batch happened to need. Padding positions get 0 (they are masked out of attention).
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def forward_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
) -> torch.Tensor:
    """Logits of a causal LM over a left-padded batch with padding-safe positions: (B, T) -> (B, T, V).

    With logits_to_keep = k > 0 only the last k positions get logits, (B, k, V): the LM head (a V x d matmul per
    position) is skipped on the prompt, whose logits PPO never reads.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=logits_to_keep,
    )
    return out.logits


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_token_id: int,
    generator: torch.Generator | Sequence[torch.Generator],
) -> torch.Tensor:
    """Sample up to `max_new_tokens` tokens per left-padded query from softmax(logits / temperature).

    Pure ancestral sampling (no top-k/top-p/repetition penalty), so the rollout distribution is exactly the
    one whose log-probs PPO trains on. Rows that have emitted the stop token keep sampling until every row is
    done; the caller drops those tokens with `truncate_at_stop_token`. Returns (B, R), R <= max_new_tokens.
    `generator` is one generator for the batch, or one per row: then a row's tokens depend on its own seed only,
    not on which other rows share its batch (data-parallel PPO deals a step's rows across ranks).
    """
    attention_mask = query_mask.long()
    input_ids, past, tokens = queries, None, []
    done = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
    for _ in range(max_new_tokens):
        position_ids = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1] :]
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        probs = torch.softmax(out.logits[:, -1, :].float() / temperature, dim=-1)  # (B, V)
        next_token = _multinomial(probs, generator)  # (B, 1)
        tokens.append(next_token)
        done |= next_token.squeeze(1) == stop_token_id
        if bool(done.all()):
            break
        input_ids = next_token
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
    return torch.cat(tokens, dim=1)


def _multinomial(probs: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of probs (B, V): from one generator, or row i from generator[i]. Returns (B, 1)."""
    if isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)
    if len(generator) != probs.shape[0]:
        raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows: give one per row")
    rows = [torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generator, strict=True)]
    return torch.stack(rows)  # (B, 1)
