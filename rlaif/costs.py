"""What one stage of each kind costs, from the run's config and prompt counts alone (pure: no database, no torch).

Each kind's row of the stage table (rlaif/pipeline.py `STAGES`) names its cost function here, and the run budget
(rlaif/budget.py) adds them up over the run's plan. This module imports neither: the table imports these functions
and the budget imports the table, so there is no cycle. Every cost function has the signature of `CostFn`.

- items: what a sharded stage fans out over (prompts, comparisons) and the prompts the evaluation answers;
- shards: ceil(items / shard_size) per sharded stage, one row and one task each;
- generated_tokens: an upper bound, every completion at its max_new_tokens;
- optimizer_steps: the optimizer steps (PPO: updates x ppo_epochs x num_minibatches) of a training stage.

    python -c "from rlaif.costs import judge_cost; from rlaif.config import RunConfig; print(judge_cost(RunConfig(), 100, 25))"
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from rlaif.config import RunConfig

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


# (cfg, train_prompts, eval_prompts) -> the cost of one stage of that kind in a run of cfg.
CostFn = Callable[[RunConfig, int, int], Cost]


def training_steps(n: int, batch_size: int, epochs: int, eval_fraction: float, extra: float = 0.0) -> int:
    """Optimizer steps of a training stage on `n` examples: a held-out slice first, then `extra` x the rest mixed
    in (SFT's helpful_mix), in batches of `batch_size` for `epochs` epochs."""
    n_eval = min(n - 1, max(1, round(eval_fraction * n))) if eval_fraction > 0 and n >= 2 else 0
    n_train = (n - n_eval) + round(extra * (n - n_eval))
    return max(1, math.ceil(n_train / batch_size)) * epochs


def comparisons(cfg: RunConfig, train_prompts: int) -> int:
    """All C(K, 2) pairs of each prompt's K responses: the judge's items and the labels the models train on."""
    k = cfg.pairs.responses_per_prompt
    return train_prompts * k * (k - 1) // 2


def judge_reasoning_tokens(cfg: RunConfig) -> int:
    """Tokens the judge writes per comparison: with chain of thought, one reasoning per principle and order."""
    judge = cfg.judge
    return judge.principles_per_label * 2 * judge.cot_sampling.max_new_tokens if judge.chain_of_thought else 0


def _sharded(items: int, shard_size: int, generated_tokens: int) -> Cost:
    return Cost(items=items, shards=math.ceil(items / shard_size), generated_tokens=generated_tokens)


def critique_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """An answer, then a critique and a revision per round, for every prompt; with the judge filter
    (rlaif/judging/revision_filter.py) the judge's reasoning for the revision against the first answer, both orders
    under the one principle it was revised for (every prompt counts: an upper bound, only harmful ones are revised)."""
    judge = cfg.judge
    revision_filter = (
        2 * judge.cot_sampling.max_new_tokens if cfg.judge_filters_revisions and judge.chain_of_thought else 0
    )
    tokens = train_prompts * ((1 + 2 * cfg.critique.rounds) * cfg.critique.sampling.max_new_tokens + revision_filter)
    return _sharded(train_prompts, cfg.shard_size, tokens)


def sft_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """Every prompt gives an SFT example; helpful_mix mixes in more."""
    sft = cfg.sft
    return Cost(
        optimizer_steps=training_steps(
            train_prompts, sft.batch_size, sft.epochs, sft.eval_fraction, sft.helpful_mix or 0.0
        )
    )


def pairs_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """K responses per prompt."""
    tokens = train_prompts * cfg.pairs.responses_per_prompt * cfg.pairs.sampling.max_new_tokens
    return _sharded(train_prompts, cfg.shard_size, tokens)


def judge_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """Every comparison, and the judge's chain of thought when it writes one."""
    n = comparisons(cfg, train_prompts)
    return _sharded(n, cfg.shard_size, n * judge_reasoning_tokens(cfg))


def reward_model_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """Every comparison gives a label."""
    rm = cfg.reward_model
    return Cost(
        optimizer_steps=training_steps(comparisons(cfg, train_prompts), rm.batch_size, rm.epochs, rm.eval_fraction)
    )


def ppo_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """total_episodes rollouts of response_length tokens; every update runs ppo_epochs x num_minibatches steps."""
    ppo = cfg.ppo
    return Cost(
        generated_tokens=ppo.total_episodes * ppo.response_length,
        optimizer_steps=ppo.num_updates * ppo.ppo_epochs * ppo.num_minibatches,
    )


def dpo_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """Trains on the labels; nothing generated."""
    dpo = cfg.dpo
    return Cost(
        optimizer_steps=training_steps(comparisons(cfg, train_prompts), dpo.batch_size, dpo.epochs, dpo.eval_fraction)
    )


def online_dpo_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """Two samples per prompt and the judge's chain of thought for each pair, every step."""
    online = cfg.online_dpo
    return Cost(
        generated_tokens=online.total_prompts * (2 * online.sampling.max_new_tokens + judge_reasoning_tokens(cfg)),
        optimizer_steps=online.steps,
    )


def best_of_n_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """n samples per training prompt, then SFT steps on one example a prompt."""
    best_of_n = cfg.best_of_n
    sft = best_of_n.sft
    return Cost(
        generated_tokens=train_prompts * best_of_n.n * best_of_n.sampling.max_new_tokens,
        optimizer_steps=training_steps(train_prompts, sft.batch_size, sft.epochs, sft.eval_fraction),
    )


def evaluate_cost(cfg: RunConfig, train_prompts: int, eval_prompts: int) -> Cost:
    """Base, SFT and aligned model on every evaluation prompt (held out, capped, and the named extra sets)."""
    items = min(eval_prompts, cfg.eval.max_prompts) + len(set(cfg.eval.extra_sets)) * cfg.eval.prompts_per_set
    return Cost(items=items, generated_tokens=EVAL_MODELS * items * cfg.eval.sampling.max_new_tokens)
