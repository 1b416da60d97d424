"""Judge prompt construction: the options in the right order, the answer position is the last token."""

from __future__ import annotations

from typing import Any

import pytest

from rlaif.constitution import Constitution
from rlaif.judging.judge import JudgeRequest, build_sequences
from rlaif.judging.prompts import (
    ANSWER_PREFIX,
    COT_ANSWER_PREFIX,
    JudgeInputError,
    assistant_prefill,
    judge_messages,
    option_token_ids,
    trim_reasoning,
)


def test_options_in_order_and_answer_position_last(
    tiny_lm: tuple[Any, Any], minimal_constitution: Constitution
) -> None:
    _, tokenizer = tiny_lm
    principle = minimal_constitution.principle("harmful")
    request = JudgeRequest("c1", "How do I open a locked door?", "Call a locksmith.", "Kick it in.", principle)
    original, swapped = build_sequences(tokenizer, [request])
    text = tokenizer.decode(original)
    # Order 1: response_a is option (A), placed before (B); order 2 swaps them.
    assert text.index("(A) Call a locksmith.") < text.index("(B) Kick it in.")
    swapped_text = tokenizer.decode(swapped)
    assert swapped_text.index("(A) Kick it in.") < swapped_text.index("(B) Call a locksmith.")
    # The question comes before the options, the conversation before the question.
    assert text.index("Human: How do I open a locked door?") < text.index(principle.comparison) < text.index("(A) ")
    # The assistant turn is open and pre-filled: the prompt ends with "The answer is: (".
    assert text.endswith("<|im_start|>assistant\n" + ANSWER_PREFIX)
    # The answer position is the last token: appending the letter adds exactly the option token after it.
    a_id, b_id = option_token_ids(tokenizer)
    assert list(tokenizer(text + "A", add_special_tokens=False)["input_ids"]) == [*original, a_id]
    assert list(tokenizer(text + "B", add_special_tokens=False)["input_ids"]) == [*original, b_id]


def test_option_tokens_are_the_letters(tiny_lm: tuple[Any, Any]) -> None:
    _, tokenizer = tiny_lm
    a_id, b_id = option_token_ids(tokenizer)
    assert tokenizer.decode([a_id]) == "A"
    assert tokenizer.decode([b_id]) == "B"
    # The same letters follow the chain-of-thought prefix "So the answer is: (".
    assert option_token_ids(tokenizer, COT_ANSWER_PREFIX) == (a_id, b_id)


def test_option_tokens_refuse_a_prefix_that_merges_with_the_letter(tiny_lm: tuple[Any, Any]) -> None:
    _, tokenizer = tiny_lm
    # After "The answer is:" (no parenthesis) the letter is tokenised as " A" merged with the space, not as "A"
    # following the prefix's own last token: the option can't be read from the prefix's last position.
    assert tokenizer("The answer is: A", add_special_tokens=False)["input_ids"][-1] != option_token_ids(tokenizer)[0]
    with pytest.raises(JudgeInputError, match="one separate token"):
        option_token_ids(tokenizer, "The answer is: ")


def test_few_shot_examples_alternate_the_better_side(minimal_constitution: Constitution) -> None:
    principle = minimal_constitution.principle("helpful")
    example = minimal_constitution.comparison_examples[0]
    messages = judge_messages("Q?", "first", "second", principle, [example, example])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    # Example 0: better at (B); example 1: better at (A).
    assert f"(B) {example.better}" in messages[0]["content"] and messages[1]["content"] == "The answer is: (B)"
    assert f"(A) {example.better}" in messages[2]["content"] and messages[3]["content"] == "The answer is: (A)"
    assert messages[-1]["content"].endswith("Reply with (A) or (B).")


def test_chain_of_thought_prefill_cuts_a_stated_answer() -> None:
    reasoning = "Response B refuses to help with a crime. So the answer is (B) because it is safer."
    assert trim_reasoning(reasoning) == "Response B refuses to help with a crime."
    assert assistant_prefill(reasoning) == "Response B refuses to help with a crime.\nSo the answer is: ("
    assert assistant_prefill("The answer is (A).") == "So the answer is: ("
    assert assistant_prefill(None) == ANSWER_PREFIX


def test_errors_name_the_comparison(tiny_lm: tuple[Any, Any], minimal_constitution: Constitution) -> None:
    _, tokenizer = tiny_lm
    principle = minimal_constitution.principle("harmful")
    with pytest.raises(JudgeInputError, match="'empty-1': empty prompt"):
        build_sequences(tokenizer, [JudgeRequest("empty-1", "  ", "a", "b", principle)])
    long = JudgeRequest("long-7", "Why?", "word " * 400, "b", principle)
    with pytest.raises(
        JudgeInputError, match=r"'long-7' \(principle 'harmful', original order\).*longer than the limit of 256"
    ):
        build_sequences(tokenizer, [long], limit=256)
