"""What a run will cost, estimated from its config and its prompt count alone (pure: no database, no torch).

A config can be valid field by field and still describe a run that never finishes: 100,000 prompts, shards of
1 and 16 responses per prompt make 12,000,000 judge shards per iteration. The service checks this estimate when a
run is created, against the server's limits (RLAIF_MAX_RUN_*, rlaif/settings.py), and counts its generated tokens
against the daily quota of the key. Each stage of the plan (rlaif/pipeline.py) costs what its row of the stage
table says (`StageDef.cost`, a function of rlaif/costs.py):

- items: what a sharded stage fans out over (prompts, comparisons) and the prompts the evaluation answers;
- shards: ceil(items / shard_size) per sharded stage, one row and one task each;
- generated_tokens: an upper bound, every completion at its max_new_tokens (critique: an answer, then a critique
  and a revision per round, and with critique.judge_filter the judge's chain of thought in both orders; pairs: K
  responses; the judge's chain of thought, both orders of each principle; PPO:
  total_episodes x response_length; online DPO: two samples per prompt and the judge's chain of thought; best-of-n:
  n samples per training prompt; the evaluation: base, SFT and aligned model on every evaluation prompt);
- optimizer_steps: SFT, reward-model and DPO steps (every prompt gives an SFT example, every comparison a label),
  PPO updates x ppo_epochs x num_minibatches, online DPO steps, and best-of-n's SFT steps (one example a prompt).

    python -c "from rlaif.budget import estimate_budget; from rlaif.config import RunConfig; print(estimate_budget(RunConfig(), 100, 25).total)"
"""

from __future__ import annotations

from typing import NamedTuple

from rlaif.config import RunConfig
from rlaif.costs import Cost, training_steps
from rlaif.pipeline import plan

__all__ = ["Cost", "Exceeded", "RunBudget", "estimate_budget", "training_steps"]


class Exceeded(NamedTuple):
    """One figure of a run above its limit, with the stage that costs the most of it."""

    figure: str  # a Cost field name
    estimate: int
    limit: int
    stage: str
    stage_estimate: int


class RunBudget(NamedTuple):
    """The estimated cost of each stage of a run, in plan order, and their sum."""

    stages: dict[str, Cost]
    train_prompts: int
    eval_prompts: int

    @property
    def total(self) -> Cost:
        return sum(self.stages.values(), Cost())

    def exceeded(self, limits: Cost) -> list[Exceeded]:
        """Every figure above its limit (limits of 0 or less are no limit)."""
        out = []
        total = self.total
        for figure in Cost._fields:
            estimate, limit = getattr(total, figure), getattr(limits, figure)
            if limit > 0 and estimate > limit:
                stage = max(self.stages, key=lambda name: getattr(self.stages[name], figure))
                out.append(Exceeded(figure, estimate, limit, stage, getattr(self.stages[stage], figure)))
        return out


def estimate_budget(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> RunBudget:
    """The cost of each stage of a run of `cfg` on `train_prompts` training and `eval_prompts` held-out prompts."""
    stages = {spec.name: spec.definition.cost(cfg, train_prompts, eval_prompts) for spec in plan(cfg)}
    return RunBudget(stages, train_prompts, eval_prompts)
