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

The labelling itself is library code, `rlaif.judging.judge.judge_comparisons`; this module adds the stage's files,
metrics and quality gate.

    python -c "from rlaif.stages.judge import run_judge; help(run_judge)"
    rlaif judge --comparisons comparisons.jsonl --constitution harmless --out labels.jsonl
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from rlaif.endpoints import read_usage, usage_counts
from rlaif.evaluation.judge_gate import check_labels
from rlaif.judging.judge import cached_judge, judge_comparisons
from rlaif.judging.scoring import OptionScorer
from rlaif.records import Comparison, LabelRecord
from rlaif.stages import COMPARISONS_FILE, LABELS_FILE, StageResult
from rlaif.stages.contract import StageContext, run_sharded
from rlaif.store import StoreError, read_jsonl, write_jsonl, write_manifest
from rlaif.truncation import LongItems

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlaif.generation import Generator

log = logging.getLogger(__name__)


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


# --- the stage contract (rlaif/stages/contract.py) ---------------------------------------------------------------

RECORD = LabelRecord


def read_items(ctx: StageContext, start: int = 0, stop: int | None = None) -> list[Comparison]:
    """The comparisons of this iteration's pairs stage (`start` to `stop`); the pairs stage must be finished."""
    source = ctx.source("comparisons")
    if source is None or not ctx.store.is_complete(ctx.run_id, source):
        raise StoreError(f"run {ctx.run_id}: stage {source!r} has no manifest; its comparisons are not finished")
    return read_jsonl(ctx.path("comparisons", COMPARISONS_FILE), Comparison, start, stop)


def process(
    ctx: StageContext,
    items: Sequence[Comparison],
    *,
    model: PreTrainedModel | OptionScorer | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    generator: Generator | None = None,
) -> Iterator[LabelRecord]:
    """Soft labels from the run's judge (loaded once per worker, or the declared endpoint) under the selected
    principles, both orders."""
    if not items:
        return
    if ctx.constitution is None:
        raise StoreError(f"run {ctx.run_id}: the judge stage needs the run's constitution (inputs/constitution.json)")
    cfg = ctx.cfg
    if model is None or tokenizer is None:
        model, tokenizer = cached_judge(cfg.judge_model, cfg.judge.dtype, stage_dir=ctx.out_dir)
    if cfg.judge.chain_of_thought and generator is None:
        generator = judge_generator(model, tokenizer, cfg.judge_model, cfg.generation.batch_size)
    log.info("judging %d comparisons of run %s with %s", len(items), ctx.run_id, cfg.judge_model)
    yield from judge_comparisons(
        items, model, tokenizer, ctx.constitution, cfg.judge.principles, cfg.judge, cfg.seed,
        generator=generator, progress=False,
    )  # fmt: skip


def write(ctx: StageContext, records: Sequence[LabelRecord]) -> StageResult:
    """labels.jsonl and the manifest; the quality gate over the labels goes into the result (the run state machine
    warns or stops on it)."""
    out_dir = ctx.out_dir
    write_jsonl(out_dir / LABELS_FILE, records)
    result = _with_gate(ctx, stage_result(ctx.name, records, len(records), read_usage(out_dir)))
    write_manifest(out_dir, extra={"stage": ctx.name, "counts": result.counts, "metrics": result.metrics})
    log.info(
        "wrote %d labels to %s (flip rate %.2f)",
        len(records),
        out_dir / LABELS_FILE,
        result.metrics.get("judge/flip_rate", 0),
    )
    return result


def finished(ctx: StageContext) -> StageResult:
    labels = read_jsonl(ctx.out_dir / LABELS_FILE, LabelRecord)
    return _with_gate(ctx, stage_result(ctx.name, labels, len(labels), read_usage(ctx.out_dir)))


def _with_gate(ctx: StageContext, result: StageResult) -> StageResult:
    gate = check_labels(result.metrics, ctx.cfg.judge.gate)
    if not gate.passed:
        log.warning("%s", gate.message(ctx.name))
    result.extra["gate"] = gate.model_dump()
    return result


def run_judge(
    ctx: StageContext,
    *,
    model: PreTrainedModel | OptionScorer | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    generator: Generator | None = None,
) -> StageResult:
    """Label this iteration's `<run>/<pairs>/comparisons.jsonl` into `<run>/<stage>/labels.jsonl`; manifest last.

    A stage folder with a valid manifest is finished work: it is verified and returned without judging again; an
    interrupted run resumes with the comparisons it had not labelled.
    """
    return run_sharded(sys.modules[__name__], ctx, model=model, tokenizer=tokenizer, generator=generator)  # type: ignore[arg-type]
