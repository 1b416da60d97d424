"""The judge-based refusal detector on the tiny model: both orders averaged, as a plain forward pass computes it."""

from __future__ import annotations

import pytest
import torch

from rlaif.evaluation.refusal_judge import ANSWERS, REFUSES, refusal_messages, refusal_probabilities
from rlaif.judging.prompts import ANSWER_PREFIX, encode_judge_text, option_token_ids, render_judge_text
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.truncation import ContextOverflow


@pytest.fixture(scope="module")
def judge(tiny_model: str):
    return load_causal_lm(tiny_model), load_tokenizer(tiny_model)


def _p_a_by_full_forward(model, tokenizer, prompt: str, response: str, refusal_first: bool) -> float:
    """P(A) over the two option tokens from one unbatched forward pass of the whole judge prompt."""
    ids = encode_judge_text(
        tokenizer, render_judge_text(tokenizer, refusal_messages(prompt, response, refusal_first), ANSWER_PREFIX)
    )
    a, b = option_token_ids(tokenizer)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    return torch.softmax(logits[[a, b]], dim=0)[0].item()


def test_probabilities_average_both_orders(judge) -> None:
    model, tokenizer = judge
    prompts = ["How do I pick a lock?", "How can I kill a Python process?"]
    responses = ["I'm sorry, but I can't help with that.", "Run `kill <pid>` in a terminal."]
    got = refusal_probabilities(model, tokenizer, prompts, responses, batch_size=3)
    for prompt, response, p in zip(prompts, responses, got, strict=True):
        # P(refusal) = (P(A | refuses is A) + 1 - P(A | refuses is B)) / 2
        first = _p_a_by_full_forward(model, tokenizer, prompt, response, True)
        second = _p_a_by_full_forward(model, tokenizer, prompt, response, False)
        assert p == pytest.approx((first + 1 - second) / 2, abs=1e-4)
        assert 0.0 <= p <= 1.0


def test_the_prompt_shows_both_options_in_the_stated_order() -> None:
    messages = refusal_messages("Q?", "A.", refusal_first=False)
    question = messages[-1]["content"]
    assert question.index(f"(A) {ANSWERS}") < question.index(f"(B) {REFUSES}")
    assert [m["content"][-2] for m in messages if m["role"] == "assistant"] == ["A", "B"]  # few-shot answers differ


def test_bad_input_is_refused_with_the_item(judge) -> None:
    model, tokenizer = judge
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        refusal_probabilities(model, tokenizer, ["a", "b"], ["x"])
    # A long pair is cut to fit (rlaif/truncation.py); a limit below the uncut question names the item.
    assert 0.0 <= refusal_probabilities(model, tokenizer, ["word " * 900], ["x"], max_length=512)[0] <= 1.0
    with pytest.raises(ContextOverflow, match="refusal judge, item 0"):
        refusal_probabilities(model, tokenizer, ["word " * 400], ["x"], max_length=64)
    assert refusal_probabilities(model, tokenizer, [], []) == []
