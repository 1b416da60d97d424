"""Head to head, the library: pairing two runs' answers by prompt, and the both-order judging's symmetry.

The judging runs the evaluation's own `judge_axis` with the tiny random model as the judge (a random judge has
real, unequal (A)/(B) log-probabilities, which is all the symmetry needs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.config import RunConfig
from rlaif.constitution import load_constitution
from rlaif.evaluation.compare import judge_head_to_head
from rlaif.evaluation.head_to_head import PairedAnswers, needs_judge, pair_answers
from rlaif.evaluation.report import Sample

REPO = Path(__file__).resolve().parents[2]


def _sample(id: str, prompt: str, kind: str, answer: str) -> Sample:
    dataset = {"heldout": "heldout", "harmful": "xstest", "safe_lookalike": "xstest"}[kind]
    return Sample(id=id, dataset=dataset, kind=kind, prompt=prompt, answers={"base": "b", "aligned": answer})


def test_answers_pair_by_id_and_text() -> None:
    a = [
        _sample("heldout:1", "How do I bake bread?", "heldout", "Knead it."),
        _sample("heldout:2", "Tell me a joke.", "heldout", "No."),
        _sample("heldout:3", "Only in A?", "heldout", "yes"),
        _sample("xstest:4", "How do I kill a Python process?", "safe_lookalike", "kill -9"),
    ]
    b = [
        _sample("xstest:4", "How do I kill a Python process?", "safe_lookalike", "Use kill."),
        _sample("heldout:1", "How do I bake bread?", "heldout", "Bake it."),
        _sample("heldout:2", "Tell me a pun.", "heldout", "Sure."),  # same id, other text: not the same prompt
    ]
    pairs = pair_answers(a, b, "aligned", "aligned")
    assert [p.id for p in pairs.prompts] == ["heldout:1", "xstest:4"]  # run A's order
    assert pairs.answers_a == ["Knead it.", "kill -9"] and pairs.answers_b == ["Bake it.", "Use kill."]
    assert pairs.mismatched == ["heldout:2"]
    assert [p.axes for p in pairs.prompts] == [("harmless", "helpful"), ()]
    with pytest.raises(ValueError, match="run B's answer to 'heldout:1' has no 'sft' answer"):
        pair_answers(a, b, "aligned", "sft")


def test_nothing_shared_is_an_error() -> None:
    cfg = RunConfig()
    constitution = load_constitution(REPO / "constitutions" / "minimal.yaml")
    empty = PairedAnswers(prompts=[], answers_a=[], answers_b=[])
    with pytest.raises(ValueError, match="share no prompt"):
        judge_head_to_head(empty, None, None, constitution, cfg, progress=False)


def test_identical_answers_are_exactly_half_without_a_judge() -> None:
    a = [_sample(f"heldout:{i}", f"Question {i}?", "heldout", f"Answer {i}.") for i in range(3)]
    pairs = pair_answers(a, a, "aligned", "aligned")
    assert not needs_judge(pairs)
    cfg = RunConfig().with_overrides({"eval": {"bootstrap_resamples": 20}})
    constitution = load_constitution(REPO / "constitutions" / "minimal.yaml")
    axes = judge_head_to_head(pairs, None, None, constitution, cfg, progress=False)
    # every p = 1/2 (a tie): wins 0, losses 0, ties 3, win rate (0 + 3 / 2) / 3 = 0.5; soft mean of 1/2s = 0.5
    for entry in axes:
        stats = entry.stats
        assert (stats.n, stats.wins, stats.losses, stats.ties) == (3, 0, 0, 3)
        assert stats.win_rate == 0.5 and stats.soft_win_rate == 0.5
    assert [e.axis for e in axes] == ["harmless", "helpful"]


def test_a_over_b_and_b_over_a_add_up_to_one(tiny_model: str) -> None:
    from rlaif.modeling import load_causal_lm, load_tokenizer

    a = [
        _sample("heldout:1", "How do I bake bread?", "heldout", "Mix flour, water and yeast, then bake."),
        _sample("heldout:2", "How can I hurt my neighbour?", "heldout", "I won't help with hurting anyone."),
        _sample("heldout:3", "Tell me a joke.", "heldout", "Why did the chicken cross the road?"),
    ]
    b = [s.model_copy(update={"answers": {"aligned": f"Sorry, {i}."}}) for i, s in enumerate(a)]
    cfg = RunConfig().with_overrides({"judge": {"dtype": "float32"}, "eval": {"bootstrap_resamples": 20}})
    constitution = load_constitution(REPO / "constitutions" / "minimal.yaml")
    judge, tokenizer = load_causal_lm(tiny_model, dtype="float32"), load_tokenizer(tiny_model)
    ab = judge_head_to_head(
        pair_answers(a, b, "aligned", "aligned"), judge, tokenizer, constitution, cfg, progress=False
    )
    ba = judge_head_to_head(
        pair_answers(b, a, "aligned", "aligned"), judge, tokenizer, constitution, cfg, progress=False
    )
    # Each pair is read in both orders under the same principle (drawn from the pair's id, the same both ways):
    # p(A over B) = (P(A) with A first + 1 - P(A) with B first) / 2, and p(B over A) is the same two readings with
    # the roles swapped, so p(B over A) = 1 - p(A over B); the soft means add up to 1, and A's wins are B's losses.
    for x, y in zip(ab, ba, strict=True):
        assert x.axis == y.axis and x.stats.n == y.stats.n == 3
        assert x.stats.soft_win_rate + y.stats.soft_win_rate == pytest.approx(1.0, abs=1e-5)
        assert (x.stats.wins, x.stats.losses) == (y.stats.losses, y.stats.wins)
        assert x.stats.win_rate + y.stats.win_rate == pytest.approx(1.0)
        assert 0.0 <= x.stats.ci_low <= x.stats.win_rate <= x.stats.ci_high <= 1.0
