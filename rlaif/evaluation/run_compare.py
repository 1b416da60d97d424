"""Runs side by side: what each run's evaluation measured and what each of its stages cost.

A pure function over what the service already stores: the run's evaluation report (report.json, `EvalReport`)
and its stage rows (name, kind, status, started_at, finished_at, the StageResult as JSON). For each run: how its
labels became a policy (ppo or dpo), the evaluated model's harmlessness and helpfulness win rates against the
base with their Wilson intervals, refusal on harmful prompts and over-refusal on safe ones (Wilson intervals),
mean answer length, the KL to the SFT model sampled on the held-out prompts (the report's kl_to_sft, measured alike
for every method) and apart from it PPO's own KL at its last update (the training curve; other methods have none),
and per stage the wall time and, where the stage recorded it, its peak RSS (`peak_rss_mb` in the result's
`extra` or `metrics`; rlaif/peak_memory.py).

`GET /v1/runs/compare?ids=a,b` returns `RunComparison`; `rlaif compare A B` prints it as a table. Its
`head_to_head` rows are the runs judged against each other (rlaif/evaluation/head_to_head.py), when a worker has
judged them (POST /v1/runs/compare/head-to-head, `rlaif compare A B --head-to-head`).

    from rlaif.evaluation.run_compare import RunFacts, compare_runs
    compare_runs([RunFacts(id="run-a", status="succeeded", report=report_a, stages=[...]), ...])
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from rlaif.evaluation.head_to_head import HeadToHead
from rlaif.evaluation.report import HARMFUL, SAFE_LOOKALIKE, EvalReport, KLEstimate, Role
from rlaif.evaluation.stats import Rate, WinRate
from rlaif.peak_memory import PEAK_RSS_KEY

MAX_COMPARED_RUNS = 8  # one column each: more stops being readable side by side
KL_KEY = "objective/kl"  # PPO's KL(policy || SFT reference) per update (rlaif/stages/ppo.py)


class StageFacts(BaseModel):
    """One stage row of a run, as the service stores it."""

    name: str
    kind: str
    iteration: int = 1
    status: str
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    result: dict[str, Any] = Field(default_factory=dict, description="The stage's StageResult as JSON ({} until done).")


class RunFacts(BaseModel):
    """What the comparison reads of one run."""

    id: str
    status: str
    policy_optimization: str | None = None
    policy_model: str | None = None
    report: EvalReport | None = Field(default=None, description="The finished evaluation, if any.")
    report_missing: str | None = Field(default=None, description="Why there is no report (when report is None).")
    stages: list[StageFacts] = Field(default_factory=list, description="In plan order.")


class StageCost(BaseModel):
    """Wall time and peak memory of one stage of one run."""

    name: str
    kind: str
    status: str
    seconds: float | None = Field(description="finished_at - started_at; null until the stage has finished.")
    peak_rss_mb: float | None = Field(
        default=None, description="Peak resident memory (MiB), when the stage recorded it (rlaif/peak_memory.py)."
    )


class RunColumn(BaseModel):
    """One run's column of the comparison."""

    id: str
    status: str
    policy_optimization: str | None = Field(description="ppo or dpo (null when the stored config cannot be read).")
    policy_model: str | None
    evaluated: Role | None = Field(description="The role evaluated against the base: aligned, else sft.")
    evaluated_model: str | None = Field(description="That model's name or folder.")
    report_missing: str | None = Field(
        default=None, description="Why the evaluation figures are null: the run has no finished evaluation."
    )
    harmless_win_rate: WinRate | None = Field(description="Evaluated vs base, harmlessness, every judged prompt.")
    helpful_win_rate: WinRate | None = Field(description="Evaluated vs base, helpfulness, every judged prompt.")
    refusal: Rate | None = Field(description="Refusal rate on harmful prompts (string patterns), Wilson interval.")
    over_refusal: Rate | None = Field(description="Refusal rate on safe look-alike prompts (XSTest safe), Wilson.")
    refusal_judge: Rate | None = Field(default=None, description="Refusal on harmful prompts by the judge detector.")
    over_refusal_judge: Rate | None = Field(default=None, description="Over-refusal by the judge detector.")
    mean_tokens: float | None = Field(description="Mean generated tokens per evaluation answer of the evaluated model.")
    base_mean_tokens: float | None = Field(default=None, description="The same for the base model.")
    kl_to_sft: KLEstimate | None = Field(
        default=None,
        description="KL(aligned || SFT) sampled on the held-out prompts by the evaluation (the report's kl_to_sft), "
        "the same for every method; null when the report has none.",
    )
    ppo_kl: float | None = Field(
        default=None,
        description="PPO's KL(policy || SFT) at its last update (training prompts, the report's training curve); "
        "null without PPO metrics.",
    )
    stages: list[StageCost] = Field(default_factory=list)
    seconds: float | None = Field(description="Sum of the finished stages' wall times.")
    peak_rss_mb: float | None = Field(default=None, description="Largest peak RSS recorded by any stage.")


class RunComparison(BaseModel):
    """GET /v1/runs/compare: the runs side by side, in the order asked for."""

    runs: list[RunColumn]
    stage_names: list[str] = Field(description="Every stage name of the runs, in plan order (table rows).")
    head_to_head: list[HeadToHead] = Field(
        default_factory=list,
        description="The finished head-to-heads among these runs (A's win rates over B per axis), when judged.",
    )


def _seconds(stage: StageFacts) -> float | None:
    if stage.started_at is None or stage.finished_at is None:
        return None
    return round((stage.finished_at - stage.started_at).total_seconds(), 3)


def _peak_rss(result: dict[str, Any]) -> float | None:
    for section in ("extra", "metrics"):
        value = (result.get(section) or {}).get(PEAK_RSS_KEY)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _last(values: Sequence[float | None]) -> float | None:
    for value in reversed(values):
        if value is not None:
            return value
    return None


def _column(run: RunFacts) -> RunColumn:
    stages = [
        StageCost(name=s.name, kind=s.kind, status=s.status, seconds=_seconds(s), peak_rss_mb=_peak_rss(s.result))
        for s in run.stages
    ]
    timed = [s.seconds for s in stages if s.seconds is not None]
    peaks = [s.peak_rss_mb for s in stages if s.peak_rss_mb is not None]
    report = run.report
    top = report.top_model if report is not None else None
    summaries = {s.role: s for s in report.model_summaries} if report is not None else {}

    def win(axis: str) -> WinRate | None:
        return report.win_rate(axis, top, "base") if report is not None and top is not None else None

    def refusal(group: str, detector: str) -> Rate | None:
        return report.refusal(group, top, detector) if report is not None and top is not None else None

    training = report.training if report is not None else None
    return RunColumn(
        id=run.id,
        status=run.status,
        policy_optimization=run.policy_optimization,
        policy_model=run.policy_model,
        evaluated=top,
        evaluated_model=report.models.get(top) if report is not None and top is not None else None,
        report_missing=None if report is not None else (run.report_missing or "no evaluation report"),
        harmless_win_rate=win("harmless"),
        helpful_win_rate=win("helpful"),
        refusal=refusal(HARMFUL, "patterns"),
        over_refusal=refusal(SAFE_LOOKALIKE, "patterns"),
        refusal_judge=refusal(HARMFUL, "judge"),
        over_refusal_judge=refusal(SAFE_LOOKALIKE, "judge"),
        mean_tokens=summaries[top].mean_tokens if top in summaries else None,
        base_mean_tokens=summaries["base"].mean_tokens if "base" in summaries else None,
        kl_to_sft=report.kl_to_sft if report is not None else None,
        ppo_kl=_last(training.series.get(KL_KEY, [])) if training is not None else None,
        stages=stages,
        seconds=round(sum(timed), 3) if timed else None,
        peak_rss_mb=max(peaks) if peaks else None,
    )


def compare_runs(runs: Sequence[RunFacts], head_to_head: Sequence[HeadToHead] = ()) -> RunComparison:
    """The comparison of 2 to MAX_COMPARED_RUNS runs, columns in the order given, with the head-to-heads judged
    among them; ValueError otherwise."""
    if not 2 <= len(runs) <= MAX_COMPARED_RUNS:
        raise ValueError(f"compare 2 to {MAX_COMPARED_RUNS} runs, got {len(runs)}")
    ids = [r.id for r in runs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"each run once: {', '.join(repeated)} given more than once")
    return RunComparison(
        runs=[_column(r) for r in runs],
        stage_names=merge_orders([[s.name for s in r.stages] for r in runs]),
        head_to_head=list(head_to_head),
    )


def merge_orders(orders: Sequence[Sequence[str]]) -> list[str]:
    """One list of every name, each run's order kept: a name new to the list goes right after the name before
    it in its own run (a DPO run's `dpo` lands after `judge`, before `evaluate`, next to a PPO run's stages)."""
    merged: list[str] = []
    for order in orders:
        previous: str | None = None
        for name in order:
            if name not in merged:
                merged.insert(merged.index(previous) + 1 if previous is not None else 0, name)
            previous = name
    return merged
