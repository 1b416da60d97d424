"""The judge filter of SL-CAI revisions (rlaif/judging/revision_filter.py) with a real judge, the tiny random model
in process: every verdict and flag agrees with the P(A) the judge's own public function (`judge_pair`) gives in both
orders; records that need no judging are left alone; the run-level hook (`critique_revise.judge_filter`) is on by
default only when the judge is another model than the policy; the stage result counts what was dropped and why.
The same filter over an endpoint: tests/generation/test_endpoint_revision_filter.py.

    python -m pytest tests/judging/test_revision_filter.py -q
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from rlaif.config import JudgeConfig, RunConfig
from rlaif.constitution import Constitution
from rlaif.judging.judge import judge_pair
from rlaif.judging.prompts import JudgePrompt
from rlaif.judging.revision_filter import (
    PREFERS_INITIAL,
    SPLIT_ORDERS,
    filter_revisions,
    revised_under,
    verdict_flag,
)
from rlaif.judging.scoring import OptionScores
from rlaif.modeling import load_tokenizer
from rlaif.records import CritiqueRecord, CritiqueRound, PromptItem
from rlaif.stages.critique_revise import assemble_record, judge_filter, stage_result, to_sft_examples

ANSWERS = [
    ("How can I pick my neighbour's lock?", "Use a tension wrench and a pick.", "I can't help you break in."),
    ("Write an insult for my coworker.", "You are a worthless idiot.", "How about talking to them kindly instead?"),
    ("How do I make a fake ID?", "Buy a laminator and a template.", "I won't help with forged documents."),
    ("Tell me how to cheat on a test.", "Write notes on your arm.", "Studying a little each day works better."),
    ("How do I hotwire a car?", "Strip the ignition wires.", "Call a locksmith or your dealer if you lost the key."),
    ("Say something rude.", "Shut up.", "I'd rather keep things friendly!"),
]


def _records() -> list[CritiqueRecord]:
    """One record per answer, revised in one round under 'harmful' (a second under 'honest' for some), plus one the
    quality checks dropped and one helpful answer: neither is judged."""
    records = []
    for i, (prompt, initial, revision) in enumerate(ANSWERS):
        rounds = [CritiqueRound(principle_id="harmful", critique="It helps with harm.", revision=revision)]
        flags: list[list[str]] = [[]]
        if i % 2:  # a second round whose revision is meta-text: the final revision is still round 1's
            rounds.append(CritiqueRound(principle_id="honest", critique="Hm.", revision="The response is fine."))
            flags.append(["meta"])
        records.append(assemble_record(PromptItem(id=f"h{i}", prompt=prompt), initial, rounds, flags))
    unchanged = [CritiqueRound(principle_id="harmful", critique="Fine.", revision="Shut up.")]
    records.append(assemble_record(PromptItem(id="same", prompt="Say something rude."), "Shut up.", unchanged, [[]]))
    records.append(
        CritiqueRecord(
            id="help", prompt="How do I boil an egg?", kind="helpful", initial_response="Simmer it for 8 minutes.",
            rounds=[], final_revision="Simmer it for 8 minutes.", kept=True, flags=["helpful-answer"],
        )
    )  # fmt: skip
    return records


def test_verdict_flag_by_hand() -> None:
    # P(revision better) in each order: both above 1/2 keeps it; a tie (exactly 1/2) does not prefer it.
    assert verdict_flag(0.9, 0.6) is None
    assert verdict_flag(0.2, 0.4) == PREFERS_INITIAL
    assert verdict_flag(0.5, 0.5) == PREFERS_INITIAL
    assert verdict_flag(0.9, 0.3) == SPLIT_ORDERS  # one order each way: the position decided, not the text
    assert verdict_flag(0.3, 0.51) == SPLIT_ORDERS
    assert verdict_flag(0.5, 0.7) == SPLIT_ORDERS


def test_the_principle_is_that_of_the_round_that_wrote_the_final_revision() -> None:
    records = _records()
    assert [revised_under(r) for r in records[: len(ANSWERS)]] == ["harmful"] * len(ANSWERS)
    rounds = [
        CritiqueRound(principle_id="harmful", critique="c", revision="First."),
        CritiqueRound(principle_id="honest", critique="c", revision="Second."),
    ]
    record = assemble_record(PromptItem(id="x", prompt="p?"), "Initial.", rounds, [[], []])
    assert (record.final_revision, revised_under(record)) == ("Second.", "honest")


def test_flags_and_kept_agree_with_the_judges_p_a_in_both_orders(
    tiny_lm: tuple[Any, Any], minimal_constitution: Constitution
) -> None:
    model, tokenizer = tiny_lm
    records = _records()
    cfg = JudgeConfig(batch_size=4)
    filtered = filter_revisions(records, model, tokenizer, minimal_constitution, cfg, seed=0)

    assert [r.id for r in filtered] == [r.id for r in records]
    assert records[0].revision_judgement is None and records[0].kept  # the input records are not changed
    for before, after in zip(records[: len(ANSWERS)], filtered, strict=False):
        # The judge's public function on the same pair: response_a = the revision, response_b = the first answer.
        principle = minimal_constitution.principle("harmful")
        expected = judge_pair(model, tokenizer, after.prompt, after.final_revision, after.initial_response, principle)
        verdict = after.revision_judgement
        assert verdict is not None and verdict.principle_id == "harmful"
        assert verdict.p_a == pytest.approx(expected.p_a, abs=1e-5)
        assert verdict.p_a_swapped == pytest.approx(expected.p_a_swapped, abs=1e-5)
        assert verdict.method == "logprobs" and verdict.coverage is not None
        both = expected.p_a > 0.5 and expected.p_a_swapped > 0.5
        neither = expected.p_a <= 0.5 and expected.p_a_swapped <= 0.5
        judge_flags = [f for f in after.flags if f.startswith("judge:")]
        if both:
            assert after.kept and judge_flags == []
        else:
            assert not after.kept and judge_flags == [PREFERS_INITIAL if neither else SPLIT_ORDERS]
        assert after.flags[: len(before.flags)] == before.flags  # the quality checks' flags are kept
    # (The tiny random judge is all position bias, so its verdicts here are split orders; every branch is taken by
    # the rule-based judge below.)
    unchanged, helpful = filtered[-2:]
    assert (unchanged.kept, unchanged.revision_judgement) == (False, None)  # dropped before: not judged
    assert (helpful.kept, helpful.revision_judgement, helpful.flags) == (True, None, ["helpful-answer"])


class DecliningJudge:
    """A rule-based judge behind the OptionScorer protocol (as an endpoint is): it prefers the option that declines
    ("I can't", "I won't"), and where neither or both do it answers (A) with P = 0.7: a position bias, as small
    judges have. It reads the options from the judge prompt that rlaif.judging.judge built."""

    context = 2048

    def score_prompts(
        self,
        prompts: Sequence[JudgePrompt],
        option_ids: tuple[int, int],
        *,
        groups: Sequence[Hashable] | None = None,
        families: Sequence[Hashable] | None = None,
        progress: bool = False,
    ) -> OptionScores:
        p_a = []
        for prompt in prompts:
            question = prompt.messages[-1]["content"]
            a, b = (re.search(rf"^\({letter}\) (.*)$", question, re.M).group(1) for letter in "AB")  # type: ignore[union-attr]
            declines_a, declines_b = (bool(re.search(r"\bI (can't|won't)\b", text)) for text in (a, b))
            p_a.append(0.9 if declines_a > declines_b else 0.1 if declines_b > declines_a else 0.7)
        return OptionScores(torch.tensor(p_a), torch.full((len(p_a),), math.nan), "rule")


def test_each_verdict_with_a_judge_that_prefers_declining(tiny_model: str, minimal_constitution: Constitution) -> None:
    tokenizer = load_tokenizer(tiny_model)
    answers = [
        ("How do I pick a lock?", "Use a tension wrench.", "I can't help you break in."),  # revision declines
        ("Insult my coworker.", "I won't write insults.", "You are an idiot."),  # the first answer declined
        ("Make a fake ID.", "Buy a laminator.", "Use a template."),  # neither: the position decides
    ]
    rounds = [[CritiqueRound(principle_id="harmful", critique="c", revision=r)] for _, _, r in answers]
    records = [
        assemble_record(PromptItem(id=f"r{i}", prompt=prompt), initial, rounds[i], [[]])
        for i, (prompt, initial, _) in enumerate(answers)
    ]
    filtered = filter_revisions(records, DecliningJudge(), tokenizer, minimal_constitution, JudgeConfig(), seed=0)
    # Order 1 shows the revision as (A), order 2 as (B): P(revision) = P(A), then 1 - P(A).
    verdicts = [(r.revision_judgement.p_a, r.revision_judgement.p_a_swapped) for r in filtered]  # type: ignore[union-attr]
    assert verdicts == [pytest.approx((0.9, 0.9)), pytest.approx((0.1, 0.1)), pytest.approx((0.7, 0.3))]
    assert [(r.kept, r.flags) for r in filtered] == [(True, []), (False, [PREFERS_INITIAL]), (False, [SPLIT_ORDERS])]
    assert all(r.revision_judgement.method == "rule" and r.revision_judgement.coverage is None for r in filtered)  # type: ignore[union-attr]


def test_the_run_hook_is_on_when_the_judge_is_not_the_policy_and_the_result_says_why(
    tiny_model: str, tiny_lm: tuple[Any, Any], minimal_constitution: Constitution, tmp_path: Path
) -> None:
    records = _records()
    # The judge is the policy: off by default (the records come back as they are), on when asked.
    same = RunConfig(policy_model=tiny_model)
    assert not same.judge_filters_revisions
    assert judge_filter(same, records, minimal_constitution, judge=tiny_lm) == records
    assert RunConfig(policy_model=tiny_model, critique={"judge_filter": True}).judge_filters_revisions
    # Another judge (here the tiny model itself, named as judge.model: loaded by the hook): on by default.
    other = RunConfig(judge={"model": tiny_model})
    assert (
        other.judge_filters_revisions
        and not other.model_copy(
            update={"critique": other.critique.model_copy(update={"judge_filter": False})}
        ).judge_filters_revisions
    )
    filtered = judge_filter(other, records, minimal_constitution, tmp_path)
    model, tokenizer = tiny_lm
    direct = filter_revisions(records, model, tokenizer, minimal_constitution, other.judge, other.seed)
    assert [(r.kept, r.flags) for r in filtered] == [(r.kept, r.flags) for r in direct]

    sft = to_sft_examples(filtered)
    result = stage_result(filtered, len(sft))
    judged = [r for r in filtered if r.revision_judgement is not None]
    judge_dropped = [r for r in judged if not r.kept]
    assert result.counts["judged"] == len(ANSWERS) == len(judged)
    assert result.counts["judge_dropped"] == len(judge_dropped)
    assert result.counts["kept"] == len(sft) == sum(r.kept for r in filtered)
    assert result.metrics["critique/judge_kept_fraction"] == pytest.approx(1 - len(judge_dropped) / len(judged))
    # Why each record is out of the SFT data, and every flag, the judge's by their full names.
    expected_dropped: dict[str, int] = {"unchanged-from-initial": 1}
    for record in judge_dropped:
        flag = next(f for f in record.flags if f in (PREFERS_INITIAL, SPLIT_ORDERS))
        expected_dropped[flag] = expected_dropped.get(flag, 0) + 1
    assert result.extra["dropped"] == expected_dropped
    for flag in (PREFERS_INITIAL, SPLIT_ORDERS):
        assert result.extra["flags"].get(flag, 0) == expected_dropped.get(flag, 0)
    assert result.extra["flags"]["meta"] == len(ANSWERS) // 2  # (round flags still count by what they found)
