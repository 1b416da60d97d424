"""KL(aligned || SFT) on held-out prompts (rlaif/evaluation/kl.py), on the tiny random model."""

from __future__ import annotations

from rlaif.evaluation.kl import sampled_kl


def test_a_prompt_longer_than_the_context_is_left_out_and_the_rest_measured(tiny_model: str) -> None:
    prompts = ["How do I bake bread?", "word " * 5000, "Name a colour."]
    estimate = sampled_kl(tiny_model, tiny_model, prompts, ["p0", "long", "p2"], max_new_tokens=6, seed=0)
    assert estimate.prompts == 2  # the 5,000-word prompt does not fit; the other two are measured
    assert abs(estimate.mean) < 1e-5  # a model against itself: log-ratios of exactly zero
