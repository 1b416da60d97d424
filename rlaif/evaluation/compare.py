"""Answers of several models to the same prompts, and the judge's preference between two models' answers.

Every model answers with the same sampling settings and the same seed (greedy by default), so differences come
from the weights. A comparison "model vs baseline" on an axis (harmless or helpful) judges each prompt's pair of
answers with `rlaif.judging.judge.judge_comparisons`: `eval.principles_per_pair` principles of the axis (drawn per
pair from a seed and the pair id), each read in both orders, averaged into P(model's answer is better). Identical
answers are a tie (P = 1/2) without asking the judge: the judge would only measure its own rounding.
`judge_head_to_head` judges two runs' answers against each other the same way (rlaif/evaluation/head_to_head.py).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rlaif.config import RunConfig
from rlaif.constitution import Constitution
from rlaif.evaluation.datasets import EvalPrompt
from rlaif.evaluation.head_to_head import AXES, HeadToHeadAxis, PairedAnswers
from rlaif.evaluation.head_to_head import ROLES as HEAD_TO_HEAD_ROLES
from rlaif.evaluation.stats import win_rate
from rlaif.generation import Completion, make_generator
from rlaif.generation.common import derive_seed
from rlaif.judging.judge import judge_comparisons
from rlaif.records import Axis, Comparison, WinOutcome

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlaif.generation import Generator

log = logging.getLogger(__name__)


def generate_answers(
    models: dict[str, str], prompts: Sequence[EvalPrompt], cfg: RunConfig, progress: bool = True
) -> dict[str, list[Completion]]:
    """{role: one completion per prompt}. Roles that name the same model share one generation pass."""
    conversations = [[{"role": "user", "content": p.prompt}] for p in prompts]
    seed = derive_seed(cfg.seed, "evaluate")
    by_name: dict[str, list[Completion]] = {}
    for role, name in models.items():
        if name in by_name:
            continue
        log.info("answering %d evaluation prompts with %s (%s)", len(prompts), name, role)
        generator = make_generator(name, cfg.generation)
        # A prompt too long for the model's context is cut to fit (rlaif/truncation.py): prompt_truncated says so.
        completions = generator.generate(conversations, 1, cfg.eval.sampling, seed, progress=progress, fit_context=True)
        by_name[name] = [c[0] for c in completions]
        del generator
        gc.collect()  # one model at a time in memory
    return {role: by_name[name] for role, name in models.items()}


def generate_candidates(
    name: str, prompts: Sequence[EvalPrompt], cfg: RunConfig, n: int, progress: bool = True
) -> list[list[Completion]]:
    """n sampled completions per prompt from `name` for best-of-n: eval.sampling at eval.best_of_n_temperature
    (same top_p and max_new_tokens as the other models' answers), with a seed of their own."""
    conversations = [[{"role": "user", "content": p.prompt}] for p in prompts]
    sampling = cfg.eval.sampling.model_copy(update={"temperature": cfg.eval.best_of_n_temperature})
    log.info("sampling %d candidates for each of %d evaluation prompts with %s (best-of-n)", n, len(prompts), name)
    generator = make_generator(name, cfg.generation)
    completions = generator.generate(
        conversations, n, sampling, derive_seed(cfg.seed, "evaluate", "best_of_n"), progress=progress, fit_context=True
    )
    del generator
    gc.collect()
    return completions


def judge_axis(
    prompts: Sequence[EvalPrompt],
    model_answers: Sequence[str],
    baseline_answers: Sequence[str],
    roles: tuple[str, str],
    axis: Axis,
    judge_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    constitution: Constitution,
    cfg: RunConfig,
    *,
    generator: Generator | None = None,
    progress: bool = True,
) -> list[WinOutcome]:
    """WinOutcome of each prompt on `axis`, model answer as response_a, baseline answer as response_b."""
    model_role, baseline_role = roles
    selectors = cfg.eval.harmless_principles if axis == "harmless" else cfg.eval.helpful_principles
    judge_cfg = cfg.judge.model_copy(update={"principles_per_label": cfg.eval.principles_per_pair})
    outcomes: dict[str, WinOutcome] = {}
    to_judge: list[Comparison] = []
    for prompt, ours, theirs in zip(prompts, model_answers, baseline_answers, strict=True):
        if ours.strip() == theirs.strip():
            outcomes[prompt.id] = WinOutcome(
                prompt_id=prompt.id, axis=axis, model=model_role, baseline=baseline_role, p=0.5, identical=True
            )
            continue
        to_judge.append(
            Comparison(
                id=f"{prompt.id}|{model_role}>{baseline_role}|{axis}",
                prompt=prompt.prompt,
                response_a=ours,
                response_b=theirs,
            )
        )
    if to_judge:
        log.info("judging %d %s pairs, %s vs %s", len(to_judge), axis, model_role, baseline_role)
        labels = judge_comparisons(
            to_judge,
            judge_model,
            tokenizer,
            constitution,
            selectors,
            judge_cfg,
            cfg.seed,
            generator=generator,
            progress=progress,
        )
        for comparison, label in zip(to_judge, labels, strict=True):
            prompt_id = comparison.id.split("|", 1)[0]
            outcomes[prompt_id] = WinOutcome(
                prompt_id=prompt_id,
                axis=axis,
                model=model_role,
                baseline=baseline_role,
                p=label.p_a,
                flips=[j.flip for j in label.judgements],
                principles=[j.principle_id for j in label.judgements],
                truncated=label.truncated,
            )
    return [outcomes[p.id] for p in prompts]


def judge_head_to_head(
    pairs: PairedAnswers,
    judge_model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase | None,
    constitution: Constitution,
    cfg: RunConfig,
    *,
    generator: Generator | None = None,
    progress: bool = True,
) -> list[HeadToHeadAxis]:
    """A's win rate over B per axis (the prompts of the axis's kinds), judged as the evaluation judges its
    win rates (`judge_axis`) and summed up as its report does (eval.tie_margin, eval.bootstrap_resamples, the
    run's seed). `judge_model` may be None only when every pair is identical (nothing to ask the judge)."""
    if not pairs.prompts:
        raise ValueError("the two runs' evaluations share no prompt (same id and text): nothing to compare")
    axes = []
    for axis in AXES:
        chosen = [i for i, p in enumerate(pairs.prompts) if axis in p.axes]
        if not chosen:
            continue
        outcomes = judge_axis(
            [pairs.prompts[i] for i in chosen],
            [pairs.answers_a[i] for i in chosen],
            [pairs.answers_b[i] for i in chosen],
            HEAD_TO_HEAD_ROLES,
            axis,
            judge_model,  # type: ignore[arg-type]
            tokenizer,  # type: ignore[arg-type]
            constitution,
            cfg,
            generator=generator,
            progress=progress,
        )
        stats = win_rate(
            [o.p for o in outcomes],
            tie_margin=cfg.eval.tie_margin,
            flips=[f for o in outcomes for f in o.flips],
            resamples=cfg.eval.bootstrap_resamples,
            seed=cfg.seed,
        )
        axes.append(HeadToHeadAxis(axis=axis, stats=stats))
    return axes
