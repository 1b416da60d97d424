"""One RLAIF iteration with `policy_optimization: best_of_n`: rejection-sampling fine-tuning on the reward model's
favourites.

RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment", sec. 3 and
Algorithm 1), the best-of-n / rejection-sampling baseline of Bai et al. 2022 and of Llama 2's RLHF (sec. 3.2.3):
after the iteration's reward model is trained on the AI labels, the policy at the start of the iteration (SFT,
then the previous iteration's policy) samples n responses per training prompt (each prompt under a seed from its
id and the stage name, so every iteration samples afresh), the reward model scores them, and the policy is
fine-tuned on the best one per prompt with the SFT loop (rlaif/stages/sft.py `train_sft`: prompt masked, step
checkpoints and resume). No PPO: the reward model only ranks.

The chosen samples go to `<stage>/best.jsonl` with their score and every sample's score (written atomically before
training, so a resumed or redelivered stage fine-tunes on the same samples without sampling again).

    python -c "from rlaif.stages.best_of_n import run_best_of_n; from rlaif.stages.contract import StageContext; \
from rlaif.store import ArtifactStore; from rlaif.settings import settings; \
print(run_best_of_n(StageContext.of(ArtifactStore(settings.artifacts_dir), 'RUN_ID', 'best_of_n')))"
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from rlaif.checkpoints import checkpoint_meta, read_meta, remove_resume_states
from rlaif.config import BestOfNConfig
from rlaif.costs import best_of_n_cost
from rlaif.generation import Generator, cached_generator, release_cached_generator
from rlaif.generation.backend_choice import generation_backend
from rlaif.generation.common import derive_seed
from rlaif.records import PromptItem, ResponseSet, SFTExample
from rlaif.scorers import ScoreFn
from rlaif.stages import METRICS_FILE, MODEL_DIR, PROMPTS_FILE, STEPS_DIR, StageResult
from rlaif.stages.contract import StageContext
from rlaif.stages.reward_model import reward_score_fn
from rlaif.stages.sft import train_sft
from rlaif.store import read_jsonl, read_manifest, write_jsonl
from rlaif.training import chunks

log = logging.getLogger(__name__)

BEST_FILE = "best.jsonl"  # the sample kept per prompt, with its score and every sample's
CHUNK_PROMPTS = 64  # prompts sampled (or scored) together; the stop check runs between chunks


class BestSample(BaseModel):
    """One line of best.jsonl: the reward model's favourite of a prompt's n samples."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The prompt's id.")
    prompt: str
    response: str = Field(description="The best-scored sample: the SFT target.")
    score: float = Field(description="Its reward-model score.")
    index: int = Field(description="Which of the n samples it is (the first of equal scores).")
    scores: list[float] = Field(description="The scores of all n samples, in sampling order.")


def best_of(scores: torch.Tensor) -> torch.Tensor:
    """(P,) index of the best of each prompt's samples, scores (P, n); the first one where scores tie."""
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ValueError(f"best_of: scores must be (prompts, n) with n >= 1, got {tuple(scores.shape)}")
    return scores.argmax(dim=1)  # (torch documents argmax as returning the first maximal index)


def sample_candidates(
    items: Sequence[PromptItem],
    cfg: BestOfNConfig,
    generator: Generator,
    seed: int,
    check: Callable[[], None] | None = None,
) -> list[ResponseSet]:
    """n = cfg.n samples per prompt, in input order; each prompt under a seed from `seed` and its id (the same text
    whichever chunk it is in). `check` runs between chunks (the runner's stop check)."""
    out: list[ResponseSet] = []
    for chunk in chunks(items, CHUNK_PROMPTS):
        outputs = generator.generate(
            [[{"role": "user", "content": item.prompt}] for item in chunk],
            cfg.n,
            cfg.sampling,
            seed=[derive_seed(seed, item.id) for item in chunk],
            progress=False,
            fit_context=True,  # a prompt too long for the context is cut (rlaif/truncation.py), not fatal
        )
        out += [
            ResponseSet(
                id=item.id,
                prompt=item.prompt,
                responses=[c.text for c in completions],
                finished=[c.finished for c in completions],
                prompt_truncated=any(c.prompt_truncated for c in completions),
            )
            for item, completions in zip(chunk, outputs, strict=True)
        ]
        if check is not None:
            check()
    return out


def pick_best(
    candidates: Sequence[ResponseSet], score_fn: ScoreFn, check: Callable[[], None] | None = None
) -> list[BestSample]:
    """Score every sample with `score_fn` and keep each prompt's best (`best_of`), in input order."""
    out: list[BestSample] = []
    for chunk in chunks(candidates, CHUNK_PROMPTS):
        n = len(chunk[0].responses)
        prompts = [c.prompt for c in chunk for _ in c.responses]
        responses = [text for c in chunk for text in c.responses]
        scores = score_fn(prompts, responses).float().cpu().view(len(chunk), n)  # (P, n), row p = prompt p's samples
        best = best_of(scores)  # (P,)
        out += [
            BestSample(
                id=c.id, prompt=c.prompt, response=c.responses[int(i)], score=float(row[i]), index=int(i),
                scores=row.tolist(),
            )
            for c, row, i in zip(chunk, scores, best, strict=True)
        ]  # fmt: skip
        if check is not None:
            check()
    return out


def best_metrics(best: Sequence[BestSample]) -> dict[str, float]:
    """best_of_n/* metrics: the mean score of the kept samples, of all samples, and what the ranking gained."""
    kept = sum(b.score for b in best) / len(best)
    everything = sum(sum(b.scores) / len(b.scores) for b in best) / len(best)
    return {
        "best_of_n/score_best": kept,
        "best_of_n/score_mean": everything,
        "best_of_n/gain": kept - everything,
        "best_of_n/best_chars": sum(len(b.response) for b in best) / len(best),
    }


# --- stage wrapper ---------------------------------------------------------------------------------------------


def run_best_of_n(ctx: StageContext) -> StageResult:
    """Stage wrapper: <run>/inputs/prompts.jsonl, the iteration's starting policy and its reward model ->
    <run>/<stage>/best.jsonl -> <run>/<stage>/model (SFT on the best samples).

    A finished stage (model folder with a manifest) is not trained again, and a best.jsonl that holds every
    training prompt is not sampled again: a redelivered task resumes SFT from its newest step checkpoint.
    """
    cfg, out_dir = ctx.cfg, ctx.out_dir
    if read_manifest(out_dir / MODEL_DIR) is not None:
        log.info("%s/%s already has a complete model; skipping training", ctx.run_id, ctx.name)
        remove_resume_states(out_dir, STEPS_DIR)  # (left behind if a worker died right after the save)
        meta = read_meta(out_dir / MODEL_DIR)
        return StageResult(
            stage=ctx.name,
            outputs=[MODEL_DIR, METRICS_FILE, BEST_FILE],
            counts=meta.get("counts", {}),
            metrics={**meta.get("metrics", {}), **meta.get("best_of_n", {})},
        )
    prompts = read_jsonl(ctx.path("prompts", PROMPTS_FILE), PromptItem)
    policy_model, reward_model = ctx.model("policy"), ctx.model("reward_model")
    best = _stored_best(ctx, prompts)
    # The sampling engine by the rule of rlaif/generation/backend_choice.py, for the run budget's estimate of the
    # stage's tokens (prompts x n x max_new_tokens).
    tokens = best_of_n_cost(cfg, len(prompts), 0).generated_tokens
    choice = generation_backend(policy_model, cfg.generation.backend, tokens, cfg.generation.vllm_break_even_tokens)
    if best is None:
        log.info("stage %s: generation backend %s", ctx.name, choice.reason)
        generator = cached_generator(policy_model, choice.applied_to(cfg.generation))
        # The stage name is part of the seed so that each RLAIF iteration samples afresh.
        candidates = sample_candidates(
            prompts, cfg.best_of_n, generator, derive_seed(cfg.seed, ctx.name), ctx.hooks.check
        )
        release_cached_generator()  # only one model in memory at a time: the policy, the reward model, then SFT's
        del generator
        score_fn = reward_score_fn(reward_model, batch_size=cfg.best_of_n.score_batch_size)
        best = pick_best(candidates, score_fn, ctx.hooks.check)
        del score_fn
        gc.collect()
        write_jsonl(out_dir / BEST_FILE, best)  # before training: a resumed stage fine-tunes on the same samples
    summary = best_metrics(best)
    counts = {"prompts_in": len(prompts), "samples": sum(len(b.scores) for b in best)}
    log.info(
        "stage %s: best of %d samples for %d prompts, mean score %.3f (all samples %.3f)",
        ctx.name, cfg.best_of_n.n, len(best), summary["best_of_n/score_best"], summary["best_of_n/score_mean"],
    )  # fmt: skip
    meta = checkpoint_meta(
        "best_of_n", policy_model, cfg, ctx.constitution_document(), counts=counts, run_id=ctx.run_id,
        policy_optimization="best_of_n", reward_model=str(reward_model), best_of_n=summary,
    )  # fmt: skip
    examples = [SFTExample(id=b.id, prompt=b.prompt, response=b.response) for b in best]
    result = train_sft(
        examples, policy_model, cfg.best_of_n.sft, out_dir, cfg.seed, meta=meta, on_step=ctx.hooks.on_step
    )
    return StageResult(
        stage=ctx.name,
        outputs=[MODEL_DIR, METRICS_FILE, BEST_FILE],
        counts={**counts, **result.counts},
        metrics={**result.metrics, **summary},
        extra=choice.as_extra(),
    )


def _stored_best(ctx: StageContext, prompts: Sequence[PromptItem]) -> list[BestSample] | None:
    """best.jsonl of an earlier attempt, when it holds exactly the training prompts (else None: sample again)."""
    path = ctx.out_dir / BEST_FILE
    if not path.is_file():
        return None
    best = read_jsonl(path, BestSample)
    if [b.id for b in best] != [p.id for p in prompts]:
        log.warning("%s does not hold the run's training prompts: sampling them again", path)
        return None
    return best
