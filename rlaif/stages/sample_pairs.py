"""Stage 3: paired responses. K responses per prompt from the policy, and every pair of them to judge.

RL-CAI (Bai et al. 2022, sec. 4.1, "AI Feedback"): the SL-CAI (SFT) model answers each red-team prompt several
times; the feedback model then compares pairs of answers under a constitutional principle. With K responses a
prompt yields all C(K, 2) pairs; pairs of identical responses carry no preference and are skipped (and logged).

Pure core: `sample_responses` (items in, ResponseSets out, yielded chunk by chunk, each prompt under a seed
from its id) and `make_comparisons` (one ResponseSet in, its pairs out). The stage contract (read_items, process,
write, finished; rlaif/stages/contract.py): <run>/inputs/prompts.jsonl -> <run>/<stage>/responses.jsonl,
comparisons.jsonl and, last, manifest.json.

    python -c "from rlaif.stages.sample_pairs import run_sample_pairs; from rlaif.stages.contract import StageContext; \
from rlaif.store import ArtifactStore; from rlaif.settings import settings; \
print(run_sample_pairs(StageContext.of(ArtifactStore(settings.artifacts_dir), 'RUN_ID', 'pairs')))"
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator, Sequence

from rlaif.config import PairsConfig
from rlaif.costs import pairs_cost
from rlaif.generation import Generator, cached_generator
from rlaif.generation.backend_choice import BackendChoice, generation_backend
from rlaif.generation.common import derive_seed
from rlaif.records import Comparison, PromptItem, ResponseSet
from rlaif.stages import COMPARISONS_FILE, PROMPTS_FILE, RESPONSES_FILE, StageResult
from rlaif.stages.contract import StageContext, run_sharded
from rlaif.store import StoreError, read_jsonl, write_jsonl, write_manifest
from rlaif.truncation import LongItems

log = logging.getLogger(__name__)

CHUNK_SIZE = 16  # prompts per generate call: the unit of progress written to responses.jsonl


def sample_responses(
    items: Sequence[PromptItem],
    cfg: PairsConfig,
    generator: Generator,
    seed: int,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[ResponseSet]:
    """K = cfg.responses_per_prompt responses per prompt, in input order, yielded one chunk of prompts at a time.

    Each prompt is sampled under its own seed, derived from `seed` and the prompt's id, so its responses are the
    same whichever chunk or shard it is in (a shard resumed after a crash writes the same text).
    """
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        conversations = [[{"role": "user", "content": item.prompt}] for item in chunk]
        outputs = generator.generate(
            conversations,
            cfg.responses_per_prompt,
            cfg.sampling,
            seed=[derive_seed(seed, item.id) for item in chunk],
            progress=False,
            fit_context=True,  # a prompt too long for the context is cut (rlaif/truncation.py), not fatal
        )
        for item, completions in zip(chunk, outputs, strict=True):
            yield ResponseSet(
                id=item.id,
                prompt=item.prompt,
                responses=[c.text for c in completions],
                finished=[c.finished for c in completions],
                prompt_truncated=any(c.prompt_truncated for c in completions),
            )


def make_comparisons(responses: ResponseSet) -> list[Comparison]:
    """All C(K, 2) pairs (i < j) of a prompt's responses, id '<prompt id>:<i>:<j>'.

    Pairs of responses that are equal after stripping whitespace are skipped: the judge could only guess.
    """
    pairs = []
    for i, j in itertools.combinations(range(len(responses.responses)), 2):
        response_a, response_b = responses.responses[i], responses.responses[j]
        if response_a.strip() == response_b.strip():
            log.info(
                "prompt %s: responses %d and %d are identical; pair skipped (nothing to prefer)", responses.id, i, j
            )
            continue
        pairs.append(
            Comparison(
                id=f"{responses.id}:{i}:{j}", prompt=responses.prompt, response_a=response_a, response_b=response_b
            )
        )
    return pairs


# --- the stage contract (rlaif/stages/contract.py) ---------------------------------------------------------------

RECORD = ResponseSet


def read_items(ctx: StageContext, start: int = 0, stop: int | None = None) -> list[PromptItem]:
    """The run's training prompts (`start` to `stop`)."""
    items = read_jsonl(ctx.path("prompts", PROMPTS_FILE), PromptItem, start, stop)
    if not items and start == 0:
        raise StoreError(f"run {ctx.run_id}: {ctx.path('prompts', PROMPTS_FILE)} holds no prompts: nothing to sample")
    return items


def process(
    ctx: StageContext, items: Sequence[PromptItem], generator: Generator | None = None
) -> Iterator[ResponseSet]:
    """K responses per prompt from the policy at the start of this iteration (the SFT model, then the previous
    iteration's policy)."""
    if not items:
        return
    if generator is None:
        choice = backend_choice(ctx)
        log.info("stage %s: generation backend %s", ctx.name, choice.reason)
        generator = cached_generator(ctx.model("policy"), choice.applied_to(ctx.cfg.generation))
    # The stage name is part of the seed so that each RLAIF iteration samples afresh.
    yield from sample_responses(items, ctx.cfg.pairs, generator, derive_seed(ctx.cfg.seed, ctx.name))


def write(ctx: StageContext, records: Sequence[ResponseSet]) -> StageResult:
    """responses.jsonl, every pair of each prompt's responses in comparisons.jsonl, then the manifest."""
    folder = ctx.out_dir
    comparisons = [pair for record in records for pair in make_comparisons(record)]
    write_jsonl(folder / RESPONSES_FILE, records)
    write_jsonl(folder / COMPARISONS_FILE, comparisons)
    policy = ctx.model("policy", verify=False)
    result = stage_result(ctx.name, policy, list(records), comparisons)
    result.extra.update(backend_choice(ctx).as_extra())
    manifest = {"stage": ctx.name, "model": policy, "seed": ctx.cfg.seed, "counts": result.counts}
    write_manifest(folder, {**manifest, "metrics": result.metrics})
    log.info(
        "stage %s: %d prompts -> %d responses -> %d comparisons (%d identical pairs skipped)",
        ctx.name,
        result.counts["prompts"],
        result.counts["responses"],
        result.counts["comparisons"],
        result.counts["identical_pairs_skipped"],
    )
    return result


def finished(ctx: StageContext) -> StageResult:
    folder = ctx.out_dir
    comparisons = read_jsonl(folder / COMPARISONS_FILE, Comparison)
    result = stage_result(
        ctx.name, ctx.model("policy", verify=False), read_jsonl(folder / RESPONSES_FILE, ResponseSet), comparisons
    )
    result.extra.update(backend_choice(ctx).as_extra())
    return result


def backend_choice(ctx: StageContext) -> BackendChoice:
    """The engine of this stage by the rule of rlaif/generation/backend_choice.py, for the whole stage's estimated
    tokens (the run budget's: every prompt x K responses x max_new_tokens), whichever shard asks: the same on every
    worker."""
    cfg = ctx.cfg
    tokens = pairs_cost(cfg, len(read_items(ctx)), 0).generated_tokens
    return generation_backend(
        ctx.model("policy", verify=False), cfg.generation.backend, tokens, cfg.generation.vllm_break_even_tokens
    )


def run_sample_pairs(ctx: StageContext, generator: Generator | None = None) -> StageResult:
    """Sample K responses per training prompt with the iteration's policy, pair them, write the stage's artifacts;
    an interrupted run resumes with the prompts it had not answered."""
    return run_sharded(sys.modules[__name__], ctx, generator=generator)  # type: ignore[arg-type]


def stage_result(
    stage: str, policy_model: str, response_sets: list[ResponseSet], comparisons: list[Comparison]
) -> StageResult:
    """The StageResult of the pairs stage, from its response sets and comparisons."""
    responses = [text for record in response_sets for text in record.responses]
    finished = [flag for record in response_sets for flag in record.finished]
    possible = sum(len(r.responses) * (len(r.responses) - 1) // 2 for r in response_sets)
    long_items = LongItems.of([r.id for r in response_sets if r.prompt_truncated])
    return StageResult(
        stage=stage,
        outputs=[f"{stage}/{RESPONSES_FILE}", f"{stage}/{COMPARISONS_FILE}"],
        counts={
            "prompts": len(response_sets),
            "responses": len(responses),
            "comparisons": len(comparisons),
            "identical_pairs_skipped": possible - len(comparisons),
            "unfinished_responses": finished.count(False),
            "truncated": long_items.truncated,
        },
        metrics={
            "pairs/finished_fraction": finished.count(True) / len(finished),
            "pairs/mean_response_chars": sum(map(len, responses)) / len(responses),
        },
        extra={"model": policy_model, "long_items": long_items.model_dump()},
    )
