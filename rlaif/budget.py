"""What a run will cost, estimated from its config and its prompt count alone (pure: no database, no torch).

A config can be valid field by field and still describe a run that never finishes: 100,000 prompts, shards of
1 and 16 responses per prompt make 12,000,000 judge shards per iteration. The service checks this estimate when a
run is created, against the server's limits (RLAIF_MAX_RUN_*, rlaif/settings.py), and counts its generated tokens
against the daily quota of the key. Per stage of the plan (rlaif/pipeline.py):

- items: what a sharded stage fans out over (prompts, comparisons) and the prompts the evaluation answers;
- shards: ceil(items / shard_size) per sharded stage, one row and one task each;
- generated_tokens: an upper bound, every completion at its max_new_tokens (critique: an answer, then a critique
  and a revision per round, and with critique.judge_filter the judge's chain of thought in both orders; pairs: K responses; the judge's chain of thought, both orders of each principle; PPO:
  total_episodes x response_length; online DPO: two samples per prompt and the judge's chain of thought; best-of-n:
  n samples per training prompt; the evaluation: base, SFT and aligned model on every evaluation prompt);
- optimizer_steps: SFT, reward-model and DPO steps (every prompt gives an SFT example, every comparison a label),
  PPO updates x ppo_epochs x num_minibatches, online DPO steps, and best-of-n's SFT steps (one example a prompt).

    python -c "from rlaif.budget import estimate_budget; from rlaif.config import RunConfig; print(estimate_budget(RunConfig(), 100, 25).total)"
"""

from __future__ import annotations

import math
from typing import NamedTuple

from rlaif.config import RunConfig
from rlaif.pipeline import plan

# The base, SFT and aligned models each answer every evaluation prompt (rlaif/stages/evaluate.py).
EVAL_MODELS = 3


class Cost(NamedTuple):
    """The cost of one stage, or of a whole run."""

    items: int = 0
    shards: int = 0
    generated_tokens: int = 0
    optimizer_steps: int = 0

    def __add__(self, other: object) -> Cost:  # (a NamedTuple's + would concatenate)
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(*(a + b for a, b in zip(self, other, strict=True)))


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


def training_steps(n: int, batch_size: int, epochs: int, eval_fraction: float, extra: float = 0.0) -> int:
    """Optimizer steps of a training stage on `n` examples: a held-out slice first, then `extra` x the rest mixed
    in (SFT's helpful_mix), in batches of `batch_size` for `epochs` epochs."""
    n_eval = min(n - 1, max(1, round(eval_fraction * n))) if eval_fraction > 0 and n >= 2 else 0
    n_train = (n - n_eval) + round(extra * (n - n_eval))
    return max(1, math.ceil(n_train / batch_size)) * epochs


def _sharded(items: int, shard_size: int, generated_tokens: int) -> Cost:
    return Cost(items=items, shards=math.ceil(items / shard_size), generated_tokens=generated_tokens)


def estimate_budget(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> RunBudget:
    """The cost of each stage of a run of `cfg` on `train_prompts` training and `eval_prompts` held-out prompts."""
    k = cfg.pairs.responses_per_prompt
    comparisons = train_prompts * k * (k - 1) // 2  # all C(K, 2) pairs of each prompt's responses
    judge = cfg.judge  # with chain of thought: one reasoning per principle and order of each comparison
    reasoning = judge.principles_per_label * 2 * judge.cot_sampling.max_new_tokens if judge.chain_of_thought else 0
    # The judge filter (rlaif/judging/revision_filter.py) judges each revision against its first answer, both orders
    # under the one principle it was revised for; every prompt counts, an upper bound (only harmful ones are revised).
    filtered = cfg.judge_filters_revisions and judge.chain_of_thought
    revision_filter = 2 * judge.cot_sampling.max_new_tokens if filtered else 0
    eval_items = min(eval_prompts, cfg.eval.max_prompts) + len(set(cfg.eval.extra_sets)) * cfg.eval.prompts_per_set
    ppo, online, best_of_n = cfg.ppo, cfg.online_dpo, cfg.best_of_n
    costs = {
        "critique": _sharded(
            train_prompts,
            cfg.shard_size,
            train_prompts * ((1 + 2 * cfg.critique.rounds) * cfg.critique.sampling.max_new_tokens + revision_filter),
        ),
        "sft": Cost(
            optimizer_steps=training_steps(
                train_prompts, cfg.sft.batch_size, cfg.sft.epochs, cfg.sft.eval_fraction, cfg.sft.helpful_mix or 0.0
            )
        ),
        "pairs": _sharded(train_prompts, cfg.shard_size, train_prompts * k * cfg.pairs.sampling.max_new_tokens),
        "judge": _sharded(comparisons, cfg.shard_size, comparisons * reasoning),
        "reward_model": Cost(
            optimizer_steps=training_steps(
                comparisons, cfg.reward_model.batch_size, cfg.reward_model.epochs, cfg.reward_model.eval_fraction
            )
        ),
        "ppo": Cost(
            generated_tokens=ppo.total_episodes * ppo.response_length,
            optimizer_steps=ppo.num_updates * ppo.ppo_epochs * ppo.num_minibatches,
        ),
        "dpo": Cost(
            optimizer_steps=training_steps(comparisons, cfg.dpo.batch_size, cfg.dpo.epochs, cfg.dpo.eval_fraction)
        ),
        # Two samples per prompt and the judge's chain of thought for each pair, every step.
        "online_dpo": Cost(
            generated_tokens=online.total_prompts * (2 * online.sampling.max_new_tokens + reasoning),
            optimizer_steps=online.steps,
        ),
        "best_of_n": Cost(
            generated_tokens=train_prompts * best_of_n.n * best_of_n.sampling.max_new_tokens,
            optimizer_steps=training_steps(
                train_prompts, best_of_n.sft.batch_size, best_of_n.sft.epochs, best_of_n.sft.eval_fraction
            ),
        ),
        "evaluate": Cost(
            items=eval_items, generated_tokens=EVAL_MODELS * eval_items * cfg.eval.sampling.max_new_tokens
        ),
    }
    return RunBudget({spec.name: costs[spec.kind] for spec in plan(cfg)}, train_prompts, eval_prompts)
