"""The stages of a run in order, and which stage's output feeds which (pure: no database, no Celery, no torch).

    critique -> sft -> pairs -> judge -> reward_model -> ppo              (iteration 1)
                       pairs-2 -> judge-2 -> reward_model-2 -> ppo-2      (iteration 2, from ppo's policy)
                       ...
                       evaluate                                           (base vs SFT vs the last policy)

With `policy_optimization: dpo` the reward model and PPO of each iteration are one DPO stage on the labels
(the SFT model stays the reference in every iteration; `OPTIMIZATION_STAGES`):

    critique -> sft -> pairs -> judge -> dpo -> pairs-2 -> judge-2 -> dpo-2 -> ... -> evaluate

Each stage is one folder under `<run>/` and one `StageRun` row. Sharded stages (critique, pairs, judge)
fan out over items, `shard_size` at a time; training stages (sft, reward_model, ppo, dpo) and evaluate are one
task each (`SINGLE_TASK`).
The Celery task of a stage is named after its queue ("judge.label_shard" runs on the `judge` queue).

    python -c "from rlaif.config import RunConfig; from rlaif.pipeline import plan; print(plan(RunConfig(iterations=2)))"
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from rlaif.config import RunConfig

StageKind = Literal["critique", "sft", "pairs", "judge", "reward_model", "ppo", "dpo", "evaluate"]

TASKS: dict[StageKind, str] = {
    "critique": "generate.critique_shard",
    "sft": "train.sft",
    "pairs": "generate.pairs_shard",
    "judge": "judge.label_shard",
    "reward_model": "train.reward_model",
    "ppo": "train.ppo",
    "dpo": "train.dpo",
    "evaluate": "generate.evaluate",  # generation and judge forward passes, no optimizer: the generate queue
}
SHARDED: frozenset[StageKind] = frozenset({"critique", "pairs", "judge"})
TRAINING: frozenset[StageKind] = frozenset({"sft", "reward_model", "ppo", "dpo"})
# One task each, under a stage lease (rlaif.runs.run_training), instead of shards.
SINGLE_TASK: frozenset[StageKind] = TRAINING | {"evaluate"}
EVALUATE_STAGE = "evaluate"  # the folder of the report (api/routes/reports.py reads <run>/evaluate/report.json)
# The stages that turn an iteration's labels into its policy, per RunConfig.policy_optimization; the model of the
# last one is the iteration's policy.
OPTIMIZATION_STAGES: dict[str, tuple[StageKind, ...]] = {
    "ppo": ("reward_model", "ppo"),
    "dpo": ("dpo",),
}
ALIASES = {
    "policy": "the final aligned policy (the last PPO or DPO stage)",
    "reward_model": "the last reward model (PPO runs only)",
    "sft": "the SFT model",
}


class StageSpec(NamedTuple):
    """One stage of a run's plan."""

    name: str  # folder and row name: "pairs", "pairs-2"
    kind: StageKind
    iteration: int
    task: str  # Celery task name; its prefix is the queue

    @property
    def queue(self) -> str:
        return self.task.split(".", 1)[0]

    @property
    def sharded(self) -> bool:
        return self.kind in SHARDED


def stage_name(kind: StageKind, iteration: int = 1) -> str:
    return kind if iteration == 1 else f"{kind}-{iteration}"


def _spec(kind: StageKind, iteration: int = 1) -> StageSpec:
    return StageSpec(stage_name(kind, iteration), kind, iteration, TASKS[kind])


def plan(cfg: RunConfig) -> list[StageSpec]:
    """The ordered stages of a run with this config."""
    stages = [_spec("critique"), _spec("sft")]
    for iteration in range(1, cfg.iterations + 1):
        stages += [_spec("pairs", iteration), _spec("judge", iteration)]
        stages += [_spec(kind, iteration) for kind in OPTIMIZATION_STAGES[cfg.policy_optimization]]
    # Stage 7 compares the models of the last iteration; its name stays "evaluate" whatever the iteration count.
    stages.append(StageSpec(EVALUATE_STAGE, "evaluate", cfg.iterations, TASKS["evaluate"]))
    return stages


def spec_of(cfg: RunConfig, name: str) -> StageSpec:
    for spec in plan(cfg):
        if spec.name == name:
            return spec
    raise ValueError(f"run has no stage {name!r}: its stages are {[s.name for s in plan(cfg)]}")


# ---------------------------------------------------------------- what feeds what


def policy_kind(cfg: RunConfig) -> StageKind:
    """The kind of stage that trains the policy of each iteration: "ppo" or "dpo"."""
    return OPTIMIZATION_STAGES[cfg.policy_optimization][-1]


def policy_stage(cfg: RunConfig, iteration: int) -> str:
    """The stage whose model is the policy at the end of `iteration`: "ppo", "dpo-2", ..."""
    return stage_name(policy_kind(cfg), iteration)


def final_policy_stage(cfg: RunConfig) -> str:
    """The stage of the run's final aligned policy (the alias `policy`, the model the evaluation compares)."""
    return policy_stage(cfg, cfg.iterations)


def start_policy_stage(cfg: RunConfig, iteration: int) -> str:
    """The stage whose model is the policy at the start of `iteration`: SFT, then the previous iteration's policy."""
    return "sft" if iteration == 1 else policy_stage(cfg, iteration - 1)


def pairs_stage(iteration: int) -> str:
    return stage_name("pairs", iteration)


def labels_stage(iteration: int) -> str:
    return stage_name("judge", iteration)


def reward_stage(iteration: int) -> str:
    return stage_name("reward_model", iteration)


def final_reward_stage(cfg: RunConfig) -> str | None:
    """The stage of the last reward model, or None for a run that trains none (policy_optimization=dpo)."""
    return reward_stage(cfg.iterations) if "reward_model" in OPTIMIZATION_STAGES[cfg.policy_optimization] else None


def resolve_stage(cfg: RunConfig, name_or_alias: str) -> str:
    """A stage name from an alias ("policy", "reward_model", "sft") or a stage name of the plan."""
    if name_or_alias == "policy":
        return final_policy_stage(cfg)
    if name_or_alias == "reward_model":
        reward = final_reward_stage(cfg)
        if reward is None:
            raise ValueError(f"a {cfg.policy_optimization} run trains no reward model")
        return reward
    return spec_of(cfg, name_or_alias).name
