"""Long items are cut to fit the context by one documented rule (rlaif/truncation.py), in every stage.

Real tokenizer and real tiny model (context 2048); the judge limit is lowered with judge.max_length where a test
needs a short one.
"""

from __future__ import annotations

from typing import Any

import pytest

from rlaif.config import CritiqueConfig, JudgeConfig, PairsConfig, SamplingConfig
from rlaif.constitution import Constitution, load_constitution
from rlaif.judging.judge import JudgeRequest, build_sequences, fit_requests, judge_requests
from rlaif.records import Comparison, PromptItem
from rlaif.settings import settings
from rlaif.truncation import MARKER, ContextOverflow, LongItems, cut_middle, fit_conversation, water_fill


@pytest.fixture(scope="module")
def lm(tiny_model: str) -> tuple[Any, Any]:
    from rlaif.modeling import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model, dtype="float32"), load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def minimal() -> Constitution:
    return load_constitution(settings.constitutions_dir / "minimal.yaml")


@pytest.fixture(scope="module")
def generator(tiny_model: str) -> Any:
    from rlaif.generation.hf import HFGenerator

    return HFGenerator(tiny_model, dtype="float32", batch_size=4)


def test_water_fill_cuts_the_longest_first() -> None:
    # Remove 70 from [100, 10, 60]: the level L with (100 - L) + (60 - L) = 70 is 45; the short text is untouched.
    assert water_fill([100, 10, 60], 70) == [45, 10, 45]
    # Remove 30 from [100, 10, 60]: only the longest is above the level 70.
    assert water_fill([100, 10, 60], 30) == [70, 10, 60]
    # Never below the floor: at most (100 - 8) + (60 - 8) = 144 tokens can go.
    assert water_fill([100, 10, 60], 1000) == [8, 8, 8]
    assert sum([100, 10, 60]) - sum(water_fill([100, 10, 60], 55)) == 55


def test_cut_middle_keeps_the_beginning_and_the_end(lm: tuple[Any, Any]) -> None:
    _, tokenizer = lm
    text = "START " + "filler " * 300 + "THE END"
    cut = cut_middle(tokenizer, text, 20)
    assert cut.startswith("START") and cut.endswith("THE END") and MARKER in cut
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 20 + 8
    assert cut_middle(tokenizer, "short", 20) == "short"


def test_a_conversation_is_cut_but_its_last_instruction_is_whole(lm: tuple[Any, Any]) -> None:
    _, tokenizer = lm
    instruction = "Rewrite the response to remove anything harmful."
    conversation = [
        {"role": "user", "content": "Q " + "long question " * 900},
        {"role": "assistant", "content": "A " + "long answer " * 900 + "FINAL WORDS"},
        {"role": "user", "content": instruction},
    ]
    fitted, cut = fit_conversation(tokenizer, conversation, max_new_tokens=64, context=512, what="item x")
    assert cut
    assert fitted[-1]["content"] == instruction
    assert fitted[1]["content"].endswith("FINAL WORDS") and MARKER in fitted[1]["content"]
    rendered = tokenizer.apply_chat_template(fitted, add_generation_prompt=True, tokenize=False)
    assert len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) + 64 <= 512
    # A short conversation is returned as it was.
    assert fit_conversation(tokenizer, conversation[-1:], 64, 512, "item y") == (conversation[-1:], False)
    # When max_new_tokens alone fills the context, nothing can fit: the error says which limits to change.
    with pytest.raises(ContextOverflow, match=r"item z: .*never cut.*max_new_tokens"):
        fit_conversation(tokenizer, conversation, max_new_tokens=510, context=512, what="item z")


def test_generation_cuts_a_too_long_prompt_only_when_asked(generator: Any) -> None:
    too_long = [{"role": "user", "content": "word " * 3000}]  # ~3000 tokens, the context is 2048
    short = [{"role": "user", "content": "Hi"}]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="longer than the model context"):
        generator.generate([short, too_long], 1, sampling, seed=0, progress=False)
    out = generator.generate([short, too_long], 2, sampling, seed=0, progress=False, fit_context=True)
    assert [c.prompt_truncated for c in out[0]] == [False, False]
    assert [c.prompt_truncated for c in out[1]] == [True, True]
    assert len(out[1][0].token_ids) >= 1


def test_judge_cuts_both_orders_the_same_way_and_says_so(lm: tuple[Any, Any], minimal: Constitution) -> None:
    model, tokenizer = lm
    principle = minimal.principle("harmful")
    long = JudgeRequest("long-7", "Why?", "word " * 400 + "I refuse.", "b", principle)
    short = JudgeRequest("short-1", "Why?", "a", "b", principle)
    fitted, cut = fit_requests(tokenizer, [short, long], 256)
    assert cut == [False, True]
    assert fitted[0] == short and fitted[1].response_a.endswith("I refuse.")
    assert fitted[1].response_b == "b" and fitted[1].prompt == "Why?"  # short texts are left alone
    assert all(len(ids) <= 256 for ids in build_sequences(tokenizer, fitted, limit=256))
    verdicts = judge_requests(model, tokenizer, [short, long], max_length=256)
    assert [v.truncated for v in verdicts] == [False, True]
    assert all(0.0 <= v.p_a_mean <= 1.0 for v in verdicts)


def test_judge_stage_labels_long_pairs_instead_of_failing(lm: tuple[Any, Any], minimal: Constitution) -> None:
    from rlaif.judging.judge import judge_comparisons
    from rlaif.stages.judge import stage_result

    model, tokenizer = lm
    comparisons = [
        Comparison(id="p1:0:1", prompt="Hi?", response_a="Hello.", response_b="Hey."),
        Comparison(id="p2:0:1", prompt="Tell me " * 300, response_a="yes " * 500, response_b="no " * 500),
    ]
    cfg = JudgeConfig(max_length=384, dtype="float32", batch_size=4)
    labels = list(judge_comparisons(comparisons, model, tokenizer, minimal, None, cfg, seed=0, progress=False))
    assert [label.truncated for label in labels] == [False, True]
    result = stage_result("judge", labels, len(comparisons))
    assert result.counts["truncated"] == 1
    assert LongItems.model_validate(result.extra["long_items"]).truncated_ids == ["p2:0:1"]


def test_judge_max_length_defaults_to_the_judge_models_context(lm: tuple[Any, Any]) -> None:
    from rlaif.judging.judge import context_limit

    model, _ = lm
    assert JudgeConfig().max_length is None
    assert context_limit(model) == model.config.max_position_embeddings == 2048
    assert context_limit(model, 512) == 512


def test_critique_and_pairs_flag_long_prompts(generator: Any, minimal: Constitution) -> None:
    from rlaif.stages.critique_revise import critique_revise
    from rlaif.stages.critique_revise import stage_result as critique_result
    from rlaif.stages.sample_pairs import sample_responses
    from rlaif.stages.sample_pairs import stage_result as pairs_result

    items = [PromptItem(id="short", prompt="How do I boil an egg?"), PromptItem(id="long", prompt="why " * 2500)]
    cfg = CritiqueConfig(rounds=1, few_shot=0, batch_size=2, sampling=SamplingConfig(max_new_tokens=4))
    records = list(critique_revise(items, minimal, None, cfg, generator, seed=0, progress=False))
    assert [r.id for r in records] == ["short", "long"]
    assert not any(f.endswith("truncated-to-fit") for f in records[0].flags)
    assert "answer:truncated-to-fit" in records[1].flags
    result = critique_result(records, sum(r.kept for r in records))
    assert result.counts["truncated"] == 1 and result.extra["long_items"]["truncated_ids"] == ["long"]

    pairs_cfg = PairsConfig(responses_per_prompt=2, sampling=SamplingConfig(max_new_tokens=4))
    response_sets = list(sample_responses(items, pairs_cfg, generator, seed=0))
    assert [r.prompt_truncated for r in response_sets] == [False, True]
    summary = pairs_result("pairs", "tiny", response_sets, [])
    assert summary.counts["truncated"] == 1
