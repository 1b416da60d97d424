"""`rlaif eval`: compare a model with a baseline the way the evaluate stage does, from the command line.

    rlaif eval --model runs/demo/ppo/model --baseline smollm2-135m-instruct --sets xstest --prompts-per-set 50
    rlaif eval --model smollm2-135m-instruct --baseline smollm2-135m-instruct --prompts my_prompts.jsonl --out eval/
    rlaif eval --model runs/demo/ppo/model --sft runs/demo/sft/model --reward-model runs/demo/reward_model/model \
        --best-of-n 4 --sets red_team,xstest      # adds sft+best-of-4, the reranking baseline

Writes answers.jsonl, report.json and report.html to --out and prints the headline at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from rlaif.config import DEFAULT_MODEL, EvalConfig, RunConfig, load_run_config

errors = Console(stderr=True)
SETS = ("red_team", "helpful", "xstest", "advbench")


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _config(
    config: Path | None, overrides: list[str] | None, eval_overrides: dict[str, object], judge: str | None
) -> RunConfig:
    try:
        cfg = load_run_config(config, overrides)
        extra: dict[str, object] = {"eval": {k: v for k, v in eval_overrides.items() if v is not None}}
        if judge is not None:
            extra["judge"] = {"model": judge}
        return cfg.with_overrides(extra)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise _fail(f"invalid configuration: {problems}") from None
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None


def eval_command(
    model: str = typer.Option(..., "--model", help="The model under evaluation: registry name or local folder."),
    baseline: str = typer.Option(DEFAULT_MODEL, "--baseline", help="The baseline it is compared with."),
    sft: str | None = typer.Option(None, "--sft", help="Optional SFT model: also compared (as in a run)."),
    prompts: list[Path] | None = typer.Option(
        None, "--prompts", exists=True, dir_okay=False, help="JSONL prompt files (judged on both axes)."
    ),
    sets: list[str] | None = typer.Option(None, "--sets", help=f"Named sets from the data folder: {', '.join(SETS)}."),
    max_prompts: int | None = typer.Option(None, "--max-prompts", min=1, help="Most prompts taken from --prompts."),
    prompts_per_set: int | None = typer.Option(None, "--prompts-per-set", min=1, help="Prompts drawn per named set."),
    human_pairs: int | None = typer.Option(None, "--human-pairs", min=0, help="Human pairs for the judge audit."),
    best_of_n: int | None = typer.Option(
        None, "--best-of-n", min=2, max=64, help=EvalConfig.model_fields["best_of_n"].description
    ),
    judge: str | None = typer.Option(None, "--judge", help="Judge model (default: the baseline)."),
    reward_model: Path | None = typer.Option(
        None, "--reward-model", file_okay=False, help="Reward model folder to score."
    ),
    constitution: str = typer.Option("hhh", "--constitution", help="Shipped constitution name or file."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder of the named sets (default: RLAIF_DATA_DIR)."
    ),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False, help="Run config YAML."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Config overrides key.path=value (repeatable)."),
    out: Path = typer.Option(Path("eval-report"), "--out", help="Folder for answers.jsonl, report.json, report.html."),
) -> None:
    """Judge win rates (harmlessness, helpfulness), refusal rates and audits of --model against --baseline."""
    from rlaif.constitution import ConstitutionError, load_constitution, resolve_constitution
    from rlaif.evaluation.datasets import DataError, load_named_set, prompts_from_file
    from rlaif.evaluation.report import headline
    from rlaif.modeling import ModelError
    from rlaif.prompts import PromptSetError
    from rlaif.settings import settings
    from rlaif.stages.evaluate import evaluate_models, write_report
    from rlaif.store import atomic_write_text

    chosen_sets = [part.strip() for value in sets or [] for part in value.split(",") if part.strip()]
    unknown = [name for name in chosen_sets if name not in SETS]
    if unknown:
        raise _fail(f"--sets: unknown set(s) {unknown}; choose from {list(SETS)}")
    cfg = _config(
        config,
        overrides,
        {
            "max_prompts": max_prompts,
            "prompts_per_set": prompts_per_set,
            "human_pairs": human_pairs,
            "best_of_n": best_of_n,
            "extra_sets": chosen_sets or None,
        },
        judge,
    )
    folder = data_dir or settings.data_dir
    try:
        loaded = load_constitution(resolve_constitution(constitution))
        items = [p for path in prompts or [] for p in prompts_from_file(path)][: cfg.eval.max_prompts]
        for name in cfg.eval.extra_sets:
            items += load_named_set(name, folder, cfg.eval.data_split, cfg.eval.prompts_per_set, cfg.seed)
        pairs = []
        if cfg.eval.human_pairs:
            from rlaif.evaluation.datasets import load_human_pairs, set_path

            pairs = load_human_pairs(
                set_path(folder, "preference_pairs", cfg.eval.data_split, "--human-pairs"), limit=cfg.eval.human_pairs
            )
    except (ConstitutionError, DataError, PromptSetError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if not items:
        raise _fail("nothing to evaluate: give --prompts files and/or --sets")
    models = {"base": baseline, "aligned": model}
    if sft is not None:
        models["sft"] = sft
    try:
        report, samples = evaluate_models(
            models,
            items,
            cfg,
            loaded,
            judge_model=judge or cfg.judge.model or baseline,
            reward_model=str(reward_model) if reward_model else None,
            human_pairs=pairs,
        )
    except (ModelError, ValueError) as exc:
        raise _fail(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, report, samples)
    atomic_write_text(out / "headline.txt", headline(report) + "\n")
    print(f"wrote {out / 'report.json'} and {out / 'report.html'}", file=sys.stderr)
    print(headline(report))


def register(app: typer.Typer) -> None:
    """Add `eval` to the top-level app."""
    app.command("eval")(eval_command)
