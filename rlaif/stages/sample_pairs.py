"""Stage 3: paired responses. K responses per prompt from the policy, and every pair of them to judge.

RL-CAI (Bai et al. 2022, sec. 4.1, "AI Feedback"): the SL-CAI (SFT) model answers each red-team prompt several
times; the feedback model then compares pairs of answers under a constitutional principle. With K responses a
prompt yields all C(K, 2) pairs; pairs of identical responses carry no preference and are skipped (and logged).

Pure core: `sample_responses` (items in, ResponseSets out, yielded chunk by chunk so a worker can persist progress)
and `make_comparisons` (one ResponseSet in, its pairs out). `run_sample_pairs` reads <run>/inputs/prompts.jsonl
and writes <run>/<stage>/responses.jsonl, comparisons.jsonl and, last, manifest.json. A re-run after an
interruption keeps the prompts already answered in responses.jsonl and samples only the rest.

    python -c "from rlaif.stages.sample_pairs import run_sample_pairs; from rlaif.config import RunConfig; \
from rlaif.store import ArtifactStore; from rlaif.settings import settings; \
print(run_sample_pairs(RunConfig(), ArtifactStore(settings.artifacts_dir), 'RUN_ID', 'smollm2-135m-instruct'))"
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence

from rlaif.config import PairsConfig, RunConfig
from rlaif.generation import Generator, make_generator
from rlaif.generation.common import derive_seed
from rlaif.records import Comparison, PromptItem, ResponseSet
from rlaif.stages import COMPARISONS_FILE, INPUTS, PROMPTS_FILE, RESPONSES_FILE, StageResult
from rlaif.store import ArtifactStore, StoreError, read_jsonl, verify_manifest, write_jsonl, write_manifest
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

    Each chunk is sampled under a seed derived from `seed` and the chunk's first prompt id, so re-running a
    chunk (after a worker restart) gives the same responses.
    """
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        conversations = [[{"role": "user", "content": item.prompt}] for item in chunk]
        outputs = generator.generate(
            conversations,
            cfg.responses_per_prompt,
            cfg.sampling,
            seed=derive_seed(seed, chunk[0].id),
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


def run_sample_pairs(
    cfg: RunConfig, store: ArtifactStore, run_id: str, policy_model: str, stage: str = "pairs"
) -> StageResult:
    """Sample K responses per training prompt with `policy_model`, pair them, and write the stage's artifacts."""
    from tqdm.auto import tqdm

    folder = store.stage_dir(run_id, stage)
    responses_path, comparisons_path = folder / RESPONSES_FILE, folder / COMPARISONS_FILE
    if store.is_complete(run_id, stage):
        verify_manifest(folder)
        log.info("stage %s of run %s is already complete; reading its artifacts", stage, run_id)
        comparisons = read_jsonl(comparisons_path, Comparison)
        return stage_result(stage, policy_model, read_jsonl(responses_path, ResponseSet), comparisons)

    items = _read_prompts(store, run_id)
    known = {item.id for item in items}
    by_id = {
        r.id: r for r in (read_jsonl(responses_path, ResponseSet) if responses_path.exists() else []) if r.id in known
    }
    todo = [item for item in items if item.id not in by_id]
    if by_id:
        log.info("resuming stage %s: %d of %d prompts already answered", stage, len(by_id), len(items))

    if todo:
        generator = make_generator(policy_model, cfg.generation)
        # The stage name is part of the seed so that each RLAIF iteration samples afresh.
        seed = derive_seed(cfg.seed, stage)
        with tqdm(total=len(todo), desc=f"{stage}: sampling", unit="prompt") as bar:
            for count, record in enumerate(sample_responses(todo, cfg.pairs, generator, seed), start=1):
                by_id[record.id] = record
                bar.update(1)
                if count % CHUNK_SIZE == 0:
                    # Rewritten atomically after each chunk: a restarted task resumes from here.
                    write_jsonl(responses_path, [by_id[i.id] for i in items if i.id in by_id])
    response_sets = [by_id[item.id] for item in items]
    write_jsonl(responses_path, response_sets)
    comparisons = [pair for record in response_sets for pair in make_comparisons(record)]
    write_jsonl(comparisons_path, comparisons)
    result = stage_result(stage, policy_model, response_sets, comparisons)
    write_manifest(folder, {"stage": stage, "model": policy_model, "seed": cfg.seed, "counts": result.counts})
    log.info(
        "stage %s: %d prompts -> %d responses -> %d comparisons (%d identical pairs skipped)",
        stage,
        result.counts["prompts"],
        result.counts["responses"],
        result.counts["comparisons"],
        result.counts["identical_pairs_skipped"],
    )
    return result


def _read_prompts(store: ArtifactStore, run_id: str) -> list[PromptItem]:
    path = store.run_dir(run_id) / INPUTS / PROMPTS_FILE
    if not path.exists():
        raise StoreError(f"{path} is missing: run {run_id} has no training prompts")
    items = read_jsonl(path, PromptItem)
    if not items:
        raise StoreError(f"{path} holds no prompts: nothing to sample")
    return items


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
