"""Stage 4, RL-CAI labels (Bai et al. 2022 sec. 4.1): soft AI preference labels for the sampled pairs.

For every comparison, `judge.principles_per_label` principles are sampled (seeded per comparison, so a re-run or a
different sharding gives the same principles); each principle's judge prompt is read in both orders and
P(response_a better) = mean(P(A) in order 1, 1 - P(A) in order 2); the principles' labels are averaged (ensemble).
Reads `<run>/pairs/comparisons.jsonl`, writes `<run>/judge/labels.jsonl` and the manifest last. A pair too long for
the judge's context is cut to fit (rlaif/truncation.py): its label says `truncated`, and the stage result counts them.

The judge is a model loaded in process or, for judge.model `endpoint:<name>`, a declared endpoint
(rlaif/judging/endpoint.py): the same prompts and arithmetic, the options read from the endpoint's log-probs, or
hard labels from both orders where it has none. Each label records its method and coverage; the stage result
says which methods labelled the run (`extra.label_methods`, `extra.soft_labels`) and, for an endpoint, the
requests and tokens it took (`counts.judge_*`, `extra.usage`; responses cached in the stage folder, so a
redelivered shard pays nothing twice).

    python -c "from rlaif.stages.judge import run_judge; help(run_judge)"
    rlaif judge --comparisons comparisons.jsonl --constitution harmless --out labels.jsonl
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from rlaif.config import JudgeConfig, RunConfig
from rlaif.constitution import Constitution, Principle, sample_principles
from rlaif.endpoints import is_endpoint, read_usage, usage_counts
from rlaif.evaluation.judge_gate import check_labels
from rlaif.judging.judge import JudgeRequest, as_scorer, judge_requests
from rlaif.judging.labels import ensemble
from rlaif.judging.scoring import OptionScorer, PrefixCache
from rlaif.records import Comparison, LabelRecord, PrincipleJudgement
from rlaif.stages import COMPARISONS_FILE, LABELS_FILE, StageResult
from rlaif.store import ArtifactStore, StoreError, read_jsonl, verify_manifest, write_jsonl, write_manifest
from rlaif.truncation import LongItems

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlaif.generation import Generator

log = logging.getLogger(__name__)

CHUNK_COMPARISONS = 256  # comparisons scored together: enough prompts per principle group to fill batches


def principles_for(comparison_id: str, selected: Sequence[Principle], k: int, seed: int) -> list[Principle]:
    """The k principles (drawn with replacement) that judge one comparison; depends only on (seed, id)."""
    return sample_principles(selected, k, random.Random(f"judge:{seed}:{comparison_id}"))


def judge_comparisons(
    comparisons: Iterable[Comparison],
    model: PreTrainedModel | OptionScorer,
    tokenizer: PreTrainedTokenizerBase,
    constitution: Constitution,
    principles: Sequence[str] | None,
    cfg: JudgeConfig,
    seed: int,
    *,
    generator: Generator | None = None,
    progress: bool = True,
) -> Iterator[LabelRecord]:
    """LabelRecords in input order, yielded chunk by chunk (both orders x principles per comparison, batched).

    `model` is the judge: a loaded causal LM, or an OptionScorer such as rlaif.judging.endpoint.EndpointScorer
    (with its tokenizer). `principles` are ids or tag:<tag> selectors (None = all); `generator` is needed only for
    chain of thought.
    """
    selected = constitution.select(principles)
    examples = constitution.comparison_examples[: cfg.few_shot]
    items = list(comparisons)
    seen: set[str] = set()
    for comparison in items:
        if comparison.id in seen:
            raise ValueError(f"comparison {comparison.id!r} appears twice: ids must be unique")
        seen.add(comparison.id)
    # One prefix (system prompt + few-shot turns) per principle, kept across chunks.
    prefix_cache = PrefixCache(max_entries=len(selected) + 1)
    scorer = as_scorer(
        model, tokenizer, batch_size=cfg.batch_size, share_prefix=cfg.share_prefix, prefix_cache=prefix_cache
    )
    bar = tqdm(total=len(items), desc="judge", unit="pair", disable=not progress)
    for chunk_index, start in enumerate(range(0, len(items), CHUNK_COMPARISONS)):
        chunk = items[start : start + CHUNK_COMPARISONS]
        sampled = [principles_for(c.id, selected, cfg.principles_per_label, seed) for c in chunk]
        # A principle drawn twice for one pair gives the same judgement: score it once.
        requests: list[JudgeRequest] = []
        index: dict[tuple[str, str], int] = {}
        for comparison, chosen in zip(chunk, sampled, strict=True):
            for principle in chosen:
                key = (comparison.id, principle.id)
                if key not in index:
                    index[key] = len(requests)
                    requests.append(
                        JudgeRequest(
                            comparison.id, comparison.prompt, comparison.response_a, comparison.response_b, principle
                        )
                    )
        verdicts = judge_requests(
            scorer,
            tokenizer,
            requests,
            examples=examples,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            share_prefix=cfg.share_prefix,
            chain_of_thought=cfg.chain_of_thought,
            generator=generator,
            cot_sampling=cfg.cot_sampling,
            cot_clamp=cfg.cot_clamp,
            seed=seed + chunk_index,
            prefix_cache=prefix_cache,
        )
        for comparison, chosen in zip(chunk, sampled, strict=True):
            pair_verdicts = [verdicts[index[(comparison.id, p.id)]] for p in chosen]
            judgements = [
                PrincipleJudgement(
                    principle_id=p.id, p_a=v.p_a, p_a_swapped=v.p_a_swapped, p_a_mean=v.p_a_mean, flip=v.flip,
                    coverage=v.coverage, method=v.method,
                )
                for p, v in zip(chosen, pair_verdicts, strict=True)
            ]  # fmt: skip
            coverages = [v.coverage for v in pair_verdicts if v.coverage is not None]
            yield LabelRecord(
                id=comparison.id,
                prompt=comparison.prompt,
                response_a=comparison.response_a,
                response_b=comparison.response_b,
                p_a=min(max(ensemble(pair_verdicts), 0.0), 1.0),
                judgements=judgements,
                truncated=any(v.truncated for v in pair_verdicts),
                coverage=sum(coverages) / len(coverages) if coverages else None,
                method=pair_verdicts[0].method,
            )
        bar.update(len(chunk))
    bar.close()


def label_metrics(labels: Sequence[LabelRecord]) -> dict[str, float]:
    """judge/* metrics: flip rate over principle judgements, mean label, mean confidence |p_a - 1/2|, and the mean
    coverage P(A) + P(B) where the judgements recorded one."""
    judgements = [j for label in labels for j in label.judgements]
    if not labels:
        return {}
    metrics = {
        "judge/flip_rate": sum(j.flip for j in judgements) / len(judgements),
        "judge/p_a_mean": sum(label.p_a for label in labels) / len(labels),
        "judge/confidence": sum(abs(label.p_a - 0.5) for label in labels) / len(labels),
        "judge/order1_prefers_a": sum(j.p_a > 0.5 for j in judgements) / len(judgements),
    }
    coverages = [j.coverage for j in judgements if j.coverage is not None]
    if coverages:
        metrics["judge/coverage"] = sum(coverages) / len(coverages)
    return metrics


def stage_result(
    stage: str, labels: Sequence[LabelRecord], comparisons: int, usage: dict[str, dict] | None = None
) -> StageResult:
    """The stage's counts, metrics and extras; `usage` is the endpoint usage read from the stage folder."""
    long_items = LongItems.of([label.id for label in labels if label.truncated])
    methods: dict[str, int] = {}
    for judgement in (j for label in labels for j in label.judgements):
        methods[judgement.method or "unrecorded"] = methods.get(judgement.method or "unrecorded", 0) + 1
    extra: dict[str, object] = {"long_items": long_items.model_dump(), "label_methods": methods}
    if methods:
        # An endpoint without log-probs labels each order 0, 1/2 or 1: say so where people look.
        extra["soft_labels"] = "hard" not in methods
    if usage:
        extra["usage"] = usage
    return StageResult(
        stage=stage,
        outputs=[f"{stage}/{LABELS_FILE}"],
        counts={
            "comparisons": comparisons,
            "labels": len(labels),
            "judgements": sum(len(x.judgements) for x in labels),
            "truncated": long_items.truncated,
            **usage_counts(usage or {}),
        },
        metrics=label_metrics(labels),
        extra=extra,
    )


def load_judge(
    model_name: str, dtype: str, stage_dir: Path | None = None
) -> tuple[PreTrainedModel | OptionScorer, PreTrainedTokenizerBase]:
    """(model, tokenizer) of the judge `model_name`: a causal LM loaded in process, or for `endpoint:<name>` an
    EndpointScorer and its tokenizer, whose responses are cached and usage recorded in `stage_dir`."""
    if is_endpoint(model_name):
        from rlaif.judging.endpoint import EndpointScorer

        scorer = EndpointScorer(model_name, stage_dir=stage_dir)
        return scorer, scorer.tokenizer
    from rlaif.modeling import load_causal_lm, load_tokenizer

    return load_causal_lm(model_name, dtype=dtype), load_tokenizer(model_name)


def judge_generator(
    model: PreTrainedModel | OptionScorer, tokenizer: PreTrainedTokenizerBase, model_name: str, batch_size: int
) -> Generator:
    """The generator that writes the judge's chain of thought: the judge model itself, in process or over its
    endpoint (the same client: one cache, one usage ledger)."""
    from rlaif.judging.endpoint import EndpointScorer

    if isinstance(model, EndpointScorer):
        from rlaif.generation.endpoint import EndpointGenerator

        return EndpointGenerator(model_name, client=model.client)
    from rlaif.generation.hf import HFGenerator

    return HFGenerator.from_loaded(model, tokenizer, model_name, batch_size=batch_size)


def run_judge(
    cfg: RunConfig,
    store: ArtifactStore,
    run_id: str,
    constitution: Constitution,
    stage: str = "judge",
    pairs_stage: str = "pairs",
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    generator: Generator | None = None,
) -> StageResult:
    """Label `<run>/<pairs_stage>/comparisons.jsonl` into `<run>/<stage>/labels.jsonl`; manifest written last.

    A stage folder with a valid manifest is finished work: it is verified and returned without judging again.
    """
    out_dir = store.stage_dir(run_id, stage)
    if store.is_complete(run_id, stage):
        verify_manifest(out_dir)
        labels = read_jsonl(out_dir / LABELS_FILE, LabelRecord)
        log.info("%s of run %s is already complete (%d labels); not judging again", stage, run_id, len(labels))
        return stage_result(stage, labels, len(labels), read_usage(out_dir))
    if not store.is_complete(run_id, pairs_stage):
        raise StoreError(f"run {run_id}: stage {pairs_stage!r} has no manifest; its comparisons are not finished")
    source = store.path(run_id, pairs_stage, COMPARISONS_FILE)
    if not source.is_file():
        raise StoreError(f"run {run_id}: {source} is missing")
    comparisons = read_jsonl(source, Comparison)
    judge_cfg = cfg.judge
    model_name = cfg.judge_model
    if (model is None or tokenizer is None) and is_endpoint(model_name):
        from rlaif.judging.endpoint import EndpointScorer

        model = EndpointScorer(model_name, stage_dir=out_dir)
        tokenizer = model.tokenizer
    elif model is None or tokenizer is None:
        from rlaif.modeling import load_causal_lm, load_tokenizer

        model, tokenizer = load_causal_lm(model_name, dtype=judge_cfg.dtype), load_tokenizer(model_name)
    if judge_cfg.chain_of_thought and generator is None:
        generator = judge_generator(model, tokenizer, model_name, cfg.generation.batch_size)
    log.info("judging %d comparisons of run %s with %s", len(comparisons), run_id, model_name)
    labels = list(
        judge_comparisons(
            comparisons, model, tokenizer, constitution, judge_cfg.principles, judge_cfg, cfg.seed, generator=generator
        )
    )
    write_jsonl(out_dir / LABELS_FILE, labels)
    result = stage_result(stage, labels, len(comparisons), read_usage(out_dir))
    gate = check_labels(result.metrics, cfg.judge.gate)
    if not gate.passed:  # the service stops the run here when judge.gate.action is stop (rlaif/runs.py)
        log.warning("%s", gate.message(stage))
    result.extra["gate"] = gate.model_dump()
    write_manifest(out_dir, extra={"stage": stage, "counts": result.counts, "metrics": result.metrics})
    log.info(
        "wrote %d labels to %s (flip rate %.2f)",
        len(labels),
        out_dir / LABELS_FILE,
        result.metrics.get("judge/flip_rate", 0),
    )
    return result
