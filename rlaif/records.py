"""Pydantic schemas of the records that flow between stages and modules (a JSONL line = one record).

One type per concept: a human-labelled pair is a HumanPair wherever it is read (the judge audit, the reward model's
human accuracy, the evaluation), and a judge's verdict on one pair under one principle is a PairJudgement, in
flight (`judge_pair`) and stored (inside a LabelRecord). Every stored record has an `id` that is stable across
redeliveries, so item writes can be keyed (run, stage, id).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


Axis = Literal["harmless", "helpful"]  # what a win rate measures (rlaif/evaluation)


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
    revision_judgement: PairJudgement | None = Field(
        default=None,
        description="The judge filter's verdict (critique.judge_filter): response_a = the final revision, response_b = "
        "the first answer, under the principle the revision was written for; p_a and p_a_swapped are P(revision "
        "better) in each order. null: not judged (filter off, a helpful prompt, or already dropped).",
    )


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


class PairJudgement(_Record):
    """The judge's verdict on one pair under one principle, read in both orders (rlaif/judging/labels.py does the
    arithmetic; all probabilities are P(response_a is better), normalised over the two options)."""

    principle_id: str = Field(description="The principle the pair was judged under.")
    p_a: float = Field(description="P(A) with response_a shown as option (A).")
    p_a_swapped: float = Field(
        description="P(response_a better) with response_a shown as option (B), i.e. 1 - P(A) of the swapped prompt."
    )
    p_a_mean: float = Field(description="Mean of the two orders: the position-debiased soft label.")
    flip: bool = Field(
        description="The two orders put response_a on opposite sides of 1/2 (a pure position preference)."
    )
    truncated: bool = Field(
        default=False,
        description="The judge saw the prompt or responses cut to fit its context (rlaif/truncation.py); false in a "
        "label written before it was recorded per judgement (the label's own `truncated` has it).",
    )
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
    judgements: list[PairJudgement]
    truncated: bool = Field(
        default=False, description="The judge saw the prompt or responses cut to fit its context (rlaif/truncation.py)."
    )
    coverage: float | None = Field(
        default=None, description="Mean coverage P(A) + P(B) of the judgements (null where unknown)."
    )
    method: str | None = Field(default=None, description="How the judgements' options were read (see PairJudgement).")


class HumanPair(_Record):
    """A human-labelled preference pair: people preferred `chosen`. From a data file (rlaif/data/
    preference_pairs.<split>.jsonl, Anthropic HH-RLHF; rlaif.evaluation.datasets.load_human_pairs) for the judge
    audit and the reward model's human accuracy, or from a preference set (POST /v1/preference-sets), pinned in
    <run>/inputs/human_pairs.jsonl, which the reward model trains on as hard labels (reward_model.human_mix)."""

    id: str = Field(
        description="Stable id: given; else the line number in a data file, or the hash of the three texts in a "
        "preference set (rlaif.preference_sets.pair_id)."
    )
    prompt: str = Field(min_length=1, description="The human's message.")
    chosen: str = Field(description="The preferred response.")
    rejected: str = Field(description="The other response.")
    source: str = Field(default="", description="Subset name (e.g. harmless-base / helpful-base) for the breakdown.")


# Two outcomes of judging, kept apart because they answer different questions: an AuditOutcome compares the judge
# with a human label (is the judge right?), a WinOutcome compares two models' answers (which model is better?).
# Their probabilities differ too: one is P(the human's choice is better), the other P(the model beats the baseline).


class AuditOutcome(_Record):
    """One audited human pair (rlaif/judging/audit.py): the judge's label turned round to P(chosen better)."""

    id: str = Field(description="The HumanPair's id.")
    source: str = Field(description="The HumanPair's subset name.")
    chosen_is_a: bool = Field(description="The chosen response was shown as response_a (a seeded coin per pair).")
    p_chosen: float = Field(description="P(chosen better): both orders, principle ensemble.")
    p_chosen_single_order: float = Field(description="The same from the first order alone, mean over principles.")


class WinOutcome(_Record):
    """The judge's verdict on one evaluation prompt (rlaif/evaluation/compare.py): P(model's answer beats the
    baseline's) on one axis; the win rates of the report count these."""

    prompt_id: str
    axis: Axis
    model: str = Field(description="Role of the model (aligned, sft).")
    baseline: str = Field(description="Role of the baseline (base, sft).")
    p: float = Field(description="P(model's answer is better): principle ensemble of both-order judgements.")
    flips: list[bool] = Field(default_factory=list, description="Per principle: the two orders disagreed.")
    principles: list[str] = Field(default_factory=list, description="Principles that judged the pair.")
    identical: bool = Field(default=False, description="Both answers were the same text (a tie, not judged).")
    truncated: bool = Field(default=False, description="The judge saw the pair cut to fit its context.")


CritiqueRecord.model_rebuild()  # (its revision_judgement names PairJudgement, defined after it)
