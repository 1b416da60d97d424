"""Win rates and intervals against hand-computed values (style guide 13)."""

from __future__ import annotations

import pytest

from rlaif.evaluation.stats import bootstrap_mean_interval, rate, wilson_interval, win_rate


def test_wilson_interval_eight_of_ten() -> None:
    # p = 0.8, n = 10, z = 1.96 (z^2 = 3.8415): denominator = 1 + 3.8415/10 = 1.38415
    # center = (0.8 + 3.8415/20) / 1.38415 = 0.99207 / 1.38415 = 0.71674
    # half = 1.96 * sqrt(0.8*0.2/10 + 3.8415/400) / 1.38415 = 1.96 * sqrt(0.016 + 0.0096037) / 1.38415
    #      = 1.96 * 0.16001 / 1.38415 = 0.22658  ->  (0.49016, 0.94332)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4)
    assert high == pytest.approx(0.94332, abs=1e-4)


def test_wilson_interval_at_the_edges_stays_inside_zero_one() -> None:
    # 0 of 10: center = half = (3.8415/20) / 1.38415 = 0.13877  ->  (0, 0.27753)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    # 10 of 10 mirrors it: (1 - 0.27753, 1)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    # no trials: no information
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(11, 10)


def test_win_rate_counts_a_tie_as_half_a_win() -> None:
    # p = [0.9, 0.8, 0.5, 0.2], tie_margin 0: wins 2 (0.9, 0.8), tie 1 (0.5), loss 1 (0.2)
    # win rate = (2 + 1/2) / 4 = 0.625; soft win rate = (0.9 + 0.8 + 0.5 + 0.2) / 4 = 0.6
    # Wilson with the fractional count 2.5 of 4: denominator = 1 + 3.8415/4 = 1.96037
    # center = (0.625 + 3.8415/8) / 1.96037 = 1.10518 / 1.96037 = 0.56376
    # half = 1.96 * sqrt(0.625*0.375/4 + 3.8415/64) / 1.96037 = 1.96 * 0.34441 / 1.96037 = 0.34434 -> (0.21943, 0.90810)
    stats = win_rate([0.9, 0.8, 0.5, 0.2], flips=[True, False, False, False])
    assert (stats.n, stats.wins, stats.ties, stats.losses) == (4, 2, 1, 1)
    assert stats.win_rate == pytest.approx(0.625)
    assert stats.soft_win_rate == pytest.approx(0.6)
    assert (stats.ci_low, stats.ci_high) == pytest.approx((0.21943, 0.90810), abs=1e-4)
    assert stats.soft_ci_low <= 0.6 <= stats.soft_ci_high
    assert stats.flip_rate == pytest.approx(0.25)  # 1 of 4 judgements flipped


def test_tie_margin_turns_near_half_preferences_into_ties() -> None:
    # margin 0.05: 0.52 and 0.48 and 0.5 are ties, 0.9 a win -> (1 + 3/2) / 4 = 0.625
    stats = win_rate([0.52, 0.48, 0.5, 0.9], tie_margin=0.05)
    assert (stats.wins, stats.ties, stats.losses) == (1, 3, 0)
    assert stats.win_rate == pytest.approx(0.625)
    # without a margin 0.52 wins and 0.48 loses: (2 + 1/2) / 4 = 0.625 as well, but from other counts
    strict = win_rate([0.52, 0.48, 0.5, 0.9])
    assert (strict.wins, strict.ties, strict.losses) == (2, 1, 1)


def test_win_rate_rejects_values_that_are_not_probabilities() -> None:
    with pytest.raises(ValueError, match="preference 1 must be a probability"):
        win_rate([0.5, 1.5])
    with pytest.raises(ValueError, match="tie_margin"):
        win_rate([0.5], tie_margin=0.5)


def test_bootstrap_interval_matches_the_normal_approximation_for_a_fair_coin() -> None:
    # 100 values of 0/1 with mean 1/2: the standard error of the mean is sqrt(0.25/100) = 0.05, so the 95 %
    # interval is about 0.5 +- 1.96 * 0.05 = (0.402, 0.598).
    low, high = bootstrap_mean_interval([0.0, 1.0] * 50, resamples=4000, seed=1)
    assert low == pytest.approx(0.402, abs=0.02)
    assert high == pytest.approx(0.598, abs=0.02)
    # constant data has a zero-width interval, and the same seed gives the same interval
    assert bootstrap_mean_interval([0.7] * 5) == pytest.approx((0.7, 0.7))
    assert bootstrap_mean_interval([0.1, 0.9, 0.4], seed=3) == bootstrap_mean_interval([0.1, 0.9, 0.4], seed=3)


def test_rate_of_flags() -> None:
    # 3 of 4: rate 0.75 with its Wilson interval
    stats = rate([True, True, False, True])
    assert (stats.k, stats.n, stats.rate) == (3, 4, 0.75)
    assert (stats.ci_low, stats.ci_high) == pytest.approx(wilson_interval(3, 4))
    assert rate([]).rate == 0.0
