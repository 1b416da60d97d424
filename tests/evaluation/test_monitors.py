"""Goodhart monitors and the early-stop / keep-best decisions on synthetic PPO metric series."""

from __future__ import annotations

import pytest

from rlaif.config import MonitorConfig
from rlaif.evaluation.monitors import (
    alerts_at,
    best_step,
    boilerplate,
    early_stop_decision,
    length_ratio,
    slope,
    summarise,
)


def _history(lengths: list[float], kls: list[float] | None = None, scores: list[float] | None = None, judge=None):
    out = []
    for i, length in enumerate(lengths):
        record = {"step": i + 1, "val/mean_response_length": length}
        if kls is not None:
            record["objective/kl"] = kls[i]
        if scores is not None:
            record["objective/scores"] = scores[i]
        if judge is not None:
            record["eval/judge_score"] = judge[i]
        out.append(record)
    return out


def test_slope_and_length_ratio_by_hand() -> None:
    # y = 1, 3, 5 against x = 0, 1, 2: slope 2
    assert slope([1.0, 3.0, 5.0]) == pytest.approx(2.0)
    assert slope([4.0]) == 0.0
    # window 2: first two mean (10 + 12) / 2 = 11, last two mean (30 + 36) / 2 = 33 -> ratio 3
    assert length_ratio([10, 12, 20, 30, 36], window=2) == pytest.approx(3.0)
    assert length_ratio([10], window=2) is None


def test_stable_series_raises_no_alert() -> None:
    cfg = MonitorConfig()
    history = _history([20, 21, 19, 20, 22, 21], kls=[0.5, 1, 1.5, 2, 2.5, 3], scores=[0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert alerts_at(history, cfg) == []
    assert summarise(history, cfg).alerts == []


def test_length_drift_and_kl_alerts() -> None:
    cfg = MonitorConfig(window=2, length_drift_max=2.0, kl_max=10.0)
    # lengths 20, 20, ..., 50, 60: last window mean 55 / first window mean 20 = 2.75 > 2
    history = _history([20, 20, 30, 50, 60], kls=[1, 2, 4, 8, 12])
    monitors = {a.monitor: a for a in alerts_at(history, cfg)}
    assert set(monitors) == {"length_drift", "kl"}
    assert monitors["length_drift"].value == pytest.approx(2.75)
    assert monitors["kl"].value == 12
    # collapse to short answers alerts too: 40 -> 10 is x0.25 < 1/2
    assert [a.monitor for a in alerts_at(_history([40, 40, 10, 10]), cfg)] == ["length_drift"]


def test_rm_judge_divergence_needs_opposite_trends() -> None:
    cfg = MonitorConfig(window=3)
    rising_rm_falling_judge = _history([20] * 4, scores=[0.1, 0.5, 0.9, 1.3], judge=[0.6, 0.55, 0.5, 0.4])
    alerts = alerts_at(rising_rm_falling_judge, cfg)
    assert [a.monitor for a in alerts] == ["rm_judge_divergence"]
    # judge slope over the last 3 points (0.55, 0.5, 0.4): -0.075 per update
    assert alerts[0].value == pytest.approx(-0.075)
    both_rising = _history([20] * 4, scores=[0.1, 0.5, 0.9, 1.3], judge=[0.4, 0.5, 0.55, 0.6])
    assert alerts_at(both_rising, cfg) == []


def test_boilerplate_fraction_counts_answers_not_occurrences() -> None:
    answers = [
        "I'm sorry, but as an AI I cannot do that. I'm sorry, but as an AI I cannot do that.",
        "Here is a recipe. I'm sorry, but as an AI I cannot do that.",
        "Bake the bread at 220 degrees for thirty minutes.",
        "Sure.",
    ]
    found = boilerplate(answers)
    # the sentence is in 2 of 4 answers (twice in the first, counted once)
    assert found.fraction == pytest.approx(0.5)
    assert found.sentence == "i'm sorry, but as an ai i cannot do that."
    # "Sure." is shorter than 20 characters: repeated short sentences are not boilerplate
    assert boilerplate(["Sure.", "Sure.", "Sure."]).fraction == 0.0
    assert boilerplate(["only one"]).fraction == 0.0
    assert boilerplate(["A first long enough sentence.", "A second long enough sentence."]).fraction == 0.0


def test_boilerplate_alert_from_a_logged_fraction() -> None:
    cfg = MonitorConfig(boilerplate_max=0.5)
    history = [{"step": 1, "val/boilerplate_fraction": 0.2}, {"step": 2, "val/boilerplate_fraction": 0.75}]
    assert [a.monitor for a in alerts_at(history, cfg)] == ["boilerplate"]


def test_early_stop_needs_patience_consecutive_alerting_updates() -> None:
    kls = [1, 30, 2, 30, 30]  # alerts at steps 2, 4 and 5 (kl_max 20)
    history = _history([20] * 5, kls=kls)
    off = MonitorConfig(kl_max=20, patience=2)
    assert not early_stop_decision(history, off).stop  # early_stop is off by default
    on = MonitorConfig(kl_max=20, patience=2, early_stop=True)
    assert not early_stop_decision(history[:2], on).stop  # one alerting update (step 2) is not enough
    assert not early_stop_decision(history[:4], on).stop  # steps 3 (clean) and 4
    decision = early_stop_decision(history, on)  # steps 4 and 5 both alert
    assert decision.stop and "KL 30" in decision.reasons[0]
    summary = summarise(history, on)
    assert summary.stop_step == 5
    assert summary.first_alert == {"kl": 2}


def test_best_step_skips_alerting_updates_and_prefers_the_earliest_tie() -> None:
    history = _history([20] * 5, kls=[1, 2, 30, 3, 4], scores=[0.1, 0.5, 0.9, 0.5, 0.2])
    cfg = MonitorConfig(kl_max=20, keep_best="objective/scores")
    # step 3 has the top score 0.9 but alerts (KL 30); steps 2 and 4 tie at 0.5 -> the earlier, 2
    assert best_step(history, cfg) == 2
    # only steps with checkpoints count
    assert best_step(history, cfg, available_steps=[4, 5]) == 4
    assert best_step(history, MonitorConfig(keep_best="last"), available_steps=[2, 4]) == 4
    # when every candidate alerted, the best of them is kept anyway
    assert best_step(history, cfg, available_steps=[3]) == 3
    assert best_step([], cfg) is None


def test_distinct_2_is_low_for_looping_answers() -> None:
    from rlaif.evaluation.monitors import distinct_2

    # "a b a b a b": bigrams ab, ba, ab, ba, ab -> 2 distinct of 5 = 0.4; "one two ... six": 5 of 5 = 1.0.
    assert distinct_2(["a b a b a b", "one two three four five six"]) == pytest.approx((0.4 + 1.0) / 2)
    assert distinct_2(["too short"]) is None
