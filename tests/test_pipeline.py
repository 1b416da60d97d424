"""The plan of a run per `policy_optimization`, and the helpers that name its policy and reward stages (pure)."""

from __future__ import annotations

import pytest

from rlaif.budget import estimate_budget
from rlaif.config import RunConfig
from rlaif.pipeline import (
    final_policy_stage,
    final_reward_stage,
    plan,
    policy_stage,
    resolve_stage,
    start_policy_stage,
)


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


def test_every_stage_kind_has_a_registered_celery_task() -> None:
    import importlib

    from rlaif.pipeline import TASKS
    from workers.app import TASK_MODULES, app

    for module in TASK_MODULES:
        importlib.import_module(module)
    assert set(TASKS.values()) <= set(app.tasks), sorted(set(TASKS.values()) - set(app.tasks))
    assert TASKS["dpo"] == "train.dpo"
