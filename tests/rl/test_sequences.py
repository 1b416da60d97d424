"""Log-probs at a temperature, stop-token truncation, padding-safe positions and the sampler."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.modeling import load_causal_lm
from rlaif.rl.sequences import (
    first_true_indices,
    forward_logits,
    logprobs_from_logits,
    position_ids_from_mask,
    sample_responses,
    truncate_at_stop_token,
)


def test_logprobs_divide_the_logits_by_the_temperature() -> None:
    logits = torch.tensor([[[0.0, math.log(3)]]])
    labels = torch.tensor([[1]])
    # T = 1: softmax([0, ln 3]) = [1/4, 3/4] -> ln 0.75 = -0.287682.
    assert logprobs_from_logits(logits, labels).item() == pytest.approx(math.log(0.75))
    # T = 2: logits [0, ln(3)/2] -> p = sqrt 3 / (1 + sqrt 3) = 0.633975 -> ln = -0.455800.
    assert logprobs_from_logits(logits, labels, temperature=2.0).item() == pytest.approx(
        math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    )


def test_first_true_indices() -> None:
    bools = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    # First True at 1, none (-> row length 3), 0.
    assert first_true_indices(bools).tolist() == [1, 3, 0]


def test_truncate_keeps_the_stop_token_and_pads_after_it() -> None:
    responses = torch.tensor([[5, 2, 7, 8], [5, 6, 7, 8], [2, 9, 2, 9]])
    truncated, mask = truncate_at_stop_token(responses, stop_token_id=2, pad_token_id=0)
    assert truncated.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]


def test_truncate_mask_is_positional_when_pad_equals_stop() -> None:
    # SmolLM2 pads with its stop token: the mask must still keep the stop token and drop what follows it.
    truncated, mask = truncate_at_stop_token(torch.tensor([[5, 2, 7, 2]]), stop_token_id=2, pad_token_id=2)
    assert truncated.tolist() == [[5, 2, 2, 2]]
    assert mask.tolist() == [[True, True, False, False]]


def test_position_ids_start_at_the_first_real_token() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_left_padding_does_not_change_the_logprobs(tiny_model: str) -> None:
    model = load_causal_lm(tiny_model, device="cpu")
    tokens = torch.tensor([[17, 423, 88, 901, 12]])
    padded = torch.cat([torch.full((1, 3), 2), tokens], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = logprobs_from_logits(forward_logits(model, tokens, torch.ones_like(tokens))[:, :-1], tokens[:, 1:])
        in_batch = logprobs_from_logits(forward_logits(model, padded, mask)[:, 3:-1], tokens[:, 1:])
    torch.testing.assert_close(in_batch, alone, rtol=1e-5, atol=1e-5)


def test_sampler_is_seeded_and_matches_a_cache_free_forward(tiny_model: str) -> None:
    model = load_causal_lm(tiny_model, device="cpu")
    queries = torch.tensor([[2, 2, 17, 423], [5, 88, 901, 12]])
    query_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])

    def sample(seed: int) -> torch.Tensor:
        return sample_responses(model, queries, query_mask, 6, 0.7, 2, torch.Generator().manual_seed(seed))

    first, again = sample(3), sample(3)
    assert first.shape == (2, 6)
    assert torch.equal(first, again)
    # Greedy-equivalent check of the KV-cache path: a tiny temperature makes sampling the argmax, which must
    # equal the argmax of a full forward over the sampled prefix at every step.
    greedy = sample_responses(model, queries, query_mask, 4, 1e-4, 2, torch.Generator().manual_seed(0))
    full = torch.cat([queries, greedy], dim=1)
    full_mask = torch.cat([query_mask, torch.ones_like(greedy)], dim=1)
    with torch.no_grad():
        logits = forward_logits(model, full, full_mask)[:, queries.shape[1] - 1 : -1]
    assert torch.equal(logits.argmax(-1), greedy)


def test_per_row_generators_make_a_row_independent_of_its_batch(tiny_model: str) -> None:
    # Data-parallel PPO deals a step's rows across ranks: with one generator per row, row 2 samples the same tokens
    # in a batch of 3 as in a batch of its own (left-padded to the same width), whatever the other rows hold.
    model = load_causal_lm(tiny_model, device="cpu")
    queries = torch.tensor([[2, 2, 17, 423], [5, 88, 901, 12], [2, 7, 31, 64]])
    query_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])

    def generators(rows: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(1000 + row) for row in rows]

    batch = sample_responses(model, queries, query_mask, 6, 0.7, 2, generators([0, 1, 2]))
    alone = sample_responses(model, queries[2:], query_mask[2:], 6, 0.7, 2, generators([2]))
    assert torch.equal(batch[2:], alone)
    reordered = sample_responses(model, queries[[2, 0]], query_mask[[2, 0]], 6, 0.7, 2, generators([2, 0]))
    assert torch.equal(reordered, batch[[2, 0]])
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        sample_responses(model, queries, query_mask, 6, 0.7, 2, generators([0, 1]))
