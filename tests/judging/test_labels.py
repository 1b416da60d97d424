"""The label arithmetic, by hand: two-option normalisation, both-order averaging, flips, clamping, ensembling."""

from __future__ import annotations

import math

import pytest

from rlaif.judging.labels import clamp, combine_orders, ensemble, two_option_probability

PID = "harmless"  # the principle a judgement is under (carried through, no arithmetic)


def test_two_option_normalisation_ignores_other_tokens() -> None:
    # P(A) = 0.6, P(B) = 0.2 over the vocabulary (0.2 elsewhere): over the two options P(A) = 0.6 / 0.8 = 0.75.
    assert two_option_probability(math.log(0.6), math.log(0.2)) == pytest.approx(0.75)
    # Equal log-probs -> 1/2 whatever their size.
    assert two_option_probability(-40.0, -40.0) == 0.5


def test_two_option_normalisation_does_not_underflow() -> None:
    # exp(-1000) underflows to 0 in a naive softmax (0/0); the difference is 2, so P(A) = sigmoid(2) = 0.8808.
    assert two_option_probability(-1000.0, -1002.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert two_option_probability(-1002.0, -1000.0) == pytest.approx(1 / (1 + math.exp(2)))


def test_both_orders_average_and_flip() -> None:
    # Order 1: P(A) = 0.8 (A = response_a). Order 2: P(A) = 0.7 (A = response_b), so P(response_a) = 1 - 0.7 = 0.3.
    # Mean = (0.8 + 0.3) / 2 = 0.55. The orders disagree (0.8 > 1/2 > 0.3): a position preference, flip.
    judgement = combine_orders(0.8, 0.7, principle_id=PID)
    assert judgement.p_a == pytest.approx(0.8)
    assert judgement.p_a_swapped == pytest.approx(0.3)
    assert judgement.p_a_mean == pytest.approx(0.55)
    assert judgement.flip is True


def test_consistent_orders_are_not_a_flip() -> None:
    # Order 2 puts only 0.1 on (A) = response_b: P(response_a) = 0.9 there; mean (0.8 + 0.9) / 2 = 0.85.
    judgement = combine_orders(0.8, 0.1, principle_id=PID, method="logprobs")
    assert judgement.model_dump() == {
        "principle_id": PID,
        "p_a": 0.8,
        "p_a_swapped": pytest.approx(0.9),
        "p_a_mean": pytest.approx(0.85),
        "flip": False,
        "truncated": False,
        "coverage": None,
        "method": "logprobs",
    }


def test_exactly_half_is_no_preference_not_a_flip() -> None:
    # 0.5 in order 1 and P(response_a) = 1 - 0.9 = 0.1 in order 2: mean 0.3, no flip (0.5 has no side).
    judgement = combine_orders(0.5, 0.9, principle_id=PID)
    assert judgement.p_a_mean == pytest.approx(0.3)
    assert judgement.flip is False


def test_combine_orders_rejects_non_probabilities() -> None:
    with pytest.raises(ValueError, match="p_a_in_swapped_order"):
        combine_orders(0.5, 1.5, principle_id=PID)
    with pytest.raises(ValueError, match="p_a_in_order"):
        combine_orders(float("nan"), 0.5, principle_id=PID)


def test_clamp_to_the_paper_range() -> None:
    assert clamp(0.9, (0.4, 0.6)) == 0.6
    assert clamp(0.1, (0.4, 0.6)) == 0.4
    assert clamp(0.45, (0.4, 0.6)) == 0.45


def test_ensemble_is_the_mean_of_principle_labels() -> None:
    # (0.55 + 0.85 + 0.3) / 3 = 1.7 / 3 = 0.5667
    judgements = [
        combine_orders(0.8, 0.7, principle_id=PID),
        combine_orders(0.8, 0.1, principle_id=PID),
        combine_orders(0.5, 0.9, principle_id=PID),
    ]
    assert ensemble(judgements) == pytest.approx(1.7 / 3)
    with pytest.raises(ValueError, match="zero judgements"):
        ensemble([])
