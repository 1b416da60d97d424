"""`rlaif judge` (label a comparisons file) and `rlaif judge-eval` (judge quality against human labels).

rlaif judge-eval --pairs rlaif/data/preference_pairs.dev.jsonl --limit 128
rlaif judge-eval --judge endpoint:big-judge --limit 64      # audit a declared endpoint (RLAIF_ENDPOINTS) first
rlaif judge --comparisons comparisons.jsonl --out labels.jsonl --constitution harmless
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from rlaif.config import DEFAULT_MODEL, JudgeConfig
from rlaif.data import DATA_DIR
from rlaif.truncation import LongItems

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlaif.constitution import Constitution
    from rlaif.judging.audit import AuditReport
    from rlaif.judging.scoring import OptionScorer

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated and/or comma-separated option values as one list (None when none given)."""
    out = [part.strip() for value in values or [] for part in value.split(",") if part.strip()]
    return out or None


_DEFAULTS = JudgeConfig()  # CLI defaults are the run defaults, defined once in rlaif/config.py


def _judge_config(**fields: object) -> JudgeConfig:
    try:
        return JudgeConfig.model_validate(fields)
    except ValidationError as exc:
        for error in exc.errors():
            errors.print(f"[red]error:[/red] judge.{'.'.join(map(str, error['loc']))}: {error['msg']}")
        raise typer.Exit(2) from None


def _load(
    model: str, constitution: str, dtype: str
) -> tuple[PreTrainedModel | OptionScorer, PreTrainedTokenizerBase, Constitution]:
    """Judge (a model, or an EndpointScorer for endpoint:<name>), tokenizer and constitution, or a readable error
    and exit code 2."""
    from rlaif.constitution import ConstitutionError, load_constitution, resolve_constitution
    from rlaif.endpoints import check_model_spec, is_endpoint
    from rlaif.generation.endpoint_client import EndpointError
    from rlaif.judging.prompts import JudgeInputError
    from rlaif.modeling import ModelError, load_causal_lm, load_tokenizer

    try:
        check_model_spec(model, "--model")
        loaded_constitution = load_constitution(resolve_constitution(constitution))
        if is_endpoint(model):
            from rlaif.judging.endpoint import EndpointScorer

            scorer = EndpointScorer(model)
            return scorer, scorer.tokenizer, loaded_constitution
        return load_causal_lm(model, dtype=dtype), load_tokenizer(model), loaded_constitution
    except (ConstitutionError, FileNotFoundError, ModelError, EndpointError, JudgeInputError, ValueError) as exc:
        errors.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def print_report(report: AuditReport) -> None:
    """The audit as two tables: summary and calibration."""
    summary = Table("metric", "value", title=f"judge {report.model} on {report.pairs} labelled pairs")
    shown = ", ".join(report.principles[:4]) + (
        f", ... ({len(report.principles)} in all)" if len(report.principles) > 4 else ""
    )
    summary.add_row("constitution / principles", f"{report.constitution}: {shown}")
    summary.add_row(
        "principles per label, few-shot, CoT",
        f"{report.principles_per_label}, {report.few_shot}, {report.chain_of_thought}",
    )
    summary.add_row("agreement (both orders)", f"{report.agreement:.3f}")
    summary.add_row("agreement (first order only)", f"{report.agreement_single_order:.3f}")
    summary.add_row("position-flip rate", f"{report.flip_rate:.3f}")
    summary.add_row("first-order P(A) > 1/2", f"{report.first_position_rate:.3f}")
    summary.add_row("mean confidence |P - 1/2|", f"{report.mean_confidence:.4f}")
    summary.add_row("ties", str(report.ties))
    for name, stats in report.by_source.items():
        summary.add_row(f"agreement on {name}", f"{stats['agreement']:.3f} (n={int(stats['count'])})")
    summary.add_row("cut to fit the judge's context", report.long_items.summary())
    summary.add_row("throughput", f"{report.pairs_per_second:.2f} pairs/s ({report.seconds:.1f} s)")
    console.print(summary)
    table = Table("confidence |P - 1/2|", "pairs", "agreement", "claimed", title="calibration")
    for bucket in report.calibration:
        table.add_row(
            f"[{bucket.low:.2f}, {bucket.high:.2f})",
            str(bucket.count),
            "-" if bucket.agreement is None else f"{bucket.agreement:.3f}",
            "-" if bucket.claimed is None else f"{bucket.claimed:.3f}",
        )
    console.print(table)


def judge_eval_command(
    pairs: Path = typer.Option(
        DATA_DIR / "preference_pairs.dev.jsonl",
        "--pairs",
        exists=True,
        dir_okay=False,
        help="JSONL of prompt, chosen, rejected (default: the hh-rlhf pairs shipped in rlaif/data).",
    ),
    model: str = typer.Option(
        DEFAULT_MODEL,
        "--judge",
        "--model",
        help="Judge model: registry name, local folder or endpoint:<name> (declared in RLAIF_ENDPOINTS).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Judge only the first N pairs."),
    principles: list[str] | None = typer.Option(
        None, "--principles", help="Principle ids / tag:<tag> (repeat or comma-separate)."
    ),
    constitution: str = typer.Option("harmless", "--constitution", help="Shipped constitution name or file."),
    principles_per_label: int = typer.Option(
        1, "--principles-per-label", help="Principles sampled per pair (ensemble)."
    ),
    few_shot: int = typer.Option(_DEFAULTS.few_shot, "--few-shot", help="Comparison examples prepended."),
    chain_of_thought: bool = typer.Option(False, "--chain-of-thought", help="Reason before answering (slow)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Judge prompts per forward pass."),
    max_length: int | None = typer.Option(
        None,
        "--max-length",
        help="Longest judge prompt in tokens (default: the judge model's context); longer "
        "pairs are cut to fit and counted.",
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="float32 (default: bf16 rounding erases the order difference), bfloat16 or auto."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the A/B placement and the principle sampling."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
) -> None:
    """Agreement of the AI judge with human preference labels, position-flip rate and calibration."""
    from rlaif.evaluation.datasets import load_human_pairs
    from rlaif.judging.audit import audit_judge

    cfg = _judge_config(
        principles=_split(principles),
        principles_per_label=principles_per_label,
        few_shot=few_shot,
        chain_of_thought=chain_of_thought,
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
    )
    try:
        labelled = load_human_pairs(pairs, limit)
    except ValueError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    judge_model, tokenizer, loaded = _load(model, constitution, cfg.dtype)
    generator = None
    if cfg.chain_of_thought:
        from rlaif.stages.judge import judge_generator

        generator = judge_generator(judge_model, tokenizer, model, cfg.batch_size)
    from rlaif.generation.endpoint_client import EndpointError

    try:
        report = audit_judge(labelled, judge_model, tokenizer, loaded, cfg, seed, model_name=model, generator=generator)
    except (ValueError, EndpointError) as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        print_report(report)
    _print_usage(judge_model)


def _print_usage(judge: object) -> None:
    """An endpoint judge's requests and tokens (stderr, so --json stays parseable)."""
    usage = getattr(judge, "usage", None)
    if usage:
        method = getattr(judge, "method", None)
        errors.print(
            f"endpoint {usage['endpoint']}: options read by {method}; {usage['requests']} requests "
            f"({usage['cached']} cached, {usage['retries']} retries), {usage['prompt_tokens']} prompt + "
            f"{usage['completion_tokens']} completion tokens",
            highlight=False,
        )


def judge_command(
    comparisons: Path = typer.Option(
        ..., "--comparisons", exists=True, dir_okay=False, help="JSONL of Comparison records."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write the LabelRecord JSONL."),
    model: str = typer.Option(
        DEFAULT_MODEL,
        "--judge",
        "--model",
        help="Judge model: registry name, local folder or endpoint:<name> (declared in RLAIF_ENDPOINTS).",
    ),
    constitution: str = typer.Option("harmless", "--constitution", help="Shipped constitution name or file."),
    principles: list[str] | None = typer.Option(None, "--principles", help="Principle ids / tag:<tag>."),
    principles_per_label: int = typer.Option(1, "--principles-per-label", help="Principles sampled per pair."),
    few_shot: int = typer.Option(_DEFAULTS.few_shot, "--few-shot", help="Comparison examples prepended."),
    batch_size: int = typer.Option(8, "--batch-size", help="Judge prompts per forward pass."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="float32 (default: bf16 rounding erases the order difference), bfloat16 or auto."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the principle sampling."),
) -> None:
    """Label a comparisons file with soft AI preferences (both orders, principle ensemble)."""
    from rlaif.judging.judge import judge_comparisons
    from rlaif.records import Comparison
    from rlaif.stages.judge import label_metrics
    from rlaif.store import StoreError, read_jsonl, write_jsonl

    cfg = _judge_config(
        principles=_split(principles),
        principles_per_label=principles_per_label,
        few_shot=few_shot,
        batch_size=batch_size,
        dtype=dtype,
    )
    try:
        items = read_jsonl(comparisons, Comparison)
    except StoreError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    judge_model, tokenizer, loaded = _load(model, constitution, cfg.dtype)
    from rlaif.generation.endpoint_client import EndpointError

    try:
        labels = list(judge_comparisons(items, judge_model, tokenizer, loaded, cfg.principles, cfg, seed))
    except (ValueError, EndpointError) as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    write_jsonl(out, labels)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in label_metrics(labels).items())
    cut = LongItems.of([label.id for label in labels if label.truncated]).summary()
    console.print(f"wrote {len(labels)} labels to {out} ({metrics}); cut to fit the context: {cut}", highlight=False)
    _print_usage(judge_model)


def register(app: typer.Typer) -> None:
    """Add `judge` and `judge-eval` to the top-level app."""
    app.command("judge")(judge_command)
    app.command("judge-eval")(judge_eval_command)
