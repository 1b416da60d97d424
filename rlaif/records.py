"""Pydantic schemas of the JSONL records that flow between stages (one line = one record).

Every record has an `id` that is stable across redeliveries, so item writes can be keyed (run, stage, id).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptItem(_Record):
    """One prompt of a prompt set."""

    id: str = Field(description="Stable id (given, or derived from the prompt's hash).")
    prompt: str = Field(description="The user's message.")
    kind: Literal["harmful", "helpful"] = Field(
        default="harmful",
        description="harmful (red-team): critiqued and revised in stage 1; helpful: answered plainly by the feedback "
        "model and mixed into SFT to keep the policy helpful (Bai et al. 2022 sec. 3.1). Pairs, judge and RL see both.",
    )


class CritiqueRound(_Record):
    principle_id: str
    critique: str
    revision: str


class CritiqueRecord(_Record):
    """Stage 1 output: the whole SL-CAI trajectory of one prompt."""

    id: str
    prompt: str
    kind: Literal["harmful", "helpful"] = Field(
        default="harmful", description="The prompt's kind: helpful prompts are answered, not critiqued (no rounds)."
    )
    initial_response: str
    rounds: list[CritiqueRound]
    final_revision: str
    kept: bool = Field(description="False when a quality check dropped the final revision from the SFT data.")
    flags: list[str] = Field(
        default_factory=list, description="Quality-check findings (empty, unchanged, meta-text...)."
    )
    revision_judgement: PrincipleJudgement | None = Field(
        default=None,
        description="The judge filter's verdict (critique.judge_filter): response_a = the final revision, response_b = "
        "the first answer, under the principle the revision was written for; p_a and p_a_swapped are P(revision "
        "better) in each order. null: not judged (filter off, a helpful prompt, or already dropped).",
    )


class PreferenceItem(_Record):
    """One human-labelled comparison of a preference set (POST /v1/preference-sets): `chosen` beats `rejected`.

    A run naming the set pins its items in <run>/inputs/human_pairs.jsonl; the reward model trains on them as hard
    labels (p = 1 for chosen) beside the AI soft labels (reward_model.human_mix)."""

    id: str = Field(description="Stable id (given, or derived from the hash of prompt, chosen and rejected).")
    prompt: str = Field(description="The user's message.")
    chosen: str = Field(description="The preferred response.")
    rejected: str = Field(description="The dispreferred response.")


class SFTExample(_Record):
    """Stage 2 input: (prompt, target response)."""

    id: str
    prompt: str
    response: str
    kind: Literal["harmful", "helpful"] = Field(
        default="harmful",
        description="harmful: a revision; helpful: a plain helpful answer mixed in (sft.helpful_mix).",
    )


class ResponseSet(_Record):
    """Stage 3 output: K sampled responses to one prompt."""

    id: str
    prompt: str
    responses: list[str]
    finished: list[bool] = Field(description="Whether each response ended with EOS (not cut at the length limit).")
    prompt_truncated: bool = Field(
        default=False, description="The prompt was cut to fit the context (rlaif/truncation.py)."
    )


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
    coverage: float | None = Field(
        default=None,
        description="P(A) + P(B) over the judge's full vocabulary, mean of the two orders: how much it answered in "
        "format (null: unknown, e.g. hard labels, or a label written before it was recorded).",
    )
    method: str | None = Field(
        default=None,
        description="How the options were read: logprobs (in process), logprob_token_ids or top_logprobs (an "
        "endpoint's log-probs), hard (an endpoint without log-probs: 0, 1/2 or 1 per order); null: not recorded.",
    )


class LabelRecord(_Record):
    """Stage 4 output: a soft AI preference label, P(response_a better than response_b)."""

    id: str
    prompt: str
    response_a: str
    response_b: str
    p_a: float = Field(ge=0.0, le=1.0, description="Soft label: mean of the principle judgements' p_a_mean.")
    judgements: list[PrincipleJudgement]
    truncated: bool = Field(
        default=False, description="The judge saw the prompt or responses cut to fit its context (rlaif/truncation.py)."
    )
    coverage: float | None = Field(
        default=None, description="Mean coverage P(A) + P(B) of the judgements (null where unknown)."
    )
    method: str | None = Field(
        default=None, description="How the judgements' options were read (see PrincipleJudgement)."
    )


CritiqueRecord.model_rebuild()  # (its revision_judgement names PrincipleJudgement, defined after it)
