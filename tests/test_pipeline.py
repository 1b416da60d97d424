"""The plan of a run per `policy_optimization`, and the helpers that name its policy and reward stages (pure)."""

from __future__ import annotations

import pytest

from rlaif.budget import estimate_budget
from rlaif.config import RunConfig
from rlaif.pipeline import (
    STAGES,
    final_policy_stage,
    final_reward_stage,
    plan,
    policy_stage,
    resolve_stage,
    spec_of,
    start_policy_stage,
    upstream,
)
from rlaif.stages import MODEL_DIR


def _names(cfg: RunConfig) -> list[str]:
    return [spec.name for spec in plan(cfg)]


def test_a_dpo_run_replaces_the_reward_model_and_ppo_by_one_dpo_stage() -> None:
    cfg = RunConfig(policy_optimization="dpo")
    assert _names(cfg) == ["critique", "sft", "pairs", "judge", "dpo", "evaluate"]
    spec = plan(cfg)[4]
    assert (spec.kind, spec.task, spec.queue, spec.sharded) == ("dpo", "train.dpo", "train", False)
    assert RunConfig().policy_optimization == "ppo"  # the default run is unchanged
    assert _names(RunConfig()) == ["critique", "sft", "pairs", "judge", "reward_model", "ppo", "evaluate"]


def test_dpo_iterations_start_from_the_previous_dpo_policy() -> None:
    cfg = RunConfig(policy_optimization="dpo", iterations=3)
    assert _names(cfg) == [
        "critique", "sft", "pairs", "judge", "dpo", "pairs-2", "judge-2", "dpo-2", "pairs-3", "judge-3", "dpo-3",
        "evaluate",
    ]  # fmt: skip
    assert [start_policy_stage(cfg, i) for i in (1, 2, 3)] == ["sft", "dpo", "dpo-2"]
    assert [policy_stage(cfg, i) for i in (1, 2, 3)] == ["dpo", "dpo-2", "dpo-3"]
    assert final_policy_stage(cfg) == resolve_stage(cfg, "policy") == "dpo-3"
    assert final_reward_stage(cfg) is None
    with pytest.raises(ValueError, match="a dpo run trains no reward model"):
        resolve_stage(cfg, "reward_model")
    ppo = RunConfig(iterations=2)
    assert [start_policy_stage(ppo, i) for i in (1, 2)] == ["sft", "ppo"]
    assert resolve_stage(ppo, "policy") == "ppo-2" and resolve_stage(ppo, "reward_model") == "reward_model-2"


def test_the_budget_of_a_dpo_run_counts_dpo_steps_and_no_rollouts() -> None:
    # 100 prompts, K = 2: 100 comparisons; 10 held out, 90 in batches of 8 -> 12 steps per epoch.
    budget = estimate_budget(RunConfig(policy_optimization="dpo"), 100, 25)
    assert set(budget.stages) == {"critique", "sft", "pairs", "judge", "dpo", "evaluate"}
    assert budget.stages["dpo"].optimizer_steps == 12 and budget.stages["dpo"].generated_tokens == 0


def test_an_online_dpo_run_is_one_stage_per_iteration_from_the_newest_policy() -> None:
    cfg = RunConfig(policy_optimization="online_dpo", iterations=2)
    assert _names(cfg) == ["critique", "sft", "online_dpo", "online_dpo-2", "evaluate"]
    second = spec_of(cfg, "online_dpo-2")
    assert (second.kind, second.iteration, second.task, second.sharded) == ("online_dpo", 2, "train.online_dpo", False)
    # Iteration 2 samples from iteration 1's policy; the SFT model stays the reference.
    assert [upstream(cfg, second, role) for role in ("prompts", "policy", "reference")] == [
        "inputs",
        "online_dpo",
        "sft",
    ]
    assert final_policy_stage(cfg) == resolve_stage(cfg, "policy") == "online_dpo-2"
    # No judge, reward model or PPO stage: the evaluation's reads of them resolve to nothing.
    evaluate = spec_of(cfg, "evaluate")
    assert [upstream(cfg, evaluate, role) for role in ("labels", "reward_model", "ppo")] == [None, None, None]
    assert final_reward_stage(cfg) is None
    # Its per-principle statistics read the step labels of the last iteration's online DPO stage instead.
    assert upstream(cfg, evaluate, "online_labels") == "online_dpo-2"
    assert upstream(RunConfig(), spec_of(RunConfig(), "evaluate"), "online_labels") is None  # (a PPO run)


def test_a_best_of_n_run_trains_a_reward_model_and_no_ppo() -> None:
    cfg = RunConfig(policy_optimization="best_of_n", iterations=2)
    assert _names(cfg) == [
        "critique", "sft", "pairs", "judge", "reward_model", "best_of_n",
        "pairs-2", "judge-2", "reward_model-2", "best_of_n-2", "evaluate",
    ]  # fmt: skip
    second = spec_of(cfg, "best_of_n-2")
    assert [upstream(cfg, second, role) for role in ("prompts", "policy", "reward_model")] == [
        "inputs", "best_of_n", "reward_model-2",
    ]  # fmt: skip
    assert upstream(cfg, spec_of(cfg, "pairs-2"), "policy") == "best_of_n"  # new pairs from the newest policy
    assert resolve_stage(cfg, "policy") == "best_of_n-2" and resolve_stage(cfg, "reward_model") == "reward_model-2"
    evaluate = spec_of(cfg, "evaluate")
    assert [upstream(cfg, evaluate, role) for role in ("labels", "reward_model", "ppo")] == [
        "judge-2", "reward_model-2", None,
    ]  # fmt: skip


def test_every_stage_kind_has_a_registered_celery_task() -> None:
    import importlib

    from rlaif.pipeline import TASKS
    from workers.app import TASK_MODULES, app

    for module in TASK_MODULES:
        importlib.import_module(module)
    assert set(TASKS.values()) <= set(app.tasks), sorted(set(TASKS.values()) - set(app.tasks))
    assert TASKS["dpo"] == "train.dpo"
    assert (TASKS["online_dpo"], TASKS["best_of_n"]) == ("train.online_dpo", "train.best_of_n")


def test_only_the_evaluation_refreshes_a_checkpoint_card_and_it_is_the_final_policys() -> None:
    """The service refreshes the checkpoint row of the role a stage `refreshes` (rlaif/service/execute.py)."""
    assert [kind for kind, stage in STAGES.items() if stage.refreshes is not None] == ["evaluate"]
    evaluate = STAGES["evaluate"]
    # It reads the checkpoint whose card it rewrites, and writes no model of its own.
    assert evaluate.refreshes in evaluate.reads and MODEL_DIR not in evaluate.writes
    for cfg in (RunConfig(iterations=2), RunConfig(policy_optimization="dpo")):
        assert upstream(cfg, spec_of(cfg, "evaluate"), evaluate.refreshes) == final_policy_stage(cfg)
