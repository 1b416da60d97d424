"""Pydantic schemas of the JSONL records that flow between stages (one line = one record).

Every record has an `id` that is stable across redeliveries, so item writes can be keyed (run, stage, id).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptItem(_Record):
    """One prompt of a prompt set."""

    id: str = Field(description="Stable id (given, or derived from the prompt's hash).")
    prompt: str = Field(description="The user's message.")


class CritiqueRound(_Record):
    principle_id: str
    critique: str
    revision: str


class CritiqueRecord(_Record):
    """Stage 1 output: the whole SL-CAI trajectory of one prompt."""

    id: str
    prompt: str
    initial_response: str
    rounds: list[CritiqueRound]
    final_revision: str
    kept: bool = Field(description="False when a quality check dropped the final revision from the SFT data.")
    flags: list[str] = Field(
        default_factory=list, description="Quality-check findings (empty, unchanged, meta-text...)."
    )


class SFTExample(_Record):
    """Stage 2 input: (prompt, target response)."""

    id: str
    prompt: str
    response: str


class ResponseSet(_Record):
    """Stage 3 output: K sampled responses to one prompt."""

    id: str
    prompt: str
    responses: list[str]
    finished: list[bool] = Field(description="Whether each response ended with EOS (not cut at the length limit).")


class Comparison(_Record):
    """A pair to judge: id is '<prompt id>:<i>:<j>' for responses i < j of the prompt."""

    id: str
    prompt: str
    response_a: str
    response_b: str


class PrincipleJudgement(_Record):
    """The judge's verdict under one principle, read in both orders."""

    principle_id: str
    p_a: float = Field(description="P(A) with response_a shown as option (A).")
    p_a_swapped: float = Field(
        description="P(response_a better) with response_a shown as option (B), i.e. 1 - P(A) of the swapped prompt."
    )
    p_a_mean: float = Field(description="Mean of the two orders: the position-debiased soft label.")
    flip: bool = Field(description="The two orders disagree about which response is better.")


class LabelRecord(_Record):
    """Stage 4 output: a soft AI preference label, P(response_a better than response_b)."""

    id: str
    prompt: str
    response_a: str
    response_b: str
    p_a: float = Field(ge=0.0, le=1.0, description="Soft label: mean of the principle judgements' p_a_mean.")
    judgements: list[PrincipleJudgement]
