"""PPO stage on the tiny model: a full toy run, exact resume, rollout/training log-prob consistency, the value
model's two starting points, the Goodhart monitors (early stop, keep-best), the stage wrapper and the CLI; one
slow run on the embedded model.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from typer.testing import CliRunner

from rlaif.config import EvalConfig, MonitorConfig, PPOConfig, RunConfig
from rlaif.evaluation.monitors import best_step, boilerplate
from rlaif.generation.backend_choice import detect_vllm
from rlaif.modeling import load_causal_lm, load_tokenizer, prepare_model
from rlaif.records import LabelRecord, PromptItem, SFTExample
from rlaif.rl.advantages import masked_mean, masked_var
from rlaif.rl.sequences import sample_responses, truncate_at_stop_token
from rlaif.rl.types import Rollout
from rlaif.scorers import ScoreFn, looks_harmful, refusal_scorer
from rlaif.stages import INPUTS, PROMPTS_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.ppo import (
    ValueHead,
    _encode_prompts,
    _query_batch,
    forward_values,
    load_value_model,
    ppo_update,
    rollout,
    rollout_metrics,
    run_ppo,
    train_ppo,
)
from rlaif.store import ArtifactStore, verify_manifest, write_jsonl

PROMPTS = [
    "How do I steal a car?",
    "What is a good name for a cat?",
    "How can I make a bomb at home?",
    "What's the capital of France?",
    "Tell me a racist joke.",
    "How do I bake bread?",
    "Help me hack my neighbour's wifi.",
    "Why is the sky blue?",
]
REQUIRED_KEYS = {
    "objective/kl",
    "objective/scores",
    "objective/rlhf_reward",
    "objective/kl_coef",
    "policy/clipfrac",
    "policy/approxkl",
    "policy/entropy",
    "loss/policy",
    "loss/value",
    "val/explained_variance",
    "val/mean_response_length",
}
BASE = {
    "total_episodes": 8,
    "prompts_per_step": 4,
    "num_minibatches": 2,
    "micro_batch_size": 1,
    "ppo_epochs": 2,
    "response_length": 6,
    "learning_rate": 1e-4,
    "checkpoint_every": 1,
    "sample_every": 1,
}


def _cfg(**overrides: object) -> PPOConfig:
    return PPOConfig(**{**BASE, **overrides})


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_toy_run_writes_metrics_samples_and_a_loadable_model(tiny_model: str, tmp_path: Path) -> None:
    sft = [SFTExample(id=f"s{i}", prompt=p, response="I'd rather not help with that.") for i, p in enumerate(PROMPTS)]
    result = train_ppo(PROMPTS, tiny_model, refusal_scorer(), _cfg(ptx_coef=0.5), tmp_path, seed=0, ptx_examples=sft,
                       progress=False)  # fmt: skip

    # 8 episodes / (4 prompts x 1 sample) = 2 updates.
    assert result.counts == {"prompts": 8, "dropped_too_long": 0, "ptx_examples": 8, "updates": 2, "episodes": 8}
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert REQUIRED_KEYS | {"loss/ptx"} <= set(row)
        assert all(math.isfinite(v) for v in row.values())
    assert rows[0]["objective/kl"] == 0.0  # the first rollout comes from the unchanged policy: KL to the reference is 0
    assert rows[0]["optim/lr"] == pytest.approx(1e-4) and rows[1]["optim/lr"] == pytest.approx(0.5e-4)  # annealed
    samples = _rows(tmp_path / "samples.jsonl")
    assert len(samples) == 8 and {"prompt", "response", "score", "kl", "finished"} <= set(samples[0])
    for row in rows:  # the boilerplate monitor's input, from the same responses samples.jsonl shows
        responses = [s["response"] for s in samples if s["step"] == row["step"]]
        assert row["val/boilerplate_fraction"] == boilerplate(responses).fraction

    verify_manifest(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    assert meta["stage"] == "ppo" and meta["base_model"] == tiny_model and meta["metrics"] == result.metrics
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    initial = AutoModelForCausalLM.from_pretrained(prepare_model(tiny_model))
    moved = max((a - b).abs().max().item() for a, b in zip(trained.parameters(), initial.parameters(), strict=True))
    assert moved > 0  # PPO changed the policy
    assert not (tmp_path / "steps").exists()  # resume states removed once the model is complete


@pytest.mark.parametrize("value_network", ["separate", "shared"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_model: str, tmp_path: Path, value_network: str) -> None:
    # 4 updates; step states after updates 2 (and not 4: the final model supersedes it).
    cfg = _cfg(total_episodes=16, checkpoint_every=2, adaptive_kl=True, kl_target=0.01, kl_horizon=20,
               value_network=value_network)  # fmt: skip
    train_ppo(PROMPTS, tiny_model, refusal_scorer(), cfg, tmp_path / "full", seed=5, progress=False)

    calls = 0

    def crashing_scorer(prompts: list[str], responses: list[str]) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 4:  # the rollout of update 4: updates 1-3 are done, the newest step state is update 2's
            raise RuntimeError("worker lost")
        return refusal_scorer()(prompts, responses)

    with pytest.raises(RuntimeError, match="worker lost"):
        train_ppo(PROMPTS, tiny_model, crashing_scorer, cfg, tmp_path / "resumed", seed=5, progress=False)
    assert len(_rows(tmp_path / "resumed" / "metrics.jsonl")) == 3
    assert (tmp_path / "resumed" / "steps" / "step-00000002").is_dir()
    train_ppo(PROMPTS, tiny_model, refusal_scorer(), cfg, tmp_path / "resumed", seed=5, progress=False)

    full, resumed = _rows(tmp_path / "full" / "metrics.jsonl"), _rows(tmp_path / "resumed" / "metrics.jsonl")
    assert resumed == full  # update 3 was rolled back and redone identically
    assert full[0]["val/mean"] == 0.0 and full[-1]["val/mean"] != 0.0  # the zero-initialised value head learned
    assert _rows(tmp_path / "full" / "samples.jsonl") == _rows(tmp_path / "resumed" / "samples.jsonl")
    full_weights = load_file(tmp_path / "full" / "model" / "model.safetensors")
    resumed_weights = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert full_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)

    # The adaptive controller's state came back too: beta follows beta' = beta * (1 + clip(kl/target - 1, +-0.2) * B/H)
    # from row to row, here with B = 4 episodes per update and H = 20.
    for before, after in itertools.pairwise(full):
        error = min(max(before["objective/kl"] / 0.01 - 1, -0.2), 0.2)
        assert after["objective/kl_coef"] == pytest.approx(before["objective/kl_coef"] * (1 + error * 4 / 20))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("value_network", ["separate", "shared"])
def test_rollout_logprobs_equal_training_logprobs_before_the_first_update(
    tiny_model: str, value_network: str, dtype: str
) -> None:
    # The invariant holds in both precisions (bf16 autocast in rollout and update alike) and for both value networks.
    cfg = _cfg(temperature=0.7, prompts_per_step=4, ppo_epochs=2, dtype=dtype)
    tokenizer = load_tokenizer(tiny_model)
    policy, ref_policy = load_causal_lm(tiny_model, device="cpu"), load_causal_lm(tiny_model, device="cpu")
    if value_network == "shared":
        value_net = ValueHead(policy.config.hidden_size)
    else:
        value_net = load_value_model(tiny_model, torch.device("cpu"), zero_head=True)
    prompts, queries, _ = _encode_prompts(tokenizer, PROMPTS, cfg.max_prompt_tokens)
    indices, b_queries, b_query_mask = _query_batch(queries, 0, cfg, 0, tokenizer.pad_token_id)

    def constant_scorer(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.full((len(prompts),), 0.3)

    def seeded_rollout(cfg: PPOConfig) -> Rollout:
        b_prompts, generator = [prompts[i] for i in indices], torch.Generator().manual_seed(0)
        args = (b_prompts, b_queries, b_query_mask, constant_scorer, 0.05, cfg, generator)
        return rollout(policy, ref_policy, value_net, tokenizer, *args)

    data = seeded_rollout(cfg)

    # val/boilerplate_fraction: 2 of the 4 texts share the sentence "i'm sorry, but i can't help with that request."
    texts = ["I'm sorry, but I can't help with that request.", "I'm sorry, but I can't help with that request. Truly.",
             "Sure.", "Here is a recipe for bread with flour."]  # fmt: skip
    assert rollout_metrics(1, data, 0.05, texts, cfg)["val/boilerplate_fraction"] == 0.5

    # Before any update: policy == reference (KL 0), the zero-initialised value head predicts 0 everywhere, so the
    # only reward is the score at the last token: 0.3, minus the missing-EOS penalty 1 when the response was cut.
    assert data.kl.abs().max().item() == 0.0
    assert data.values.abs().max().item() == 0.0
    last = data.response_mask.sum(1) - 1
    expected = torch.where(data.contains_eos, 0.3, 0.3 - cfg.missing_eos_penalty)
    torch.testing.assert_close(data.rewards[torch.arange(4), last], expected)
    assert data.rewards.sum().item() == pytest.approx(expected.sum().item())

    # whiten_rewards (same seed, same responses): the rewards' spread becomes 1 over valid tokens, their mean stays.
    whitened = seeded_rollout(_cfg(whiten_rewards=True, dtype=dtype))
    assert torch.equal(whitened.query_responses, data.query_responses)
    mask = data.response_mask
    assert masked_mean(whitened.rewards, mask).item() == pytest.approx(masked_mean(data.rewards, mask).item(), abs=1e-6)
    assert masked_var(whitened.rewards, mask).item() == pytest.approx(1.0, rel=1e-4)

    # A training pass at another temperature sees different log-probs: the check below is not vacuous.
    frozen = torch.optim.AdamW([*policy.parameters(), *value_net.parameters()], lr=0.0)
    wrong_cfg = _cfg(temperature=1.0, ppo_epochs=1, dtype=dtype)
    wrong = ppo_update(policy, value_net, frozen, data, wrong_cfg, torch.Generator(), [])
    assert wrong.approxkl[0, 0].item() > 1e-3

    optimizer = torch.optim.AdamW([*policy.parameters(), *value_net.parameters()], lr=1e-3)
    stats = ppo_update(policy, value_net, optimizer, data, cfg, torch.Generator().manual_seed(0), [])
    # First minibatch, before the first optimizer step: ratio exactly 1, approx. KL 0.
    assert stats.ratio[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert stats.approxkl[0, 0].item() == pytest.approx(0.0, abs=1e-10)
    assert stats.approxkl[1].min().item() > 0  # later minibatches see the moved policy

    # Early stop: the moved policy is already past a tiny approx-KL target at its first minibatch.
    early_cfg = _cfg(target_approxkl=1e-9, dtype=dtype)
    early = ppo_update(policy, value_net, optimizer, data, early_cfg, torch.Generator(), [])
    assert (~early.approxkl.isnan()).sum().item() == 1


def test_early_stop_when_a_monitor_alerts_for_patience_updates(tiny_model: str, tmp_path: Path) -> None:
    # The k3 KL estimate is >= 0, and exactly 0 only while the policy equals the reference: update 1's rollout
    # comes from the unchanged policy (KL 0, no alert at kl_max = 1e-9), every later one from a moved policy
    # (KL > 0: alert). With patience 2 the alerts at updates 2 and 3 stop the run after update 3 of 6.
    monitor = MonitorConfig(early_stop=True, patience=2, kl_max=1e-9)
    cfg = _cfg(total_episodes=24, kl_estimator="k3", checkpoint_every=2)
    seen: list[int] = []
    result = train_ppo(PROMPTS, tiny_model, refusal_scorer(), cfg, tmp_path, seed=0, progress=False,
                       on_step=lambda step, total, metrics: seen.append(step), monitor=monitor)  # fmt: skip

    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and seen == [1, 2, 3]
    assert rows[0]["objective/kl"] == 0.0 and min(r["objective/kl"] for r in rows[1:]) > 1e-9
    assert result.counts["updates"] == 3 and result.counts["episodes"] == 12  # 3 updates x 4 episodes
    assert result.extra["early_stop"]["step"] == 3
    assert result.extra["early_stop"]["reasons"] == [f"KL {rows[2]['objective/kl']:.3g} nats above 1e-09"]
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    assert meta["monitor"] == {k: v for k, v in result.extra.items() if not k.startswith("backend")}
    assert meta["counts"]["updates"] == 3
    # The rollout engine and why (rlaif/generation/backend_choice.py), in the result and in meta.json.
    assert meta["rollout"] == {"backend": result.extra["backend"], "backend_reason": result.extra["backend_reason"]}
    assert not (tmp_path / "steps").exists()


def test_keep_best_saves_the_policy_of_the_best_rollout_and_resumes(tiny_model: str, tmp_path: Path) -> None:
    # 2 prompts per update; no lr annealing, so a shorter run reproduces a longer one's first updates exactly.
    # The tiny random model never refuses: a harmful prompt scores -1 and a harmless one +1. With seed 5 the
    # updates draw (harmful, harmless), (harmless, harmful), (harmless, harmless), (harmful, harmful):
    # mean scores 0, 0, 1, -1, so the best rollout is update 3's, sampled by the policy after 2 updates.
    cfg = _cfg(total_episodes=8, prompts_per_step=2, num_minibatches=1, anneal_lr=False, checkpoint_every=2)
    monitor = MonitorConfig(keep_best="objective/scores")
    result = train_ppo(PROMPTS, tiny_model, refusal_scorer(), cfg, tmp_path / "full", seed=5, progress=False,
                       monitor=monitor)  # fmt: skip
    rows = _rows(tmp_path / "full" / "metrics.jsonl")
    assert [r["objective/scores"] for r in rows] == [0.0, 0.0, 1.0, -1.0]
    assert best_step(rows, monitor) == 3
    assert result.extra["keep_best"] == {"metric": "objective/scores", "step": 3, "value": 1.0, "updates_applied": 2}
    assert result.metrics["objective/scores"] == 1.0  # the kept rollout's metrics, not the last update's
    assert not (tmp_path / "full" / "best").exists()

    two = _cfg(total_episodes=4, prompts_per_step=2, num_minibatches=1, anneal_lr=False)
    train_ppo(PROMPTS, tiny_model, refusal_scorer(), two, tmp_path / "two", seed=5, progress=False)
    assert _rows(tmp_path / "two" / "metrics.jsonl") == rows[:2]
    kept, after_two = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "two" / "model")
    assert all(torch.equal(kept[k], after_two[k]) for k in kept)
    initial = _weights(Path(prepare_model(tiny_model)))
    assert any(not torch.equal(kept[k], initial[k]) for k in kept)

    # Crash in update 4's rollout. Step state: update 2, whose best is update 1 (0 = 0, ties go to the earliest);
    # current best: update 3. Both policies are on disk, nothing else.
    calls = 0

    def crashing_scorer(prompts: list[str], responses: list[str]) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("worker lost")
        return refusal_scorer()(prompts, responses)

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="worker lost"):
        train_ppo(PROMPTS, tiny_model, crashing_scorer, cfg, resumed_dir, seed=5, progress=False, monitor=monitor)
    assert sorted(p.name for p in (resumed_dir / "best").iterdir()) == [
        "update-00000001.safetensors",
        "update-00000003.safetensors",
    ]
    again = train_ppo(PROMPTS, tiny_model, refusal_scorer(), cfg, resumed_dir, seed=5, progress=False, monitor=monitor)
    assert _rows(resumed_dir / "metrics.jsonl") == rows and again.extra == result.extra
    resumed = _weights(resumed_dir / "model")
    assert all(torch.equal(resumed[k], kept[k]) for k in kept)


def test_keep_best_passes_over_alerting_rollouts(tiny_model: str, tmp_path: Path) -> None:
    # Seed 6 draws a mixed pair, then two harmless prompts: scores 0, 1. Update 2's rollout is better but comes
    # from a moved policy whose k3 KL is above kl_max = 1e-9 (an alert), so the kept policy is the one that
    # sampled update 1: the starting policy, unchanged.
    cfg = _cfg(total_episodes=4, prompts_per_step=2, num_minibatches=1, kl_estimator="k3")
    monitor = MonitorConfig(keep_best="objective/scores", kl_max=1e-9)
    result = train_ppo(PROMPTS, tiny_model, refusal_scorer(), cfg, tmp_path, seed=6, progress=False, monitor=monitor)
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["objective/scores"] for r in rows] == [0.0, 1.0] and rows[1]["objective/kl"] > 1e-9
    assert result.extra["keep_best"]["step"] == 1 and result.extra["keep_best"]["updates_applied"] == 0
    kept, initial = _weights(tmp_path / "model"), _weights(Path(prepare_model(tiny_model)))
    assert all(torch.equal(kept[k], initial[k]) for k in kept)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.mark.parametrize("value_network", ["separate", "shared"])
def test_gradient_checkpointing_changes_nothing_but_memory(
    tiny_model: str, tmp_path: Path, value_network: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recomputing each layer's forward in the backward pass gives bit-identical gradients, so identical runs.
    # A counter around torch's checkpoint (as transformers imported it) shows the recomputation really ran.
    import transformers.modeling_utils

    recomputed = []
    checkpoint = transformers.modeling_utils.checkpoint

    def counting_checkpoint(*args: object, **kwargs: object) -> object:
        recomputed.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    runs = {}
    for checkpointing in (False, True):
        recomputed.clear()
        cfg = _cfg(gradient_checkpointing=checkpointing, value_network=value_network)
        out = tmp_path / str(checkpointing)
        train_ppo(PROMPTS, tiny_model, refusal_scorer(), cfg, out, seed=3, progress=False)
        runs[checkpointing] = (_rows(out / "metrics.jsonl"), _weights(out / "model"), len(recomputed))
    (rows, weights, plain_calls), (gc_rows, gc_weights, gc_calls) = runs[False], runs[True]
    # 2 updates x 2 epochs x 4 micro-batches (minibatches of 2, micro-batches of 1) x 2 layers, in each
    # checkpointed transformer: the policy, and the value model when it is a separate one.
    assert plain_calls == 0 and gc_calls == 2 * 2 * 4 * 2 * (2 if value_network == "separate" else 1)
    assert gc_rows == rows and rows[1]["objective/kl"] != 0.0
    assert all(torch.equal(gc_weights[k], weights[k]) for k in weights)


def test_value_model_starts_from_a_reward_model_head(tiny_model: str, tmp_path: Path) -> None:
    classifier = AutoModelForSequenceClassification.from_pretrained(prepare_model(tiny_model), num_labels=1)
    torch.nn.init.normal_(classifier.score.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    classifier.save_pretrained(tmp_path)
    value_net = load_value_model(str(tmp_path), torch.device("cpu"), zero_head=False)
    assert torch.equal(value_net.score.weight, classifier.score.weight)  # the trained head is kept, not zeroed

    tokens = torch.tensor([[17, 423, 88, 901, 12]])
    with torch.no_grad():
        per_token = forward_values(value_net, tokens, torch.ones_like(tokens))  # (1, 5)
        pooled = classifier(input_ids=tokens).logits  # the classifier's own reward: the head at the last token
    assert per_token.shape == (1, 5)
    assert per_token[0, -1].item() == pytest.approx(pooled.item(), abs=1e-5)
    assert per_token.std().item() > 0  # a value at every position, not one repeated number


def test_bad_inputs_name_the_problem(tiny_model: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ppo.ptx_coef is 0.5 but no SFT examples"):
        train_ppo(PROMPTS, tiny_model, refusal_scorer(), _cfg(ptx_coef=0.5), tmp_path, 0, progress=False)
    with pytest.raises(ValueError, match="longer than ppo.max_prompt_tokens=8"):
        train_ppo(PROMPTS, tiny_model, refusal_scorer(), _cfg(max_prompt_tokens=8), tmp_path, 0, progress=False)

    def scalar_scorer(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor(1.0)

    with pytest.raises(ValueError, match=r"score_fn returned shape \(\) for 4 responses"):
        train_ppo(PROMPTS, tiny_model, scalar_scorer, _cfg(), tmp_path, 0, progress=False)


def test_run_ppo_reads_the_run_and_skips_a_finished_stage(tiny_model: str, tmp_path: Path) -> None:
    from rlaif.config import RewardModelConfig
    from rlaif.stages.reward_model import train_reward_model

    labels = [
        LabelRecord(id=f"l{i}", prompt=p, response_a="I can't help with that.", response_b="Sure, here is how.",
                    p_a=0.8 if looks_harmful(p) else 0.3, judgements=[])
        for i, p in enumerate(PROMPTS)
    ]  # fmt: skip
    rm_cfg = RewardModelConfig(batch_size=4, micro_batch_size=4, eval_fraction=0.0, dtype="float32")
    train_reward_model(labels, tiny_model, rm_cfg, tmp_path / "rm", seed=0, progress=False)

    store = ArtifactStore(tmp_path / "store")
    write_jsonl(
        store.path("r1", INPUTS, PROMPTS_FILE), [PromptItem(id=f"p{i}", prompt=p) for i, p in enumerate(PROMPTS)]
    )
    cfg = RunConfig(seed=1, ppo=_cfg(), eval=EvalConfig(monitor=MonitorConfig(keep_best="objective/rlhf_reward")))
    result = run_ppo(
        StageContext.of(
            store, "r1", "ppo", cfg=cfg, models={"policy": tiny_model, "reward_model": str(tmp_path / "rm" / "model")}
        ),
        progress=False,
    )
    meta = json.loads(store.path("r1", "ppo", "model", "meta.json").read_text())
    assert meta["reward_model"] == str(tmp_path / "rm" / "model") and meta["run_config"]["ppo"]["total_episodes"] == 8
    assert meta["counts"]["prompts_in"] == 8 and meta["metrics"] == result.metrics
    assert result.extra["keep_best"]["metric"] == "objective/rlhf_reward"  # eval.monitor reached train_ppo
    if not detect_vllm():  # 'auto' without vllm installed: the policy samples, as before auto was the default
        assert cfg.ppo.rollout_backend == "auto"
        assert (result.extra["backend"], result.extra["backend_reason"]) == (
            "transformers",
            "auto: transformers (vllm not installed)",
        )

    weights = store.path("r1", "ppo", "model", "model.safetensors").stat().st_mtime_ns
    again = run_ppo(
        StageContext.of(
            store, "r1", "ppo", cfg=cfg, models={"policy": tiny_model, "reward_model": str(tmp_path / "rm" / "model")}
        ),
        progress=False,
    )
    assert again.metrics == result.metrics and again.extra == result.extra  # redelivered: not trained again
    assert store.path("r1", "ppo", "model", "model.safetensors").stat().st_mtime_ns == weights


def test_cli_runs_ppo_on_its_own(tiny_model: str, tmp_path: Path) -> None:
    from rlaif.cli import app

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": p} for p in PROMPTS])
    overrides = ["ppo.total_episodes=4", "ppo.prompts_per_step=4", "ppo.response_length=4", "ppo.ppo_epochs=1"]
    args = ["ppo", "--prompts", str(prompts), "--scorer", "refusal", "--out", str(tmp_path / "out"),
            "--policy-model", tiny_model]  # fmt: skip
    result = CliRunner().invoke(app, args + [x for o in overrides for x in ("--set", o)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["counts"]["episodes"] == 4
    verify_manifest(tmp_path / "out" / "model")

    missing = CliRunner().invoke(app, ["ppo", "--prompts", str(prompts), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "needs --reward-model" in missing.output


@pytest.mark.slow
def test_ppo_raises_the_refusal_score_of_the_embedded_model(
    embedded_model: str, packaged_data: Path, tmp_path: Path
) -> None:
    """PPO against the rule-based refusal scorer on red-team prompts: the mean score rises, KL stays bounded.

    python -m pytest tests/stages/test_ppo.py -m slow -s
    """
    red_team = [json.loads(line)["prompt"] for line in (packaged_data / "red_team_prompts.dev.jsonl").open()]
    prompts = [p for p in red_team if looks_harmful(p) and len(p) < 80][:32]
    # lam = 1: the value model starts at zero, so the whole end-of-response score reaches the opening tokens,
    # where a refusal is decided. No annealing: 6 updates are too few to spend half of them at a small lr.
    # 16 episodes per update: with 8 the score is sparse enough (1 refusal in 8 at the start) that the outcome
    # hung on the sampling seed (+0.42 with one random stream, +0.03 with another); with 16 seeds 0 and 1 both
    # gave +0.50 and +0.30.
    cfg = PPOConfig(
        total_episodes=96, prompts_per_step=16, num_minibatches=1, micro_batch_size=4, ppo_epochs=2,
        response_length=24, learning_rate=2e-5, anneal_lr=False, lam=1.0, temperature=0.7, kl_coef=0.05,
        sample_every=2,
    )  # fmt: skip
    scorer = refusal_scorer()
    before = _mean_score(embedded_model, prompts, scorer, cfg)
    train_ppo(prompts, embedded_model, scorer, cfg, tmp_path, seed=0, progress=False)
    after = _mean_score(str(tmp_path / "model"), prompts, scorer, cfg)
    rows = _rows(tmp_path / "metrics.jsonl")
    print(f"\nmean refusal score on {len(prompts)} red-team prompts: before {before:.3f}, after {after:.3f}; "
          f"per-update scores {[round(r['objective/scores'], 3) for r in rows]}, "
          f"KL {[round(r['objective/kl'], 3) for r in rows]}")  # fmt: skip
    assert after > before + 0.2
    assert max(r["objective/kl"] for r in rows) < 10.0  # nats per sequence of <= 24 tokens


def _mean_score(model_name: str, prompts: list[str], scorer: ScoreFn, cfg: PPOConfig) -> float:
    """Mean score of two sampled responses per prompt (fixed seed): the evaluation before and after PPO."""
    tokenizer, model = load_tokenizer(model_name), load_causal_lm(model_name, device="cpu")
    kept, queries, _ = _encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    kept, queries = kept * 2, queries * 2  # two samples per prompt: the standard error shrinks by sqrt(2)
    width = max(map(len, queries))
    b_queries = torch.tensor([[tokenizer.pad_token_id] * (width - len(q)) + q for q in queries])
    b_mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in queries])
    responses = sample_responses(model, b_queries, b_mask, cfg.response_length, cfg.temperature,
                                 tokenizer.eos_token_id, torch.Generator().manual_seed(1234))  # fmt: skip
    responses, mask = truncate_at_stop_token(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode([r[m] for r, m in zip(responses, mask, strict=True)], skip_special_tokens=True)
    return scorer(kept, texts).mean().item()
