"""Per-principle statistics of a run's AI labels: which principles judged, how.

The labels come from one of two sources, kept apart in the report: the judge stage (`<run>/judge/labels.jsonl`,
the offline pairs the reward model or DPO learns from) and the online DPO stage, whose judge labels two fresh
samples of the policy at every step (`<run>/online_dpo/labels/step-*.jsonl`). Both are LabelRecords.

For each principle: how often it was sampled (judgements and share of all judgements), its mean preference
(mean P(response_a better); near 1/2 when the pair order is arbitrary, as it is for sampled pairs), its mean
confidence |P - 1/2| x 2 (0 = no opinion, 1 = certain), its flip rate (share of judgements whose two orders
disagree: a pure position preference) and its first-position rate (share of first-order readings that favour
option (A); 1/2 for an unbiased judge). A principle with a high flip rate and low confidence contributes noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from rlaif.records import LabelRecord
from rlaif.store import read_jsonl

# judge: the judge stage's labels.jsonl; online_dpo: the labels the online DPO stage's judge made at its steps.
LabelSource = Literal["judge", "online_dpo"]


class PrincipleStats(BaseModel):
    """How one principle behaved as a judge over a run's labels."""

    principle_id: str
    judgements: int = Field(description="Times the principle judged a pair.")
    share: float = Field(description="judgements / all judgements.")
    mean_preference: float = Field(description="Mean P(response_a better), both orders averaged.")
    mean_confidence: float = Field(description="Mean |P - 1/2| x 2.")
    flip_rate: float = Field(description="Share of its judgements whose two orders disagree.")
    first_position_rate: float = Field(description="Share of first-order readings with P(A) > 1/2.")


class LabelSummary(BaseModel):
    """All labels of one source of a run, and each principle's statistics."""

    source: LabelSource = Field(
        default="judge",
        description="Where the labels come from: the judge stage (labels.jsonl) or the online DPO stage's steps "
        "(labels/step-*.jsonl).",
    )
    stage: str | None = Field(default=None, description="The stage folder the labels were read from (judge-2...).")
    labels: int
    judgements: int
    flip_rate: float
    mean_confidence: float
    principles: list[PrincipleStats]


def read_step_labels(labels_dir: Path) -> list[LabelRecord]:
    """The labels an online DPO stage stored per step (`labels_dir`/step-*.jsonl), in step order; [] if none."""
    return [label for path in sorted(labels_dir.glob("step-*.jsonl")) for label in read_jsonl(path, LabelRecord)]


def principle_stats(
    labels: Sequence[LabelRecord], source: LabelSource = "judge", stage: str | None = None
) -> LabelSummary:
    """LabelSummary of labels from `source` (read from the folder of `stage`); principles sorted by id."""
    by_principle: dict[str, list[tuple[float, float, bool]]] = {}
    for label in labels:
        for j in label.judgements:
            by_principle.setdefault(j.principle_id, []).append((j.p_a_mean, j.p_a, j.flip))
    total = sum(len(v) for v in by_principle.values())
    stats = [
        PrincipleStats(
            principle_id=pid,
            judgements=len(rows),
            share=len(rows) / total,
            mean_preference=sum(r[0] for r in rows) / len(rows),
            mean_confidence=sum(abs(r[0] - 0.5) * 2 for r in rows) / len(rows),
            flip_rate=sum(r[2] for r in rows) / len(rows),
            first_position_rate=sum(r[1] > 0.5 for r in rows) / len(rows),
        )
        for pid, rows in sorted(by_principle.items())
    ]
    all_rows = [r for rows in by_principle.values() for r in rows]
    return LabelSummary(
        source=source,
        stage=stage,
        labels=len(labels),
        judgements=total,
        flip_rate=sum(r[2] for r in all_rows) / total if total else 0.0,
        mean_confidence=sum(abs(r[0] - 0.5) * 2 for r in all_rows) / total if total else 0.0,
        principles=stats,
    )
