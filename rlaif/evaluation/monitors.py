"""Goodhart monitors: signs that PPO is optimising the reward model instead of the behaviour it stands for.

When the measure becomes the target it stops being a good measure (Gao et al. 2022, *Scaling Laws for Reward
Model Overoptimization*). Four cheap signals over the PPO metric series (`<run>/ppo/metrics.jsonl`, one record
per update with a `step`) and over sets of answers:

* **KL** (`objective/kl`, nats per sequence): how far the policy has moved from the SFT reference. Reward hacking
  needs distance; an alert fires above `kl_max`.
* **Length drift** (`val/mean_response_length`): reward models like long answers. The ratio of the mean of the
  last `window` points to the mean of the first `window` points; an alert fires above `length_drift_max` or
  below its inverse (collapse to terse answers, e.g. blanket refusals).
* **Repeated boilerplate** (`boilerplate_fraction`): the same sentence in many answers ("I'm sorry, but as an
  AI..."). The fraction of answers that contain the most common sentence; alert above `boilerplate_max`. Computed
  here from texts; a PPO loop that logs it does so under `val/boilerplate_fraction`.
* **Reward-model vs judge divergence**: the RM score still rises while the judge's score of the same policy falls.
  Over the PPO series (when a judge score `eval/judge_score` is logged) an alert fires when, over the last
  `window` points, the least-squares slope of `objective/scores` is positive and that of the judge score
  negative. At evaluation time the stage compares the RM's preference rate for the aligned answers with the
  judge's win rate (`rm_judge_gap`).

Decisions (pure functions; the PPO loop or the lead calls them, nothing here touches files or models):

* `early_stop_decision(history, cfg)` after each update: stop when `cfg.early_stop` is on and some monitor has
  alerted at each of the last `cfg.patience` points.
* `best_step(history, cfg, available_steps)` at the end: the checkpoint to keep, by `cfg.keep_best`, among the
  steps with no alert (all steps when every step alerted), earliest on ties.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from rlaif.config import MonitorConfig

KL_KEY = "objective/kl"
SCORE_KEY = "objective/scores"
LENGTH_KEY = "val/mean_response_length"
JUDGE_KEY = "eval/judge_score"
BOILERPLATE_KEY = "val/boilerplate_fraction"

MonitorName = Literal[
    "kl", "length_drift", "boilerplate", "rm_judge_divergence", "answer_boilerplate", "repetition", "judge_quality"
]
MIN_SENTENCE_CHARS = 20

History = Sequence[Mapping[str, Any]]


class Alert(BaseModel):
    """One monitor over its threshold at one step."""

    step: int = Field(description="PPO update (the metric record's `step`); -1 for an evaluation-time alert.")
    monitor: MonitorName = Field(description="Which monitor fired.")
    value: float = Field(description="The monitored value.")
    threshold: float = Field(description="The threshold it crossed.")
    message: str = Field(description="What it means, in words.")


class StopDecision(BaseModel):
    """Whether to stop PPO now, and why."""

    stop: bool
    reasons: list[str] = Field(default_factory=list)


class MonitorSummary(BaseModel):
    """The monitors over a whole PPO run, for the report."""

    steps: int = Field(description="Metric records read.")
    alerts: list[Alert] = Field(default_factory=list, description="Every alert, in step order.")
    first_alert: dict[str, int] = Field(default_factory=dict, description="First alerting step of each monitor.")
    early_stop: bool = Field(default=False, description="Whether early stopping was on for the run.")
    stop_step: int | None = Field(
        default=None, description="Where early stopping stops (or would have stopped, were it on) with this patience."
    )
    best_step: int | None = Field(default=None, description="The checkpoint keep_best would keep.")
    keep_best: str = Field(default="last", description="The metric best_step was chosen by.")
    length_drift: float | None = Field(default=None, description="Final length ratio (last window / first window).")


class Boilerplate(BaseModel):
    """The most repeated sentence across a set of answers."""

    fraction: float = Field(description="Fraction of answers that contain the sentence.")
    sentence: str = Field(default="", description="The sentence (normalised).")
    answers: int = Field(default=0, description="Answers examined.")


def _sentences(text: str) -> set[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.lower())
    return {s for s in (re.sub(r"\s+", " ", p).strip(" \t\"'*-") for p in parts) if len(s) >= MIN_SENTENCE_CHARS}


def boilerplate(answers: Sequence[str]) -> Boilerplate:
    """The sentence (of at least MIN_SENTENCE_CHARS characters) found in the most answers, and in how many.

    Short sentences ("Sure.") repeat naturally and are ignored; each answer counts a sentence once; a sentence
    found in one answer only gives 0 (nothing is repeated).
    """
    if len(answers) < 2:
        return Boilerplate(fraction=0.0, answers=len(answers))
    counts: Counter[str] = Counter()
    for answer in answers:
        counts.update(_sentences(answer))
    if not counts:
        return Boilerplate(fraction=0.0, answers=len(answers))
    sentence, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if count < 2:  # a sentence in one answer only is not repeated
        return Boilerplate(fraction=0.0, answers=len(answers))
    return Boilerplate(fraction=count / len(answers), sentence=sentence, answers=len(answers))


def distinct_2(answers: Sequence[str], min_words: int = 6) -> float | None:
    """Mean share of distinct word bigrams within an answer (1.0 = no bigram repeats; a looping answer such as
    "I can help. I can help. I can help." scores low). Answers shorter than `min_words` words are left out."""
    ratios = []
    for answer in answers:
        words = answer.lower().split()
        if len(words) < min_words:
            continue
        bigrams = list(itertools.pairwise(words))
        ratios.append(len(set(bigrams)) / len(bigrams))
    return sum(ratios) / len(ratios) if ratios else None


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of values against 0, 1, 2, ... (0 for fewer than two values)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    den = sum((x - mean_x) ** 2 for x in range(n))
    return num / den


def series(history: History, key: str) -> list[tuple[int, float]]:
    """(step, value) of every record that has `key` as a number, in order."""
    out = []
    for index, record in enumerate(history):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((int(record.get("step", index)), float(value)))
    return out


def length_ratio(lengths: Sequence[float], window: int) -> float | None:
    """mean(last `window`) / mean(first `window`); None with fewer than two points or a zero start."""
    if len(lengths) < 2:
        return None
    w = max(1, min(window, len(lengths) // 2))
    start = sum(lengths[:w]) / w
    end = sum(lengths[-w:]) / w
    return end / start if start > 0 else None


def alerts_at(history: History, cfg: MonitorConfig) -> list[Alert]:
    """The alerts at the last record of `history` (what an online check after each update sees)."""
    if not history:
        return []
    step = int(history[-1].get("step", len(history) - 1))
    last = history[-1]
    alerts: list[Alert] = []
    kl = last.get(KL_KEY)
    if isinstance(kl, int | float) and kl > cfg.kl_max:
        alerts.append(
            Alert(
                step=step, monitor="kl", value=kl, threshold=cfg.kl_max, message=f"KL {kl:.3g} nats above {cfg.kl_max}"
            )
        )
    ratio = length_ratio([v for _, v in series(history, LENGTH_KEY)], cfg.window)
    if ratio is not None and (ratio > cfg.length_drift_max or ratio < 1 / cfg.length_drift_max):
        alerts.append(
            Alert(
                step=step,
                monitor="length_drift",
                value=ratio,
                threshold=cfg.length_drift_max,
                message=f"mean response length is x{ratio:.2f} of its start (limit x{cfg.length_drift_max:g} either way)",
            )
        )
    repeated = last.get(BOILERPLATE_KEY)
    if isinstance(repeated, int | float) and repeated > cfg.boilerplate_max:
        alerts.append(
            Alert(
                step=step,
                monitor="boilerplate",
                value=repeated,
                threshold=cfg.boilerplate_max,
                message=f"{repeated:.0%} of sampled answers share one sentence",
            )
        )
    divergence = _divergence(history, cfg.window)
    if divergence is not None:
        rm_slope, judge_slope = divergence
        alerts.append(
            Alert(
                step=step,
                monitor="rm_judge_divergence",
                value=judge_slope,
                threshold=0.0,
                message=f"reward-model score rising ({rm_slope:+.3g}/update) while the judge score falls ({judge_slope:+.3g}/update)",
            )
        )
    return alerts


def _divergence(history: History, window: int) -> tuple[float, float] | None:
    """(RM slope, judge slope) over the last `window` records that have both, when they point opposite ways."""
    both = [
        (r[SCORE_KEY], r[JUDGE_KEY]) for r in history if _is_number(r.get(SCORE_KEY)) and _is_number(r.get(JUDGE_KEY))
    ]
    if len(both) < max(2, window):
        return None
    recent = both[-max(2, window) :]
    rm_slope = slope([float(a) for a, _ in recent])
    judge_slope = slope([float(b) for _, b in recent])
    return (rm_slope, judge_slope) if rm_slope > 0 and judge_slope < 0 else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def early_stop_decision(history: History, cfg: MonitorConfig) -> StopDecision:
    """Stop when early stopping is on and some monitor alerted at each of the last `patience` records."""
    if not cfg.early_stop or len(history) < cfg.patience:
        return StopDecision(stop=False)
    per_point = [alerts_at(history[: len(history) - back], cfg) for back in range(cfg.patience)]
    if all(per_point):
        latest = per_point[0]
        return StopDecision(stop=True, reasons=[a.message for a in latest])
    return StopDecision(stop=False)


def best_step(history: History, cfg: MonitorConfig, available_steps: Sequence[int] | None = None) -> int | None:
    """The step to keep by `cfg.keep_best` among `available_steps` (default: every step in history).

    Steps where a monitor alerted are passed over unless every candidate alerted; ties go to the earliest step
    (the one closest to the reference). "last" keeps the newest available step.
    """
    steps = [int(r.get("step", i)) for i, r in enumerate(history)]
    candidates = sorted(set(available_steps if available_steps is not None else steps))
    if not candidates:
        return None
    if cfg.keep_best == "last":
        return candidates[-1]
    alerted = {int(history[i].get("step", i)) for i in range(len(history)) if alerts_at(history[: i + 1], cfg)}
    values = {step: value for step, value in series(history, cfg.keep_best)}
    scored = [s for s in candidates if s in values]
    if not scored:
        return candidates[-1]
    clean = [s for s in scored if s not in alerted] or scored
    return max(clean, key=lambda s: (values[s], -s))


def summarise(history: History, cfg: MonitorConfig, available_steps: Sequence[int] | None = None) -> MonitorSummary:
    """Every alert over the run, where early stopping would have fired, and the step keep_best keeps."""
    alerts: list[Alert] = []
    stop_step = None
    stopping = cfg.model_copy(update={"early_stop": True})
    for end in range(1, len(history) + 1):
        alerts.extend(alerts_at(history[:end], cfg))
        if stop_step is None and early_stop_decision(history[:end], stopping).stop:
            stop_step = int(history[end - 1].get("step", end - 1))
    first: dict[str, int] = {}
    for alert in alerts:
        first.setdefault(alert.monitor, alert.step)
    return MonitorSummary(
        steps=len(history),
        alerts=alerts,
        first_alert=first,
        early_stop=cfg.early_stop,
        stop_step=stop_step,
        best_step=best_step(history, cfg, available_steps),
        keep_best=cfg.keep_best,
        length_drift=length_ratio([v for _, v in series(history, LENGTH_KEY)], cfg.window),
    )
