"""The transformers backend on the tiny random Llama (fp32, so batched and unbatched numerics agree tightly).

The tiny model's tied embeddings make greedy decoding repeat the prompt's last token ('\\n'), so the greedy
comparisons below also compare the per-token log-probs, which depend on every prompt token and on the padding.
The real-model check of batched greedy text is the slow test at the end.
"""

from __future__ import annotations

import pytest
import torch

from rlaif.config import GenerationBackendConfig, SamplingConfig
from rlaif.generation import make_generator
from rlaif.generation.common import encode_conversations
from rlaif.generation.hf import HFGenerator
from rlaif.generation.vllm import vllm_available
from rlaif.modeling import load_causal_lm, load_tokenizer

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=6)


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# Mixed lengths, deliberately not in length order, so sorting reorders them across batches.
PROMPTS = [
    conv("Hi"),
    conv("Tell me a long story about a cat named Bob who lives on a boat in the harbour of a small town."),
    conv("What is 2 + 2?"),
    conv("Name three colours."),
    conv("Explain, in a few sentences, why the sky looks blue during the day but red at sunset."),
]


@pytest.fixture(scope="module")
def generator(tiny_model: str) -> HFGenerator:
    return HFGenerator(tiny_model, dtype="float32", batch_size=2)


def test_prompts_are_not_already_in_length_order(generator: HFGenerator) -> None:
    lengths = [len(ids) for ids in encode_conversations(generator.tokenizer, PROMPTS)]
    assert sorted(range(len(lengths)), key=lambda i: -lengths[i]) != list(range(len(lengths)))
    assert len(set(lengths)) == len(lengths)  # every batch mixes lengths, so left padding is exercised


def test_batched_greedy_equals_one_at_a_time_in_input_order(generator: HFGenerator) -> None:
    batched = generator.generate(PROMPTS, 1, GREEDY, seed=0, return_logprobs=True, progress=False)
    assert len(batched) == len(PROMPTS)
    for index, prompt in enumerate(PROMPTS):
        [[alone]] = generator.generate([prompt], 1, GREEDY, seed=0, return_logprobs=True, progress=False)
        [got] = batched[index]
        assert got.token_ids == alone.token_ids
        assert got.text == alone.text
        # Same prompt -> same log-probs; a padding or ordering bug shows here even when tokens agree.
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(alone.logprobs), atol=1e-4, rtol=0)
    first_logprobs = [round(row[0].logprobs[0], 4) for row in batched]
    assert len(set(first_logprobs)) == len(PROMPTS)  # the prompts really give different distributions


def test_n_samples_per_prompt(generator: HFGenerator) -> None:
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=5)
    results = generator.generate(PROMPTS[:3], 3, sampling, seed=0, progress=False)
    assert [len(row) for row in results] == [3, 3, 3]
    for row in results:
        assert all(len(c.token_ids) == 5 and not c.finished for c in row)  # nothing stops a random model early
        assert len({tuple(c.token_ids) for c in row}) == 3  # 3 independent samples, not copies


def test_greedy_n_copies_one_answer(generator: HFGenerator) -> None:
    [row] = generator.generate(PROMPTS[:1], 3, GREEDY, seed=0, progress=False)
    assert len(row) == 3 and row[0] == row[1] == row[2]


def test_same_seed_same_samples_other_seed_other_samples(generator: HFGenerator) -> None:
    sampling = SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=6)
    first = generator.generate(PROMPTS, 2, sampling, seed=7, progress=False)
    torch.manual_seed(12345)  # the caller's global RNG state must not matter
    again = generator.generate(PROMPTS, 2, sampling, seed=7, progress=False)
    other = generator.generate(PROMPTS, 2, sampling, seed=8, progress=False)
    assert first == again
    assert first != other


def test_a_sampled_item_is_the_same_whichever_items_share_its_call(generator: HFGenerator) -> None:
    """Per-item seeds (rlaif/generation/hf.py _RowSampler): an item's samples depend on its conversation and seed,
    not on its batch, its position or its neighbours, so a shard resumed after a crash writes the same text."""
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=6)
    seeds = [11, 22, 33, 44, 55]
    together = generator.generate(PROMPTS, 2, sampling, seed=seeds, progress=False)
    reversed_order = generator.generate(PROMPTS[::-1], 2, sampling, seed=seeds[::-1], progress=False)[::-1]
    for index in range(len(PROMPTS)):
        [alone] = generator.generate([PROMPTS[index]], 2, sampling, seed=[seeds[index]], progress=False)
        assert [c.token_ids for c in together[index]] == [c.token_ids for c in alone]
        assert [c.token_ids for c in reversed_order[index]] == [c.token_ids for c in alone]
    with pytest.raises(ValueError, match="2 seeds for 5 conversations"):
        generator.generate(PROMPTS, 1, sampling, seed=[1, 2], progress=False)


def test_logprobs_match_a_separate_forward_pass(generator: HFGenerator) -> None:
    temperature = 0.7
    sampling = SamplingConfig(temperature=temperature, top_p=0.9, max_new_tokens=6)
    results = generator.generate(PROMPTS[:3], 2, sampling, seed=1, return_logprobs=True, progress=False)
    prompts = encode_conversations(generator.tokenizer, PROMPTS[:3])
    for prompt, row in zip(prompts, results, strict=True):
        for completion in row:
            ids = torch.tensor([prompt + completion.token_ids])
            with torch.no_grad():
                logits = generator.model(ids).logits[0].float()  # (T, V)
            # Token t of the completion is predicted at position len(prompt) - 1 + t; logits / T as sampled.
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(completion.token_ids))
            logp = torch.log_softmax(logits[positions] / temperature, dim=-1)
            expected = logp.gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=0)


def test_finished_flag_and_stop_token(tiny_model: str) -> None:
    # The tiny model greedily repeats '\n' (id 198); with '\n' as a stop token it stops at once.
    model = load_causal_lm(tiny_model, dtype="float32")
    model.generation_config.eos_token_id = [2, 198]
    stopping = HFGenerator.from_loaded(model, load_tokenizer(tiny_model), batch_size=4)
    assert stopping.stop_ids == [2, 198]
    [[done]] = stopping.generate(PROMPTS[:1], 1, GREEDY, seed=0, progress=False)
    assert done.finished is True
    assert done.token_ids == [198]  # the stop token is kept in the ids...
    assert done.text == ""  # ...and left out of the text
    # Without '\n' as a stop token the same model runs to max_new_tokens.
    model.generation_config.eos_token_id = 2
    plain = HFGenerator.from_loaded(model, load_tokenizer(tiny_model))
    [[cut]] = plain.generate(PROMPTS[:1], 1, GREEDY, seed=0, progress=False)
    assert cut.finished is False
    assert cut.token_ids == [198] * GREEDY.max_new_tokens


def test_from_loaded_reuses_the_model(tiny_model: str, generator: HFGenerator) -> None:
    reused = HFGenerator.from_loaded(generator.model, generator.tokenizer, batch_size=8)
    assert reused.model is generator.model
    assert reused.model_name.endswith("tiny-random-llama")  # the folder it was loaded from
    expected = generator.generate(PROMPTS[:2], 1, GREEDY, 0, progress=False)
    generator.model.train()  # as a training stage would hand it over
    try:
        assert reused.generate(PROMPTS[:2], 1, GREEDY, 0, progress=False) == expected
        assert generator.model.training  # put back the way it came
    finally:
        generator.model.eval()


def test_empty_conversation_and_too_long_prompt_name_the_item(generator: HFGenerator) -> None:
    with pytest.raises(ValueError, match=r"conversation 1: empty conversation"):
        generator.generate([conv("Hi"), []], 1, GREEDY, seed=0, progress=False)
    too_long = conv("word " * 3000)  # ~3000 tokens; the tiny model's context is 2048
    with pytest.raises(
        ValueError, match=r"conversation 2: the prompt is \d+ tokens, longer than the model context of 2048"
    ):
        generator.generate([conv("Hi"), conv("Hello"), too_long], 1, GREEDY, seed=0, progress=False)
    near_limit = conv("word " * 2000)  # ~2030 tokens: fits, but not with 64 new ones
    with pytest.raises(ValueError, match=r"conversation 0: .* exceeds the model context of 2048"):
        generator.generate([near_limit], 1, SamplingConfig(max_new_tokens=64), seed=0, progress=False)


def test_make_generator_backends(tiny_model: str) -> None:
    chosen = make_generator(tiny_model, GenerationBackendConfig(backend="transformers", dtype="float32", batch_size=3))
    assert isinstance(chosen, HFGenerator)
    assert chosen.batch_size == 3
    assert chosen.model.dtype == torch.float32
    from rlaif.generation import resolve_backend

    # A caller without a token estimate (evaluation, `rlaif generate`): vLLM under 'auto' only on a GPU.
    assert resolve_backend("auto") == ("vllm" if vllm_available() and torch.cuda.is_available() else "transformers")
    assert resolve_backend("transformers") == "transformers"


@pytest.mark.slow
def test_embedded_model_batched_generation(embedded_model: str) -> None:
    """The real 135M model on 4 prompts: batched greedy text equals one-at-a-time, and short answers finish."""
    real = HFGenerator(embedded_model, dtype="float32", batch_size=4)
    prompts = [
        conv("What is the capital of France?"),
        conv("Say hello."),
        conv("Write a long essay about the history of the Roman Empire, from its founding to its fall."),
        conv("How many legs does a spider have?"),
    ]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=24)
    batched = real.generate(prompts, 1, sampling, seed=0, return_logprobs=True, progress=False)
    for prompt, [got] in zip(prompts, batched, strict=True):
        [[alone]] = real.generate([prompt], 1, sampling, seed=0, progress=False)
        assert got.text == alone.text
    assert "Paris" in batched[0][0].text
    assert batched[0][0].finished is True and batched[0][0].token_ids[-1] == 2
    assert batched[2][0].finished is False and len(batched[2][0].token_ids) == 24  # an essay does not fit 24 tokens
    sampled = real.generate(prompts[:2], 2, SamplingConfig(temperature=1.0, max_new_tokens=24), seed=0, progress=False)
    assert all(c.text.strip() for row in sampled for c in row)
