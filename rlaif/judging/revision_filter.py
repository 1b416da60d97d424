"""Judge-filtered revisions: a revision joins the SFT data only when the judge prefers it to the first answer in
both orders, under the principle it was revised for (issue 12 item 5; critique.judge_filter).

Why: Bai et al. 2022 keep every revision because their 52B feedback model rarely makes an answer worse; a small
feedback model often does (a refusal revised into nonsense, a helpful answer into a lecture), and SFT on those
makes the policy worse on both axes. A judge stronger than the feedback model can tell. The policy judging its own
revisions mostly reports its position bias, so the filter is on by default only when the judge is another model
(`RunConfig.judge_filters_revisions`).

Every kept record of a harmful prompt becomes one judge request, response_a = the final revision and
response_b = the first answer, judged by the code of stage 4 (`rlaif.judging.judge.judge_requests`: both orders,
fitting to the context, few-shot, chain of thought; a loaded model or an OptionScorer such as
`rlaif.judging.endpoint.EndpointScorer`). The record keeps the verdict (`revision_judgement`: P(revision better)
in each order) and, unless both orders prefer the revision (P > 1/2; a tie does not prefer it), is dropped with

- `judge:prefers-initial`: neither order prefers the revision;
- `judge:split-orders`: one order does and the other does not: the preference follows the position, not the text.

    from rlaif.judging.revision_filter import filter_revisions
    records = filter_revisions(records, judge, tokenizer, constitution, JudgeConfig(), seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rlaif.config import JudgeConfig
from rlaif.constitution import Constitution
from rlaif.generation.common import derive_seed
from rlaif.judging.judge import JudgeRequest, judge_options, judge_requests
from rlaif.judging.scoring import OptionScorer, PrefixCache
from rlaif.records import CritiqueRecord

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlaif.generation import Generator

PREFERS_INITIAL = "judge:prefers-initial"
SPLIT_ORDERS = "judge:split-orders"
# The judge saw the texts cut to fit its context (rlaif/truncation.py); the suffix is the critique stage's
# TRUNCATED flag, so the stage result lists the record among its long items.
JUDGE_TRUNCATED = "judge:truncated-to-fit"


def needs_judging(record: CritiqueRecord) -> bool:
    """A revision still headed for SFT: a kept record of a harmful prompt (helpful answers are not revisions, and a
    record the quality checks dropped costs the judge nothing)."""
    return record.kind == "harmful" and record.kept and bool(record.rounds)


def revised_under(record: CritiqueRecord) -> str:
    """The principle the final revision was written for: that of the last round whose revision it is (a later
    round whose revision was blocked, e.g. as meta-text, did not write it); the last round's otherwise."""
    for round_ in reversed(record.rounds):
        if round_.revision == record.final_revision:
            return round_.principle_id
    return record.rounds[-1].principle_id


def verdict_flag(p_revision: float, p_revision_swapped: float) -> str | None:
    """None when both orders prefer the revision (P > 1/2), else the flag naming why it is dropped."""
    preferring = (p_revision > 0.5) + (p_revision_swapped > 0.5)
    if preferring == 2:
        return None
    return PREFERS_INITIAL if preferring == 0 else SPLIT_ORDERS


def filter_revisions(
    records: Sequence[CritiqueRecord],
    model: PreTrainedModel | OptionScorer,
    tokenizer: PreTrainedTokenizerBase,
    constitution: Constitution,
    cfg: JudgeConfig,
    seed: int,
    *,
    generator: Generator | None = None,
    progress: bool = False,
) -> list[CritiqueRecord]:
    """Copies of `records`, in order, each judged revision with its `revision_judgement` and, when the judge does
    not prefer it in both orders, `kept=False` and a flag (see the module docstring). Records that need no judging
    (`needs_judging`) come back unchanged. `model` is the judge: a loaded causal LM, or an OptionScorer (an
    endpoint) with its tokenizer; `generator` writes the chain of thought when `cfg.chain_of_thought`.

    A principle id that the constitution does not have raises KeyError naming it (the records were made under
    another constitution).
    """
    out = [record.model_copy(deep=True) for record in records]
    todo = [record for record in out if needs_judging(record)]
    if not todo:
        return out
    requests = [
        JudgeRequest(r.id, r.prompt, r.final_revision, r.initial_response, constitution.principle(revised_under(r)))
        for r in todo
    ]
    verdicts = judge_requests(
        model,
        tokenizer,
        requests,
        **judge_options(cfg, constitution),
        generator=generator,
        # (only chain of thought samples; its default sampling is greedy, so a record's verdict does not depend on
        # which records share its shard)
        seed=derive_seed(seed, "revision-filter"),
        prefix_cache=PrefixCache(max_entries=len(constitution.principles) + 1),
        progress=progress,
    )
    for record, verdict in zip(todo, verdicts, strict=True):
        record.revision_judgement = verdict  # (its principle_id is the principle the revision was written for)
        if verdict.truncated:
            record.flags.append(JUDGE_TRUNCATED)
        flag = verdict_flag(verdict.p_a, verdict.p_a_swapped)
        if flag is not None:
            record.kept = False
            record.flags.append(flag)
    return out
