"""The arithmetic of a soft AI label: two-option normalisation, both-order averaging, clamping, ensembling.

Why both orders: a small judge prefers whichever response it sees first (the embedded 135M model put the higher
probability on (A) for 32 of 32 human-labelled pairs). Reading the same pair with the responses swapped and
averaging cancels that bias: only the *difference* between the two orders carries signal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rlaif.records import PairJudgement


def two_option_probability(logp_a: float, logp_b: float) -> float:
    """P(A) normalised over the two options only: softmax([logp_a, logp_b])[0] = sigmoid(logp_a - logp_b).

    Mass the model puts on other tokens drops out, so the label does not shrink when the judge is unsure of the
    answer format. Written as a sigmoid of the difference so that very negative log-probs do not underflow.
    """
    diff = logp_a - logp_b
    if diff >= 0:
        return 1.0 / (1.0 + math.exp(-diff))
    z = math.exp(diff)
    return z / (1.0 + z)


def clamp(p: float, bounds: tuple[float, float]) -> float:
    """p limited to [low, high] (chain-of-thought labels are over-confident; the paper clamps to 0.4-0.6)."""
    low, high = bounds
    return min(max(p, low), high)


def combine_orders(
    p_a_in_order: float,
    p_a_in_swapped_order: float,
    *,
    principle_id: str,
    truncated: bool = False,
    coverage: float | None = None,
    method: str | None = None,
) -> PairJudgement:
    """Both orders of one pair under `principle_id` -> PairJudgement (the other keywords are copied into it).

    p_a_in_order:         P(A) of the prompt with response_a as (A).
    p_a_in_swapped_order: P(A) of the prompt with response_b as (A), so P(response_a) there is 1 minus it.
    """
    for name, value in (("p_a_in_order", p_a_in_order), ("p_a_in_swapped_order", p_a_in_swapped_order)):
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    p_a = p_a_in_order
    p_a_swapped = 1.0 - p_a_in_swapped_order
    # Exactly 1/2 is "no preference" and never counts as disagreeing with the other order.
    flip = (p_a - 0.5) * (p_a_swapped - 0.5) < 0
    return PairJudgement(
        principle_id=principle_id,
        p_a=p_a,
        p_a_swapped=p_a_swapped,
        p_a_mean=(p_a + p_a_swapped) / 2,
        flip=flip,
        truncated=truncated,
        coverage=coverage,
        method=method,
    )


def ensemble(judgements: Sequence[PairJudgement]) -> float:
    """The soft label of a pair judged under several principles: the mean of their p_a_mean."""
    if not judgements:
        raise ValueError("cannot ensemble zero judgements")
    return sum(j.p_a_mean for j in judgements) / len(judgements)
