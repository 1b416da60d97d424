"""Win rates and rates with confidence intervals.

A judged comparison gives a *soft* preference p = P(model beats baseline) in [0, 1] (the judge's both-order,
principle-ensembled label). Two ways to turn n of them into a win rate, both reported:

* **Hard win rate with ties.** Each prompt is a win (p > 1/2 + tie_margin), a loss (p < 1/2 - tie_margin) or a
  tie (in between). The win rate is (wins + ties / 2) / n: a tie counts as half a win, as in Elo/Bradley-Terry
  win rates and in Bai et al.'s comparisons. Its interval is the **Wilson score interval** of that proportion.
  With ties the success count is fractional; the Wilson formula is used with the fractional count as it stands
  (a tie contributes half a success and half a failure), which is slightly conservative only when ties are many.
* **Soft win rate.** The mean of p itself: it keeps the judge's confidence (0.51 and 0.99 are not both "a win").
  Its interval is a **percentile bootstrap** of the mean over prompts (seeded, so reports are reproducible).

Rates of yes/no events (refusals) use the Wilson interval: unlike the normal approximation it stays inside
[0, 1] and behaves at 0/n and n/n, which are common here (a base model that never refuses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

Z_95 = 1.959963984540054  # standard normal quantile for a two-sided 95 % interval


class Rate(BaseModel):
    """k events out of n, with a Wilson 95 % interval."""

    k: int = Field(description="Number of events (e.g. refusals).")
    n: int = Field(description="Number of trials.")
    rate: float = Field(description="k / n (0 when n = 0).")
    ci_low: float = Field(description="Wilson interval, lower end.")
    ci_high: float = Field(description="Wilson interval, upper end.")


class WinRate(BaseModel):
    """How often a model beats a baseline under the judge, hard (with ties) and soft, with intervals."""

    n: int = Field(description="Prompts compared.")
    wins: int = Field(description="Prompts with p > 1/2 + tie_margin.")
    losses: int = Field(description="Prompts with p < 1/2 - tie_margin.")
    ties: int = Field(description="Prompts with |p - 1/2| <= tie_margin.")
    win_rate: float = Field(description="(wins + ties / 2) / n.")
    ci_low: float = Field(description="Wilson 95 % interval of win_rate, lower end.")
    ci_high: float = Field(description="Wilson 95 % interval of win_rate, upper end.")
    soft_win_rate: float = Field(description="Mean soft preference p.")
    soft_ci_low: float = Field(description="Percentile-bootstrap 95 % interval of the mean p, lower end.")
    soft_ci_high: float = Field(description="Percentile-bootstrap 95 % interval of the mean p, upper end.")
    flip_rate: float = Field(
        default=0.0, description="Fraction of the judgements whose two orders disagreed (position preference)."
    )


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of successes / n: (center +- half) with

    center = (p + z^2 / 2n) / (1 + z^2 / n),  half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n).
    n = 0 gives the uninformative (0, 1).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_mean_interval(
    values: Sequence[float], resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the values with replacement `resamples` times."""
    if len(values) == 0:
        return 0.0, 1.0
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)  # (resamples,)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def rate(flags: Sequence[bool]) -> Rate:
    """Rate of True among flags, with its Wilson interval."""
    k, n = sum(bool(f) for f in flags), len(flags)
    low, high = wilson_interval(k, n)
    return Rate(k=k, n=n, rate=k / n if n else 0.0, ci_low=low, ci_high=high)


def win_rate(
    preferences: Sequence[float],
    tie_margin: float = 0.0,
    flips: Sequence[bool] = (),
    resamples: int = 1000,
    seed: int = 0,
) -> WinRate:
    """WinRate of soft preferences p_i = P(model beats baseline on prompt i); `flips` are the per-judgement
    order disagreements (any number: one per prompt and principle)."""
    for index, p in enumerate(preferences):
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ValueError(f"preference {index} must be a probability in [0, 1], got {p}")
    if not 0.0 <= tie_margin < 0.5:
        raise ValueError(f"tie_margin must be in [0, 0.5), got {tie_margin}")
    n = len(preferences)
    wins = sum(p > 0.5 + tie_margin for p in preferences)
    losses = sum(p < 0.5 - tie_margin for p in preferences)
    ties = n - wins - losses
    successes = wins + ties / 2
    low, high = wilson_interval(successes, n)
    soft_low, soft_high = bootstrap_mean_interval(preferences, resamples=resamples, seed=seed)
    return WinRate(
        n=n,
        wins=wins,
        losses=losses,
        ties=ties,
        win_rate=successes / n if n else 0.5,
        ci_low=low,
        ci_high=high,
        soft_win_rate=float(np.mean(preferences)) if n else 0.5,
        soft_ci_low=soft_low,
        soft_ci_high=soft_high,
        flip_rate=sum(bool(f) for f in flips) / len(flips) if flips else 0.0,
    )
