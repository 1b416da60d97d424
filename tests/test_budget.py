"""The run budget (rlaif/budget.py): each stage's items, shards, generated tokens and optimizer steps, by hand."""

from __future__ import annotations

from rlaif.budget import Cost, Exceeded, estimate_budget, training_steps
from rlaif.config import RunConfig
from rlaif.pipeline import plan


def test_default_config_stage_by_stage() -> None:
    cfg = RunConfig()
    budget = estimate_budget(cfg, train_prompts=100, eval_prompts=25)
    assert list(budget.stages) == [spec.name for spec in plan(cfg)]
    # critique: 100 prompts in shards of 8 -> 13 shards; an answer, then a critique and a revision in each of the
    # 2 rounds = 5 completions of up to 96 tokens: 100 x 5 x 96 = 48,000 tokens.
    assert budget.stages["critique"] == Cost(items=100, shards=13, generated_tokens=48_000)
    # sft: 100 examples, 10 % held out = 90, in batches of 8 -> ceil(90 / 8) = 12 steps x 1 epoch.
    assert budget.stages["sft"] == Cost(optimizer_steps=12)
    # pairs: K = 2 responses of up to 64 tokens per prompt: 100 x 2 x 64 = 12,800 tokens.
    assert budget.stages["pairs"] == Cost(items=100, shards=13, generated_tokens=12_800)
    # judge: C(2, 2) = 1 comparison per prompt; no chain of thought, so nothing generated.
    assert budget.stages["judge"] == Cost(items=100, shards=13)
    # reward model: 100 labels, 10 held out, 90 / 8 -> 12 steps.
    assert budget.stages["reward_model"] == Cost(optimizer_steps=12)
    # ppo: 64 episodes x 48 tokens = 3,072 tokens; 64 / 8 = 8 updates x 4 epochs x 2 minibatches = 64 steps.
    assert budget.stages["ppo"] == Cost(generated_tokens=3_072, optimizer_steps=64)
    # evaluate: min(25 held out, max_prompts 16) = 16 prompts, answered by 3 models with up to 64 tokens: 3,072.
    assert budget.stages["evaluate"] == Cost(items=16, generated_tokens=3_072)
    assert budget.total == Cost(items=316, shards=39, generated_tokens=66_944, optimizer_steps=88)
    assert budget.exceeded(Cost(items=316, shards=39, generated_tokens=66_944, optimizer_steps=88)) == []


def test_the_run_that_could_never_finish() -> None:
    """Issue 16: 100,000 prompts, shards of 1, 16 responses per prompt, 10 iterations."""
    cfg = RunConfig().with_overrides({"shard_size": 1, "pairs": {"responses_per_prompt": 16}, "iterations": 10})
    budget = estimate_budget(cfg, train_prompts=100_000, eval_prompts=0)
    # C(16, 2) = 120 comparisons per prompt: 12,000,000 judge shards in each iteration.
    assert budget.stages["judge"].shards == budget.stages["judge-10"].shards == 12_000_000
    # 100,000 critique + 10 x (100,000 pairs + 12,000,000 judge) shards.
    assert budget.total.shards == 100_000 + 10 * (100_000 + 12_000_000) == 121_100_000
    exceeded = {over.figure: over for over in budget.exceeded(Cost(shards=100_000))}
    assert exceeded == {"shards": Exceeded("shards", 121_100_000, 100_000, "judge", 12_000_000)}
    # Chain of thought: each comparison's principle read in both orders, a reasoning of up to 96 tokens each.
    cot = cfg.with_overrides({"judge": {"chain_of_thought": True, "principles_per_label": 2}})
    assert estimate_budget(cot, 10, 0).stages["judge"].generated_tokens == 10 * 120 * 2 * 2 * 96


def test_training_steps_hold_out_then_mix_in() -> None:
    # 100 examples: 10 held out; 90 + 0.5 x 90 = 135 mixed in; ceil(135 / 8) = 17 steps x 3 epochs.
    assert training_steps(100, batch_size=8, epochs=3, eval_fraction=0.1, extra=0.5) == 51
    assert training_steps(1, batch_size=8, epochs=1, eval_fraction=0.1) == 1  # nothing held out of one example
    assert training_steps(0, batch_size=8, epochs=2, eval_fraction=0.0) == 2  # (at least one step an epoch)


def test_dpo_trains_on_the_labels_without_rollouts() -> None:
    cfg = RunConfig().with_overrides({"policy_optimization": "dpo", "pairs": {"responses_per_prompt": 4}})
    budget = estimate_budget(cfg, train_prompts=100, eval_prompts=0)
    assert "ppo" not in budget.stages and "reward_model" not in budget.stages
    # C(4, 2) = 6 comparisons x 100 prompts = 600 labels, 60 held out, ceil(540 / 8) = 68 steps; nothing generated.
    assert budget.stages["dpo"] == Cost(optimizer_steps=68)


def test_online_dpo_samples_and_judges_every_step_without_pairs_or_judge_shards() -> None:
    cfg = RunConfig(policy_optimization="online_dpo")
    budget = estimate_budget(cfg, train_prompts=100, eval_prompts=0)
    assert set(budget.stages) == {"critique", "sft", "online_dpo", "evaluate"}
    # 64 prompts over the stage, 8 a step: 8 steps; two samples of up to 64 tokens each: 64 x 2 x 64 = 8,192 tokens.
    assert budget.stages["online_dpo"] == Cost(generated_tokens=8_192, optimizer_steps=8)
    # With chain of thought the judge also writes a reasoning per principle and order: 64 x (128 + 2 x 2 x 96).
    cot = cfg.with_overrides({"judge": {"chain_of_thought": True, "principles_per_label": 2}})
    assert estimate_budget(cot, 100, 0).stages["online_dpo"].generated_tokens == 64 * (128 + 2 * 2 * 96)


def test_best_of_n_samples_n_per_prompt_then_fine_tunes_on_one_a_prompt() -> None:
    cfg = RunConfig().with_overrides({"policy_optimization": "best_of_n", "best_of_n": {"n": 8}})
    budget = estimate_budget(cfg, train_prompts=100, eval_prompts=0)
    assert "ppo" not in budget.stages and "reward_model" in budget.stages
    # 100 prompts x 8 samples x 64 tokens = 51,200 tokens; SFT on 100 best samples, 10 held out, ceil(90 / 8) = 12.
    assert budget.stages["best_of_n"] == Cost(generated_tokens=51_200, optimizer_steps=12)


def test_the_judge_filter_adds_its_chain_of_thought_to_the_critique_stage() -> None:
    cfg = RunConfig().with_overrides({"judge": {"chain_of_thought": True, "principles_per_label": 2}})
    off = cfg.with_overrides({"critique": {"judge_filter": False}})
    on = cfg.with_overrides({"critique": {"judge_filter": True}})
    cot_tokens = cfg.judge.cot_sampling.max_new_tokens
    before = estimate_budget(off, train_prompts=100, eval_prompts=25).stages["critique"]
    after = estimate_budget(on, train_prompts=100, eval_prompts=25).stages["critique"]
    # Without the filter: 100 x 5 x 96 = 48,000 tokens. With it, each prompt's revision is judged against its first
    # answer in both orders under one principle (not principles_per_label): + 100 x 2 x cot tokens.
    assert before == Cost(items=100, shards=13, generated_tokens=48_000)
    assert after == Cost(items=100, shards=13, generated_tokens=48_000 + 100 * 2 * cot_tokens)
    # Without chain of thought a judge call generates nothing, as in the judge stage.
    plain = RunConfig().with_overrides({"critique": {"judge_filter": True}})
    assert estimate_budget(plain, 100, 25).stages["critique"] == before
