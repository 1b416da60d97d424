"""The SFT loss counts response tokens only: hand-checked on the real tiny model."""

from __future__ import annotations

import math

import torch

from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.training import (
    IGNORE_INDEX,
    collate,
    masked_lm_loss_sum,
    pack,
    target_tokens,
    tokenize_chat,
    use_packed_attention,
)


def test_uniform_logits_give_ln_vocab_per_response_token(tiny_model: str) -> None:
    # With all-zero output embeddings every logit is 0, so p(token) = 1/V at every position and each counted
    # token costs ln V. The example has a ~30-token prompt and a 3-token target ("Hello", "!", EOS), so the
    # summed loss is 3 ln V; had the prompt been counted it would be ~33 ln V.
    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    example = tokenize_chat(tokenizer, "Hi there", "Hello!", max_length=512)
    assert target_tokens(example) == 3 and len(example.input_ids) > 30
    loss = masked_lm_loss_sum(model, collate([example], tokenizer.pad_token_id))
    vocab = model.config.vocab_size
    assert math.isclose(loss.item(), 3 * math.log(vocab), rel_tol=1e-6)  # 3 x ln 49152 = 3 x 10.8027 = 32.408


def test_masked_loss_equals_response_log_likelihood(tiny_model: str) -> None:
    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    examples = [
        tokenize_chat(tokenizer, "What is 2+2?", "4, of course.", max_length=512),
        tokenize_chat(tokenizer, "Name a colour.", "Blue", max_length=512),
    ]
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        loss = masked_lm_loss_sum(model, batch).item()
        # By hand: -sum over response positions t of log p(x_t | x_<t), each sequence run alone (no padding).
        expected = 0.0
        for example in examples:
            ids = torch.tensor([example.input_ids])
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (T, V)
            for t, label in enumerate(example.labels):
                if label != IGNORE_INDEX:
                    expected -= logprobs[t - 1, label].item()
    assert math.isclose(loss, expected, rel_tol=1e-5)


def test_prompt_and_padding_labels_change_nothing_but_unmasking_does(tiny_model: str) -> None:
    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    example = tokenize_chat(tokenizer, "Say hi.", "Hi!", max_length=512)
    long = tokenize_chat(tokenizer, "Say something longer, please.", "Something longer.", max_length=512)
    alone = masked_lm_loss_sum(model, collate([example], tokenizer.pad_token_id))
    padded = collate([example, long], tokenizer.pad_token_id)
    with torch.no_grad():
        both = masked_lm_loss_sum(model, padded)
        long_alone = masked_lm_loss_sum(model, collate([long], tokenizer.pad_token_id))
    # Right padding under a causal mask does not change the real tokens, and padding carries no loss.
    assert math.isclose(both.item(), alone.item() + long_alone.item(), rel_tol=1e-5)
    unmasked = collate([example._replace(labels=example.input_ids)], tokenizer.pad_token_id)
    with torch.no_grad():
        assert masked_lm_loss_sum(model, unmasked).item() > alone.item() + 1.0  # prompt tokens would add loss


def test_packed_batch_gives_the_padded_loss(tiny_model: str) -> None:
    # Padding-free packing: one row, positions restarting per sequence, a block-diagonal causal mask.
    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    examples = [
        tokenize_chat(tokenizer, "What is 2+2?", "4, of course.", max_length=512),
        tokenize_chat(tokenizer, "Name a colour.", "Blue", max_length=512),
        tokenize_chat(tokenizer, "And a longer request, please?", "A longer answer, then.", max_length=512),
    ]
    packed = pack(examples)
    assert packed.input_ids.shape == (1, sum(len(e.input_ids) for e in examples))
    assert packed.position_ids[0, : len(examples[0].input_ids) + 1].tolist() == [*range(len(examples[0].input_ids)), 0]
    with torch.no_grad():
        padded_loss = masked_lm_loss_sum(model, collate(examples, tokenizer.pad_token_id)).item()
        packed_loss = masked_lm_loss_sum(model, packed).item()
    assert math.isclose(packed_loss, padded_loss, rel_tol=1e-5)


def test_packed_attention_keeps_loss_and_gradients(tiny_model: str) -> None:
    # Per-sequence causal attention on a packed row must equal the padded batch: same loss, same gradients;
    # a padded batch (several rows) still goes through transformers' sdpa with its mask.
    tokenizer = load_tokenizer(tiny_model)
    examples = [
        tokenize_chat(tokenizer, "What is 2+2?", "4, of course.", max_length=512),
        tokenize_chat(tokenizer, "Name a colour.", "Blue", max_length=512),
    ]
    reference = load_causal_lm(tiny_model)
    packed_model = load_causal_lm(tiny_model)
    assert use_packed_attention(packed_model) == "sdpa"
    padded_loss = masked_lm_loss_sum(reference, collate(examples, tokenizer.pad_token_id))
    packed_loss = masked_lm_loss_sum(packed_model, pack(examples))
    padded_loss.backward()
    packed_loss.backward()
    assert math.isclose(packed_loss.item(), padded_loss.item(), rel_tol=1e-5)
    for (name, a), b in zip(reference.named_parameters(), packed_model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    with torch.no_grad():
        still_padded = masked_lm_loss_sum(packed_model, collate(examples, tokenizer.pad_token_id))
    assert math.isclose(still_padded.item(), padded_loss.item(), rel_tol=1e-5)
