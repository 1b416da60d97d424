"""The backend-independent pieces: seeds, conversation checks, context checks, stop handling."""

from __future__ import annotations

import pytest

from rlaif.generation.common import (
    check_context,
    check_conversation,
    derive_seed,
    encode_conversations,
    stop_token_ids,
    to_completion,
)
from rlaif.modeling import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model: str):
    return load_tokenizer(tiny_model)


def test_derive_seed_is_stable_and_separates_streams() -> None:
    assert derive_seed(0, 1) == derive_seed(0, 1)
    # Not seed + index: run seed 1, batch 0 must not replay run seed 0, batch 1.
    assert derive_seed(1, 0) != derive_seed(0, 1)
    assert derive_seed(0, "p-1") != derive_seed(0, "p-2")
    assert 0 <= derive_seed(123, "x") < 2**32


def test_to_completion_cuts_after_the_first_stop_token(tokenizer) -> None:
    # A batch row that stopped at step 3 and was padded with the pad (= EOS) id 2 afterwards.
    completion = to_completion(tokenizer, [28, 29, 2, 2, 2], stop_ids=[2], logprobs=[-0.5, -1.0, -0.25, 0.0, 0.0])
    assert completion.token_ids == [28, 29, 2]
    assert completion.finished is True
    assert completion.logprobs == [-0.5, -1.0, -0.25]
    assert completion.text == tokenizer.decode([28, 29])  # stop token left out of the text


def test_to_completion_without_stop_token_is_unfinished(tokenizer) -> None:
    completion = to_completion(tokenizer, [28, 29, 30], stop_ids=[2])
    assert completion.finished is False
    assert completion.token_ids == [28, 29, 30]
    assert completion.logprobs is None
    assert completion.text == tokenizer.decode([28, 29, 30])


def test_to_completion_stops_at_any_stop_id(tokenizer) -> None:
    completion = to_completion(tokenizer, [28, 7, 2], stop_ids=[2, 7])
    assert completion.token_ids == [28, 7]
    assert completion.finished is True


def test_stop_token_ids_merges_tokenizer_and_model_eos(tokenizer) -> None:
    assert tokenizer.eos_token_id == 2
    assert stop_token_ids(tokenizer, 2) == [2]
    assert stop_token_ids(tokenizer, [2, 7]) == [2, 7]
    assert stop_token_ids(tokenizer, None) == [2]


def test_encode_uses_the_chat_template_with_an_open_assistant_turn(tokenizer) -> None:
    [ids] = encode_conversations(tokenizer, [[{"role": "user", "content": "Hi"}]])
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ids[0] == 1  # <|im_start|> once: no second BOS added on top of the template's


def test_empty_and_malformed_conversations_name_the_item(tokenizer) -> None:
    good = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match=r"conversation 1: empty conversation"):
        encode_conversations(tokenizer, [good, []])
    with pytest.raises(ValueError, match=r"conversation 0, message 0: role 'robot'"):
        check_conversation(0, [{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match=r"conversation 2, message 1: expected"):
        check_conversation(2, [{"role": "user", "content": "x"}, {"role": "assistant"}])
    with pytest.raises(ValueError, match=r"conversation 0: ends with an assistant message"):
        check_conversation(0, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(ValueError, match="no conversations"):
        encode_conversations(tokenizer, [])


def test_check_context_arithmetic() -> None:
    # Context 10: a 6-token prompt leaves room for 4 new tokens, not 5.
    check_context([[1] * 6], max_new_tokens=4, context=10)
    with pytest.raises(
        ValueError, match=r"conversation 1: the prompt is 6 tokens; with max_new_tokens=5 .* lower max_new_tokens to 4"
    ):
        check_context([[1] * 3, [1] * 6], max_new_tokens=5, context=10)
    with pytest.raises(
        ValueError, match=r"conversation 0: the prompt is 10 tokens, longer than the model context of 10"
    ):
        check_context([[1] * 10], max_new_tokens=1, context=10)
