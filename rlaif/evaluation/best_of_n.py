"""Best-of-n reranking: of n sampled answers to a prompt, keep the one the reward model scores highest.

An inference-time baseline for the evaluation (Stiennon et al. 2020 and Nakano et al. 2021 compare RL with
best-of-n against the same reward model): it spends n generations and n reward-model passes per prompt instead
of training, so "aligned vs <sft>+best-of-<n>" in the report is what the trained policy buys over reranking
its own starting point. Gao et al. 2022 also use it to measure reward over-optimisation, which is why the
report keeps every candidate's score next to the chosen one.

Pure functions over texts and scores; the sampling and the scoring are in `rlaif/stages/evaluate.py`.

    from rlaif.evaluation.best_of_n import choose
    choose([["a", "b"], ["c", "d"]], [[0.1, 0.9], [0.5, 0.2]])  # [BestOfN(index=1, ...), BestOfN(index=0, ...)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field


class BestOfN(BaseModel):
    """One prompt's reranking: the candidates, their scores and which one was kept."""

    index: int = Field(description="Position of the chosen candidate: the first of the highest scores.")
    text: str = Field(description="The chosen candidate.")
    score: float = Field(description="Its reward-model score.")
    candidates: list[str] = Field(description="All n candidates, in sampling order.")
    scores: list[float] = Field(description="Their reward-model scores.")


def label(source_role: str, n: int) -> str:
    """The name the reranked model goes by in a report: 'sft+best-of-4'."""
    return f"{source_role}+best-of-{n}"


def best_index(scores: Sequence[float]) -> int:
    """argmax of the scores; a tie goes to the first candidate (sampling order), so reruns choose the same one."""
    if not scores:
        raise ValueError("best-of-n: no candidates to choose from")
    for position, value in enumerate(scores):
        if math.isnan(value):
            raise ValueError(f"best-of-n: candidate {position} has a NaN score")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def choose(candidates: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]) -> list[BestOfN]:
    """Per prompt, the candidate with the highest score; candidates[i] and scores[i] belong to prompt i."""
    if len(candidates) != len(scores):
        raise ValueError(f"best-of-n: {len(candidates)} prompts' candidates but {len(scores)} prompts' scores")
    out = []
    for prompt, (texts, values) in enumerate(zip(candidates, scores, strict=True)):
        if len(texts) != len(values):
            raise ValueError(f"best-of-n: prompt {prompt} has {len(texts)} candidates but {len(values)} scores")
        index = best_index(values)
        out.append(
            BestOfN(index=index, text=texts[index], score=values[index], candidates=list(texts), scores=list(values))
        )
    return out


def mean_best_and_mean_score(chosen: Sequence[BestOfN]) -> tuple[float, float]:
    """(mean score of the chosen candidates, mean score of all candidates): their difference is what reranking
    gains in reward-model units; the judge's win rates say whether the gain is real."""
    if not chosen:
        return 0.0, 0.0
    best = sum(c.score for c in chosen) / len(chosen)
    every = [s for c in chosen for s in c.scores]
    return best, sum(every) / len(every)


def distinct_fraction(chosen: Sequence[BestOfN]) -> float:
    """Mean share of distinct candidate texts per prompt: 1/n means sampling gave n copies, nothing to rerank."""
    if not chosen:
        return 0.0
    return sum(len({t.strip() for t in c.candidates}) / len(c.candidates) for c in chosen) / len(chosen)
