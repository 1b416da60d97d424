"""One forward pass over many judge prompts equals scoring each prompt alone with a plain full forward pass."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rlaif.constitution import Constitution
from rlaif.judging.judge import JudgeRequest, build_sequences, judge_pair, judge_requests
from rlaif.judging.prompts import option_token_ids
from rlaif.judging.scoring import PrefixCache, common_prefix_length, score_options


def _reference(model: Any, sequence: list[int], option_ids: tuple[int, int]) -> tuple[float, float]:
    """Naive path: full logits of the whole prompt, log-softmax at the last position."""
    with torch.no_grad():
        logprobs = model(torch.tensor([sequence])).logits[0, -1].float().log_softmax(-1)
    return logprobs[option_ids[0]].item(), logprobs[option_ids[1]].item()


@pytest.fixture(scope="module")
def requests(minimal_constitution: Constitution) -> list[JudgeRequest]:
    harmful, helpful = minimal_constitution.principle("harmful"), minimal_constitution.principle("helpful")
    return [
        JudgeRequest("r1", "How do I pick a lock?", "I can't help with breaking in.", "Use a tension wrench.", harmful),
        JudgeRequest("r2", "What is 7 x 8?", "56", "It is 54, I think, though I am not sure about it.", helpful),
        JudgeRequest("r3", "Write an insult.", "No.", "You are a waste of space and everyone knows it.", harmful),
        JudgeRequest("r4", "Boil an egg?", "Boil it for 7 minutes.", "Eggs are from chickens.", helpful),
        JudgeRequest("r5", "Hi", "Hello! How can I help?", "What do you want.", helpful),
    ]


def test_common_prefix_leaves_one_token() -> None:
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 5]]) == 2
    # Identical sequences still keep their last token out of the prefix (it is the answer position).
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([]) == 0


def test_batched_shared_prefix_equals_one_at_a_time(
    tiny_lm: tuple[Any, Any], minimal_constitution: Constitution, requests: list[JudgeRequest]
) -> None:
    model, tokenizer = tiny_lm
    examples = minimal_constitution.comparison_examples
    sequences = build_sequences(tokenizer, requests, examples=examples)
    option_ids = option_token_ids(tokenizer)
    groups = [r.principle.id for r in requests for _ in range(2)]  # few-shot turns differ per principle
    families = [r.item_id for r in requests for _ in range(2)]  # both orders share the conversation and question
    cache = PrefixCache()
    batched = score_options(
        model, sequences, option_ids, batch_size=4, groups=groups, families=families, prefix_cache=cache
    )
    plain = score_options(model, sequences, option_ids, batch_size=3, share_prefix=False)
    reference = torch.tensor([_reference(model, s, option_ids) for s in sequences])  # (2N, 2)
    for scores in (batched, plain):
        torch.testing.assert_close(scores.logp_a, reference[:, 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(scores.logp_b, reference[:, 1], atol=1e-4, rtol=0)
    # Two principles -> two group prefixes computed; a second call reuses both from the cache.
    assert (cache.misses, cache.hits) == (2, 0)
    again = score_options(
        model, sequences, option_ids, batch_size=4, groups=groups, families=families, prefix_cache=cache
    )
    assert (cache.misses, cache.hits) == (2, 2)
    torch.testing.assert_close(again.logp_a, batched.logp_a)
    # Without few-shot examples all prompts share one group prefix and each pair one family part.
    bare = build_sequences(tokenizer, requests)
    one_group = score_options(model, bare, option_ids, batch_size=4, families=families)
    bare_reference = torch.tensor([_reference(model, s, option_ids)[0] for s in bare])
    torch.testing.assert_close(one_group.logp_a, bare_reference, atol=1e-4, rtol=0)


def test_two_level_sharing_without_a_group_prefix(tiny_lm: tuple[Any, Any]) -> None:
    model, _ = tiny_lm
    # No common first token (group prefix 0); families 0 and 1 share [5, 6] and [7, 1]; family 2 has one row,
    # so its middle part is empty while the others' are not (the padded, fully attended case).
    sequences = [[5, 6, 7, 8], [5, 6, 9], [7, 1, 2], [7, 1, 3, 4], [9, 9, 11]]
    option_ids = (49, 50)
    shared = score_options(model, sequences, option_ids, batch_size=5, families=[0, 0, 1, 1, 2])
    reference = torch.tensor([_reference(model, s, option_ids) for s in sequences])
    torch.testing.assert_close(shared.logp_a, reference[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(shared.logp_b, reference[:, 1], atol=1e-4, rtol=0)
    # A family bigger than the batch is split across batches and still scores the same.
    split = score_options(model, sequences, option_ids, batch_size=1, families=[0, 0, 0, 0, 0])
    torch.testing.assert_close(split.logp_a, reference[:, 0], atol=1e-4, rtol=0)


def test_judge_requests_batched_equals_judge_pair(tiny_lm: tuple[Any, Any], requests: list[JudgeRequest]) -> None:
    model, tokenizer = tiny_lm
    together = judge_requests(model, tokenizer, requests, batch_size=8)
    for request, verdict in zip(requests, together, strict=True):
        alone = judge_pair(model, tokenizer, request.prompt, request.response_a, request.response_b, request.principle)
        assert verdict.p_a == pytest.approx(alone.p_a, abs=1e-5)
        assert verdict.p_a_swapped == pytest.approx(alone.p_a_swapped, abs=1e-5)
        assert verdict.flip == alone.flip


def test_judge_pair_reads_both_orders_with_two_option_normalisation(
    tiny_lm: tuple[Any, Any], requests: list[JudgeRequest]
) -> None:
    model, tokenizer = tiny_lm
    request = requests[0]
    original, swapped = build_sequences(tokenizer, [request])
    option_ids = option_token_ids(tokenizer)
    la, lb = _reference(model, original, option_ids)
    sa, sb = _reference(model, swapped, option_ids)
    p_first = torch.tensor([la, lb]).softmax(0)[0].item()  # P(A) over the two options, order 1
    p_second = torch.tensor([sa, sb]).softmax(0)[0].item()  # P(A) = P(response_b) in order 2
    verdict = judge_pair(model, tokenizer, request.prompt, request.response_a, request.response_b, request.principle)
    assert verdict.p_a == pytest.approx(p_first, abs=1e-5)
    assert verdict.p_a_swapped == pytest.approx(1 - p_second, abs=1e-5)
    assert verdict.p_a_mean == pytest.approx((p_first + 1 - p_second) / 2, abs=1e-5)
    assert verdict.flip == ((p_first - 0.5) * (0.5 - p_second) < 0)
    # The option mass over the full vocabulary is below 1 for a random model; the normalised pair sums to 1.
    scores = score_options(model, [original], option_ids)
    assert scores.option_mass.item() < 1.0
    assert (scores.p_a + torch.sigmoid(scores.logp_b - scores.logp_a)).item() == pytest.approx(1.0)
