"""The stages of a run: one closed table (`STAGES`) of what each kind of stage is, reads and writes, and the plan of
a run built from it (pure: no database, no Celery, no torch).

    critique -> sft -> pairs -> judge -> reward_model -> ppo              (iteration 1)
                       pairs-2 -> judge-2 -> reward_model-2 -> ppo-2      (iteration 2, from ppo's policy)
                       ...
                       evaluate                                           (base vs SFT vs the last policy)

With `policy_optimization: dpo` the reward model and PPO of each iteration are one DPO stage on the labels
(the SFT model stays the reference in every iteration; `ITERATION_STAGES`):

    critique -> sft -> pairs -> judge -> dpo -> pairs-2 -> judge-2 -> dpo-2 -> ... -> evaluate

With `online_dpo` an iteration is one stage that samples, judges and trains at every step (no offline pairs), and
with `best_of_n` the PPO stage of each iteration is fine-tuning on the reward model's best of n samples:

    critique -> sft -> online_dpo -> online_dpo-2 -> ... -> evaluate
    critique -> sft -> pairs -> judge -> reward_model -> best_of_n -> pairs-2 -> ... -> evaluate

Each stage is one folder under `<run>/`, one `StageRun` row and one module of `rlaif/stages/` with the stage
contract (rlaif/stages/contract.py). Sharded stages fan out over items, `shard_size` at a time; the others are one
task each. A stage's `reads` name its inputs by role ("policy", "labels"...) and where each comes from; the role
resolves to a stage of the run's plan (`upstream`), so no code outside this table knows which stage feeds which.
This is the table of the stages we ship, not a plugin registry: a module name here is never read from user input.
The Celery task of a stage is named after its queue ("judge.label_shard" runs on the `judge` queue).

    python -c "from rlaif.config import RunConfig; from rlaif.pipeline import plan; print(plan(RunConfig(iterations=2)))"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

from rlaif.config import RunConfig
from rlaif.costs import (
    CostFn,
    best_of_n_cost,
    critique_cost,
    dpo_cost,
    evaluate_cost,
    judge_cost,
    online_dpo_cost,
    pairs_cost,
    ppo_cost,
    reward_model_cost,
    sft_cost,
)
from rlaif.stages import (
    COMPARISONS_FILE,
    CRITIQUE_RECORDS_FILE,
    INPUTS,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_DIR,
    RESPONSES_FILE,
    SFT_DATA_FILE,
)

StageKind = Literal[
    "critique", "sft", "pairs", "judge", "reward_model", "ppo", "dpo", "online_dpo", "best_of_n", "evaluate"
]

# Where a read comes from: the run's pinned inputs, a stage kind (the stage of that kind in the reader's iteration,
# or the run's only one for critique and sft), or the policy at the start / end of the reader's iteration.
Source = Literal[
    "inputs", "critique", "sft", "pairs", "judge", "reward_model", "ppo", "online_dpo", "policy@start", "policy@end"
]


class StageDef(NamedTuple):
    """One kind of stage: how the service runs it and what it reads and writes."""

    task: str  # Celery task name; its prefix is the queue
    module: str  # rlaif.stages.<module>: the stage contract (rlaif/stages/contract.py)
    run: str  # the module's run_<stage>(ctx) -> StageResult, the composition of its contract
    sharded: bool  # fans out over items in shards (read_items / process / write), else one task
    reads: Mapping[str, Source]  # role -> where it comes from (`upstream`)
    writes: tuple[str, ...]  # artifacts in the stage folder (the manifest is written last, always)
    unit: str  # what its progress counts: items for sharded stages, optimizer steps or PPO updates for training
    per_iteration: bool  # repeated in every RLAIF iteration ("pairs-2"...)
    cost: CostFn  # its items, shards, generated tokens and optimizer steps in the run budget (rlaif/costs.py)
    # The role (one of `reads`) whose checkpoint card this stage rewrites when it succeeds: the evaluation writes
    # its win rates into the final policy's model card, so that checkpoint's row is refreshed from the card.
    refreshes: str | None = None


REPORT_FILES = ("answers.jsonl", "report.json", "report.html")

STAGES: dict[StageKind, StageDef] = {
    "critique": StageDef(
        "generate.critique_shard", "critique_revise", "run_critique_revise", True,
        {"prompts": "inputs"}, (CRITIQUE_RECORDS_FILE, SFT_DATA_FILE), "prompts", False, critique_cost,
    ),
    "sft": StageDef(
        "train.sft", "sft", "run_sft", False, {"data": "critique"}, (MODEL_DIR, METRICS_FILE), "steps", False, sft_cost,
    ),
    "pairs": StageDef(
        "generate.pairs_shard", "sample_pairs", "run_sample_pairs", True,
        {"prompts": "inputs", "policy": "policy@start"}, (RESPONSES_FILE, COMPARISONS_FILE), "prompts", True,
        pairs_cost,
    ),
    "judge": StageDef(
        "judge.label_shard", "judge", "run_judge", True,
        {"comparisons": "pairs"}, (LABELS_FILE,), "pairs", True, judge_cost,
    ),
    "reward_model": StageDef(
        "train.reward_model", "reward_model", "run_reward_model", False,
        {"labels": "judge", "base": "sft"}, (MODEL_DIR, METRICS_FILE), "steps", True, reward_model_cost,
    ),
    "ppo": StageDef(
        "train.ppo", "ppo", "run_ppo", False,
        {"prompts": "inputs", "policy": "policy@start", "reward_model": "reward_model", "sft_data": "critique"},
        (MODEL_DIR, METRICS_FILE, "samples.jsonl"), "updates", True, ppo_cost,
    ),
    "dpo": StageDef(
        "train.dpo", "dpo", "run_dpo", False,
        {"labels": "judge", "policy": "policy@start", "reference": "sft"},
        (MODEL_DIR, METRICS_FILE, "ref_logps.jsonl"), "steps", True, dpo_cost,
    ),
    # Samples and judges at every optimizer step (the judge runs in this task: no judge shards), so it is one
    # training task; labels/ holds each step's judged pairs.
    "online_dpo": StageDef(
        "train.online_dpo", "online_dpo", "run_online_dpo", False,
        {"prompts": "inputs", "policy": "policy@start", "reference": "sft"},
        (MODEL_DIR, METRICS_FILE, "labels"), "steps", True, online_dpo_cost,
    ),
    "best_of_n": StageDef(
        "train.best_of_n", "best_of_n", "run_best_of_n", False,
        {"prompts": "inputs", "policy": "policy@start", "reward_model": "reward_model"},
        (MODEL_DIR, METRICS_FILE, "best.jsonl"), "steps", True, best_of_n_cost,
    ),
    # Generation and judge forward passes, no optimizer: the generate queue.
    "evaluate": StageDef(
        "generate.evaluate", "evaluate", "run_evaluate", False,
        {"sft": "sft", "policy": "policy@end", "reward_model": "reward_model", "labels": "judge", "ppo": "ppo",
         "online_labels": "online_dpo", "critique": "critique", "eval_prompts": "inputs"},
        REPORT_FILES, "prompts", False, evaluate_cost, refreshes="policy",
    ),
}  # fmt: skip

TASKS: dict[StageKind, str] = {kind: stage.task for kind, stage in STAGES.items()}
SHARDED: frozenset[StageKind] = frozenset(kind for kind, stage in STAGES.items() if stage.sharded)
TRAINING: frozenset[StageKind] = frozenset(kind for kind, stage in STAGES.items() if MODEL_DIR in stage.writes)
SINGLE_TASK: frozenset[StageKind] = frozenset(STAGES) - SHARDED
EVALUATE_STAGE = "evaluate"  # the folder of the report (api/routes/reports.py reads <run>/evaluate/report.json)
# The stages of one RLAIF iteration, per RunConfig.policy_optimization; the model of the last one is the
# iteration's policy.
ITERATION_STAGES: dict[str, tuple[StageKind, ...]] = {
    "ppo": ("pairs", "judge", "reward_model", "ppo"),
    "dpo": ("pairs", "judge", "dpo"),
    "online_dpo": ("online_dpo",),
    "best_of_n": ("pairs", "judge", "reward_model", "best_of_n"),
}
ALIASES = {
    "policy": "the final aligned policy (the last stage of the last iteration: PPO, DPO, online DPO or best-of-n)",
    "reward_model": "the last reward model (PPO and best-of-n runs)",
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
        return STAGES[self.kind].sharded

    @property
    def definition(self) -> StageDef:
        return STAGES[self.kind]


def stage_name(kind: StageKind, iteration: int = 1) -> str:
    return kind if iteration == 1 or not STAGES[kind].per_iteration else f"{kind}-{iteration}"


def _spec(kind: StageKind, iteration: int = 1) -> StageSpec:
    return StageSpec(stage_name(kind, iteration), kind, iteration, STAGES[kind].task)


def plan(cfg: RunConfig) -> list[StageSpec]:
    """The ordered stages of a run with this config."""
    stages = [_spec("critique"), _spec("sft")]
    for iteration in range(1, cfg.iterations + 1):
        stages += [_spec(kind, iteration) for kind in ITERATION_STAGES[cfg.policy_optimization]]
    # Stage 7 compares the models of the last iteration; its name stays "evaluate" whatever the iteration count.
    stages.append(StageSpec(EVALUATE_STAGE, "evaluate", cfg.iterations, STAGES["evaluate"].task))
    return stages


def spec_of(cfg: RunConfig, name: str) -> StageSpec:
    for spec in plan(cfg):
        if spec.name == name:
            return spec
    raise ValueError(f"run has no stage {name!r}: its stages are {[s.name for s in plan(cfg)]}")


# ---------------------------------------------------------------- what feeds what


def upstream(cfg: RunConfig, spec: StageSpec, role: str) -> str | None:
    """The folder the stage `spec` reads its `role` from: "inputs" or a stage of the run's plan; None when the run
    has no such stage (the reward model of a DPO run). An unknown role is a ValueError naming the known ones."""
    reads = STAGES[spec.kind].reads
    if role not in reads:
        raise ValueError(f"stage {spec.name!r} ({spec.kind}) reads no {role!r}: it reads {sorted(reads)}")
    source = reads[role]
    if source == "inputs":
        return INPUTS
    if source == "policy@start":
        return start_policy_stage(cfg, spec.iteration)
    if source == "policy@end":
        return policy_stage(cfg, spec.iteration)
    name = stage_name(source, spec.iteration)
    return name if name in {s.name for s in plan(cfg)} else None


def policy_kind(cfg: RunConfig) -> StageKind:
    """The kind of stage that trains the policy of each iteration: "ppo", "dpo", "online_dpo" or "best_of_n"."""
    return ITERATION_STAGES[cfg.policy_optimization][-1]


def policy_stage(cfg: RunConfig, iteration: int) -> str:
    """The stage whose model is the policy at the end of `iteration`: "ppo", "dpo-2", ..."""
    return stage_name(policy_kind(cfg), iteration)


def final_policy_stage(cfg: RunConfig) -> str:
    """The stage of the run's final aligned policy (the alias `policy`, the model the evaluation compares)."""
    return policy_stage(cfg, cfg.iterations)


def start_policy_stage(cfg: RunConfig, iteration: int) -> str:
    """The stage whose model is the policy at the start of `iteration`: SFT, then the previous iteration's policy."""
    return "sft" if iteration == 1 else policy_stage(cfg, iteration - 1)


def final_reward_stage(cfg: RunConfig) -> str | None:
    """The stage of the last reward model, or None for a run that trains none (dpo, online_dpo)."""
    return upstream(cfg, spec_of(cfg, EVALUATE_STAGE), "reward_model")


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
