"""Two runs head to head: the judge's preference between run A's and run B's evaluated answers.

Each run's evaluation wrote its answers to `<run>/evaluate/answers.jsonl` (one `Sample` per prompt). Runs
evaluated on the same held-out prompts share prompt ids; a prompt counts here when both runs answered it under
the same id *and* with the same text (a run whose prompt set changed under an id is not compared on it). Each
shared prompt's pair (A's evaluated answer as response_a, B's as response_b) is judged by `judge_axis`, the
evaluate stage's own code for its win rates: harmlessness on harmful prompts, helpfulness on helpful ones,
`eval.principles_per_pair` principles of the axis, each read in both orders (A first, then B first) and
averaged, so a judge that favours position (A) cannot favour either run. Identical answers are a tie (p = 1/2)
without asking the judge, which is why a run against itself scores exactly 0.5.

The judge is run A's evaluation judge (the report's `judge_model`, i.e. its `judge.model` or the base model);
when run B's evaluation used another judge the result says so in `note`.

    from rlaif.evaluation.head_to_head import pair_answers
    from rlaif.evaluation.compare import judge_head_to_head
    pairs = pair_answers(samples_a, samples_b, "aligned", "aligned")
    axes = judge_head_to_head(pairs, judge, tokenizer, constitution, cfg)

This module is the records and the pairing, free of torch (the API reads the records); the judging itself is
`rlaif.evaluation.compare.judge_head_to_head`, next to `judge_axis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from rlaif.evaluation.datasets import EvalPrompt
from rlaif.evaluation.report import Sample
from rlaif.evaluation.stats import WinRate
from rlaif.records import Axis

AXES: tuple[Axis, ...] = ("harmless", "helpful")
ROLES = ("run_a", "run_b")  # the roles of the two answers in the judged comparisons' ids
HeadToHeadStatus = Literal["pending", "running", "done", "failed"]


class HeadToHeadAxis(BaseModel):
    """Run A over run B on one axis."""

    axis: Axis
    stats: WinRate = Field(description="A's win rate over B (Wilson 95 % interval; soft with a bootstrap interval).")


class HeadToHead(BaseModel):
    """The judged head-to-head of run A against run B."""

    run_a: str
    run_b: str
    role_a: str = Field(description="The role of run A's answers (its evaluated model: aligned, else sft).")
    role_b: str = Field(description="The role of run B's answers.")
    judge_model: str = Field(description="The judge used: run A's evaluation judge.")
    judge_model_b: str = Field(description="Run B's evaluation judge (not used; see note when it differs).")
    note: str | None = Field(default=None, description="Set when the two runs' judges differ.")
    prompts: int = Field(description="Prompts both runs answered (same id, same text).")
    mismatched: list[str] = Field(
        default_factory=list, description="Prompt ids both runs have but with different texts (left out)."
    )
    axes: list[HeadToHeadAxis] = Field(description="One entry per axis with at least one shared prompt.")

    def axis(self, axis: Axis) -> WinRate | None:
        return next((a.stats for a in self.axes if a.axis == axis), None)


class HeadToHeadState(BaseModel):
    """The stored state of one head-to-head (the file the worker writes; what the API returns)."""

    run_ids: tuple[str, str] = Field(description="[A, B]: the win rates are A's over B.")
    status: HeadToHeadStatus
    reports: dict[str, str] = Field(
        default_factory=dict,
        description="run id -> created_at of the evaluation report judged: a newer evaluation makes the result stale.",
    )
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = Field(default=None, description="Why it failed (status failed).")
    result: HeadToHead | None = Field(default=None, description="The result (status done).")


class PairedAnswers(BaseModel):
    """The prompts both runs answered, with each run's answer, in run A's order."""

    prompts: list[EvalPrompt]
    answers_a: list[str]
    answers_b: list[str]
    mismatched: list[str] = Field(default_factory=list)


def pair_answers(samples_a: Sequence[Sample], samples_b: Sequence[Sample], role_a: str, role_b: str) -> PairedAnswers:
    """Match the two runs' answers by prompt id; a shared id with different prompt texts is left out (and listed).
    ValueError when a sample lacks the role's answer (the answers are not that evaluation's)."""
    by_id = {s.id: s for s in samples_b}
    prompts: list[EvalPrompt] = []
    answers_a: list[str] = []
    answers_b: list[str] = []
    mismatched: list[str] = []
    for a in samples_a:
        b = by_id.get(a.id)
        if b is None:
            continue
        if a.prompt != b.prompt:
            mismatched.append(a.id)
            continue
        for sample, role, run in ((a, role_a, "A"), (b, role_b, "B")):
            if role not in sample.answers:
                raise ValueError(f"run {run}'s answer to {sample.id!r} has no {role!r} answer")
        prompts.append(EvalPrompt(id=a.id, prompt=a.prompt, dataset=a.dataset, kind=a.kind))  # type: ignore[arg-type]
        answers_a.append(a.answers[role_a])
        answers_b.append(b.answers[role_b])
    return PairedAnswers(prompts=prompts, answers_a=answers_a, answers_b=answers_b, mismatched=mismatched)


def needs_judge(pairs: PairedAnswers) -> bool:
    """Whether any shared prompt on an axis has two different answers (else no judge need be loaded)."""
    return any(
        a.strip() != b.strip()
        for p, a, b in zip(pairs.prompts, pairs.answers_a, pairs.answers_b, strict=True)
        if any(axis in p.axes for axis in AXES)
    )
