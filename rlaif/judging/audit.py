"""How good is the judge? Agreement with human preference labels, position flips and calibration.

Input: human-labelled pairs (`rlaif.records.HumanPair`, read with `rlaif.evaluation.datasets.load_human_pairs`
from a JSONL file with `prompt`, `chosen`, `rejected`, optional `id` and `source`), such as
`rlaif/data/preference_pairs.dev.jsonl`. Which response is shown as (A) is decided per pair by a seeded coin,
so a judge with a pure position bias scores 50 %. Reported:

- agreement:            P(chosen better) > 1/2 after both-order averaging and the principle ensemble
- single-order agreement: the same, from the first order only (what a judge that skips the swap would get)
- flip rate:            share of principle judgements whose two orders disagree
- first-position rate:  share of first-order readings with P(A) > 1/2 (1/2 for an unbiased judge)
- calibration:          agreement by confidence bucket |P - 1/2|, next to the mean confidence the judge claimed

    rlaif judge-eval --pairs rlaif/data/preference_pairs.dev.jsonl --limit 128
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from rlaif.config import JudgeConfig
from rlaif.constitution import Constitution
from rlaif.judging.judge import judge_comparisons
from rlaif.records import AuditOutcome, Comparison, HumanPair, LabelRecord
from rlaif.truncation import LongItems

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlaif.generation import Generator

# Buckets of |P(chosen) - 1/2|; fine at the low end, where a small judge puts almost every pair.
CONFIDENCE_EDGES = (0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5)


class Bucket(BaseModel):
    """Agreement of the pairs whose confidence |P(chosen) - 1/2| falls in [low, high)."""

    low: float
    high: float
    count: int
    agreement: float | None = Field(description="Share of the bucket's pairs where the judge agreed with people.")
    claimed: float | None = Field(description="Mean max(P, 1 - P) in the bucket: the agreement a calibrated judge has.")


class AuditReport(BaseModel):
    """Judge quality on labelled pairs."""

    model: str
    constitution: str
    principles: list[str]
    principles_per_label: int
    few_shot: int
    chain_of_thought: bool
    pairs: int
    agreement: float = Field(description="Share of pairs with P(chosen) > 1/2 (both orders, ensemble).")
    agreement_single_order: float = Field(description="Same from the first order alone, mean over principles.")
    ties: int = Field(description="Pairs with P(chosen) exactly 1/2 (counted as disagreement).")
    flip_rate: float = Field(description="Share of principle judgements whose two orders disagree.")
    first_position_rate: float = Field(description="Share of first-order readings with P(A) > 1/2.")
    mean_confidence: float = Field(description="Mean |P(chosen) - 1/2|.")
    by_source: dict[str, dict[str, float]] = Field(description="{source: {count, agreement}}.")
    calibration: list[Bucket]
    seconds: float
    pairs_per_second: float
    long_items: LongItems = Field(
        default_factory=LongItems, description="Pairs cut to fit the judge's context (rlaif/truncation.py)."
    )


def to_comparisons(pairs: Sequence[HumanPair], seed: int) -> tuple[list[Comparison], list[bool]]:
    """Comparisons with the chosen response at (A) or (B) by a seeded coin per pair; and where it went."""
    comparisons: list[Comparison] = []
    chosen_is_a: list[bool] = []
    for pair in pairs:
        first = random.Random(f"audit:{seed}:{pair.id}").random() < 0.5
        a, b = (pair.chosen, pair.rejected) if first else (pair.rejected, pair.chosen)
        comparisons.append(Comparison(id=pair.id, prompt=pair.prompt, response_a=a, response_b=b))
        chosen_is_a.append(first)
    return comparisons, chosen_is_a


def outcomes(
    pairs: Sequence[HumanPair], labels: Sequence[LabelRecord], chosen_is_a: Sequence[bool]
) -> list[AuditOutcome]:
    """Each label read as P(chosen better), from both orders and from the first order alone."""
    out: list[AuditOutcome] = []
    for pair, label, first in zip(pairs, labels, chosen_is_a, strict=True):
        single = sum(j.p_a for j in label.judgements) / len(label.judgements)
        out.append(
            AuditOutcome(
                id=pair.id,
                source=pair.source,
                chosen_is_a=first,
                p_chosen=label.p_a if first else 1.0 - label.p_a,
                p_chosen_single_order=single if first else 1.0 - single,
            )
        )
    return out


def calibration(rows: Sequence[AuditOutcome], edges: Sequence[float] = CONFIDENCE_EDGES) -> list[Bucket]:
    """Agreement per confidence bucket; the last bucket includes its upper edge (confidence 1/2)."""
    buckets: list[Bucket] = []
    for i, (low, high) in enumerate(itertools.pairwise(edges)):
        last = i == len(edges) - 2
        members = [r for r in rows if low <= abs(r.p_chosen - 0.5) < high or (last and abs(r.p_chosen - 0.5) == high)]
        agreement = sum(r.p_chosen > 0.5 for r in members) / len(members) if members else None
        claimed = sum(max(r.p_chosen, 1 - r.p_chosen) for r in members) / len(members) if members else None
        buckets.append(Bucket(low=low, high=high, count=len(members), agreement=agreement, claimed=claimed))
    return buckets


def summarise(
    rows: Sequence[AuditOutcome], labels: Sequence[LabelRecord], seconds: float, **meta: object
) -> AuditReport:
    """The AuditReport of per-pair outcomes (meta: model, constitution, principles, ... as in AuditReport)."""
    judgements = [j for label in labels for j in label.judgements]
    sources: dict[str, list[AuditOutcome]] = {}
    for row in rows:
        sources.setdefault(row.source or "all", []).append(row)
    return AuditReport(
        pairs=len(rows),
        agreement=sum(r.p_chosen > 0.5 for r in rows) / len(rows),
        agreement_single_order=sum(r.p_chosen_single_order > 0.5 for r in rows) / len(rows),
        ties=sum(r.p_chosen == 0.5 for r in rows),
        flip_rate=sum(j.flip for j in judgements) / len(judgements),
        first_position_rate=sum(j.p_a > 0.5 for j in judgements) / len(judgements),
        mean_confidence=sum(abs(r.p_chosen - 0.5) for r in rows) / len(rows),
        by_source={
            name: {"count": len(members), "agreement": sum(r.p_chosen > 0.5 for r in members) / len(members)}
            for name, members in sorted(sources.items())
        },
        calibration=calibration(rows),
        long_items=LongItems.of([label.id for label in labels if label.truncated]),
        seconds=seconds,
        pairs_per_second=len(rows) / seconds if seconds > 0 else 0.0,
        **meta,  # type: ignore[arg-type]
    )


def audit_judge(
    pairs: Sequence[HumanPair],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    constitution: Constitution,
    cfg: JudgeConfig,
    seed: int = 0,
    *,
    model_name: str = "",
    generator: Generator | None = None,
    progress: bool = True,
) -> AuditReport:
    """Judge every labelled pair (principles from cfg.principles) and compare with the human labels."""
    comparisons, chosen_is_a = to_comparisons(pairs, seed)
    start = time.perf_counter()
    labels = list(
        judge_comparisons(
            comparisons,
            model,
            tokenizer,
            constitution,
            cfg.principles,
            cfg,
            seed,
            generator=generator,
            progress=progress,
        )
    )
    seconds = time.perf_counter() - start
    return summarise(
        outcomes(pairs, labels, chosen_is_a),
        labels,
        seconds,
        model=model_name or str(getattr(model.config, "name_or_path", "")),
        constitution=constitution.name,
        principles=[p.id for p in constitution.select(cfg.principles)],
        principles_per_label=cfg.principles_per_label,
        few_shot=min(cfg.few_shot, len(constitution.comparison_examples)),
        chain_of_thought=cfg.chain_of_thought,
    )
