"""KL(aligned || SFT) on held-out prompts (rlaif/evaluation/kl.py), on the tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlaif.evaluation import kl
from rlaif.evaluation.kl import sampled_kl
from rlaif.evaluation.report import KLEstimate
from rlaif.modeling import load_causal_lm, load_tokenizer


def test_a_prompt_longer_than_the_context_is_left_out_and_the_rest_measured(tiny_model: str) -> None:
    prompts = ["How do I bake bread?", "word " * 5000, "Name a colour."]
    estimate = sampled_kl(tiny_model, tiny_model, prompts, ["p0", "long", "p2"], max_new_tokens=6, seed=0)
    assert estimate.prompts == 2  # the 5,000-word prompt does not fit; the other two are measured
    assert abs(estimate.mean) < 1e-5  # a model against itself: log-ratios of exactly zero


def test_batching_the_prompts_gives_the_estimate_of_one_prompt_at_a_time(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A perturbed copy as the "aligned" model, so the log-ratios are not zero. Each row has its own seeded
    # generator, so a prompt's samples are the same whichever prompts share its batch; only the float rounding of
    # the padded rows may differ.
    torch.manual_seed(0)
    aligned = load_causal_lm(tiny_model)
    with torch.no_grad():
        for p in aligned.parameters():
            p.add_(0.02 * torch.randn_like(p))
    aligned.save_pretrained(tmp_path / "aligned")
    load_tokenizer(tiny_model).save_pretrained(tmp_path / "aligned")
    prompts = ["How do I bake bread?", "Name a colour.", "Write a haiku about the sea, please.", "Hi"]
    ids = [f"p{i}" for i in range(len(prompts))]

    def estimate() -> KLEstimate:
        return sampled_kl(
            str(tmp_path / "aligned"), tiny_model, prompts, ids, max_new_tokens=8, seed=3, samples_per_prompt=2
        )

    batched = estimate()
    monkeypatch.setattr(kl, "BATCH_ROWS", 1)  # one row per call: one prompt's sample at a time
    one_at_a_time = estimate()
    assert batched.prompts == one_at_a_time.prompts == 4
    assert batched.mean != 0.0 and abs(batched.mean - one_at_a_time.mean) < 1e-4
    assert batched.se is not None and one_at_a_time.se is not None and abs(batched.se - one_at_a_time.se) < 1e-4
