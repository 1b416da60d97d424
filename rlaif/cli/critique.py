"""`rlaif critique`: watch SL-CAI work: the model answers, critiques itself under a principle, and revises.

rlaif critique --constitution harmless --prompts examples/demo_prompts.jsonl --limit 3
rlaif critique --feedback endpoint:big-feedback --limit 3     # a declared endpoint (RLAIF_ENDPOINTS)
rlaif critique --judge endpoint:big-judge --limit 3           # keep a revision only when this judge prefers it
rlaif critique --config examples/run_config.demo.yaml --set judge.model=endpoint:big-judge  # a run's sections
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from rlaif.config import DEFAULT_MODEL, RunConfig, load_run_config, parse_dotted_overrides, run_config_file_problems
from rlaif.records import CritiqueRecord

console = Console()
errors = Console(stderr=True, soft_wrap=True)
DEMO_PROMPTS = Path(__file__).resolve().parents[2] / "examples" / "demo_prompts.jsonl"


def _fail(message: object) -> typer.Exit:
    errors.print(Text("error: ", style="red") + Text(str(message)))
    return typer.Exit(2)


def render_record(record: CritiqueRecord, index: int) -> Panel:
    """One prompt's trajectory: the prompt, the first answer, each critique (with its principle) and revision."""
    parts: list[Text] = [
        Text.assemble(("Human: ", "bold"), record.prompt),
        Text.assemble(("Answer: ", "bold cyan"), record.initial_response),
    ]
    for number, rnd in enumerate(record.rounds, start=1):
        parts.append(
            Text.assemble((f"Critique {number} ", "bold yellow"), (f"[{rnd.principle_id}]: ", "yellow"), rnd.critique)
        )
        parts.append(Text.assemble((f"Revision {number}: ", "bold green"), rnd.revision))
    if record.revision_judgement is not None:
        verdict = record.revision_judgement
        parts.append(
            Text(f"judge: P(revision better) {verdict.p_a:.2f} / {verdict.p_a_swapped:.2f} swapped", style="magenta")
        )
    status = "kept for SFT" if record.kept else "dropped"
    flags = f" (flags: {', '.join(record.flags)})" if record.flags else ""
    parts.append(Text(f"{status}{flags}", style="dim"))
    spaced: list[Text] = []
    for part in parts:
        spaced += [part, Text("")]
    return Panel(Group(*spaced[:-1]), title=f"[{index}] {record.id}", title_align="left")


def critique_command(
    prompts: Path = typer.Option(
        DEMO_PROMPTS, "--prompts", help="JSONL (or JSON list) of prompts with 'prompt' (and 'id')."
    ),
    constitution: str = typer.Option("harmless", "--constitution", help="Shipped constitution name or file."),
    limit: int | None = typer.Option(3, "--limit", min=1, help="Critique only the first N prompts."),
    config: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help="Run config YAML or JSON: its critique section, feedback and judge models, judge section (the revision "
        "filter: principles, ensemble, chain of thought, dtype...), generation backend and seed. The flags below "
        "override it.",
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Run config override key.path=value (repeatable), e.g. --set judge.chain_of_thought=true."
    ),
    rounds: int | None = typer.Option(None, "--rounds", help="Critique-revision rounds per prompt (default 2)."),
    model: str | None = typer.Option(
        None,
        "--feedback",
        "--model",
        help="The feedback model that answers, critiques and revises: registry name, local Hugging Face folder or "
        f"endpoint:<name> (declared in RLAIF_ENDPOINTS). Default: the config's feedback model ({DEFAULT_MODEL}).",
    ),
    judge: str | None = typer.Option(
        None,
        "--judge",
        help="The judge of the revision filter (critique.judge_filter): a revision is kept only when it prefers the "
        "revision to the first answer in both orders. Registry name, local Hugging Face folder or endpoint:<name>. "
        "Default: the config's judge when its filter is on (as in a run), else no filter.",
    ),
    principles: list[str] | None = typer.Option(
        None, "--principles", help="Principle ids / tag:<tag> (repeat or comma-separate)."
    ),
    few_shot: int | None = typer.Option(None, "--few-shot", help="Worked critique examples as chat turns (default 1)."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy; 0.7)."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Most tokens per answer, critique or revision (default 96)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seeds the principle draws and the sampling (default 0)."),
    out: Path | None = typer.Option(None, "--out", help="Also write the CritiqueRecords to this JSONL file."),
) -> None:
    """Answer, critique and revise a few prompts with a constitution, and print every step."""
    from rlaif.constitution import ConstitutionError, load_constitution, resolve_constitution
    from rlaif.endpoints import check_model_spec
    from rlaif.generation import make_generator
    from rlaif.generation.endpoint_client import EndpointError
    from rlaif.judging.judge import cached_judge
    from rlaif.modeling import ModelError
    from rlaif.prompts import PromptSetError, load_prompts
    from rlaif.stages.critique_revise import critique_revise, judge_filter
    from rlaif.store import write_jsonl

    try:
        if model is not None:
            check_model_spec(model, "--feedback")
        if judge is not None:
            check_model_spec(judge, "--judge")
    except ValueError as exc:
        raise _fail(exc) from None
    cfg = _run_config(
        config,
        overrides,
        _flag_overrides(model, judge, principles, rounds, few_shot, temperature, max_new_tokens, seed),
    )
    selectors = cfg.critique.principles
    try:
        loaded = load_constitution(resolve_constitution(constitution))
        items = load_prompts(prompts, limit=limit)
        loaded.select(selectors)
    except (ConstitutionError, FileNotFoundError, PromptSetError, ValueError) as exc:
        raise _fail(exc) from None
    # The filter is on exactly when a run's critique stage would filter (cfg.judge_filters_revisions): --judge sets
    # critique.judge_filter, and a config may turn it on with its own judge.
    judge_model = cfg.judge_model if cfg.judge_filters_revisions else None
    try:
        generator = make_generator(cfg.feedback_model, cfg.generation)
        # Loaded before the first prompt so that a judge that cannot load fails before minutes of generation.
        judge_loaded = None if judge_model is None else cached_judge(judge_model, cfg.judge.dtype)
    except (ModelError, EndpointError) as exc:
        raise _fail(exc) from None
    console.print(
        f"critique-revise: {len(items)} prompts, {cfg.critique.rounds} rounds, constitution {loaded.name!r}, "
        f"model {cfg.feedback_model}" + (f", judge {judge_model}" if judge_model is not None else ""),
        highlight=False,
    )
    records = []
    try:
        for index, record in enumerate(
            critique_revise(items, loaded, selectors, cfg.critique, generator, cfg.seed), start=1
        ):
            if judge_loaded is not None:
                # The stage's own filter (rlaif/stages/critique_revise.py), so the CLI shows what a run keeps.
                (record,) = judge_filter(cfg, [record], loaded, judge=judge_loaded)
            console.print(render_record(record, index))
            records.append(record)
    except (ValueError, KeyError, EndpointError) as exc:
        raise _fail(exc) from None
    kept = sum(r.kept for r in records)
    console.print(f"{kept} of {len(records)} revisions pass the quality checks", highlight=False)
    usage = getattr(generator, "usage", None)
    if usage:
        console.print(
            f"endpoint {usage['endpoint']}: {usage['requests']} requests ({usage['cached']} cached, "
            f"{usage['retries']} retries), {usage['prompt_tokens']} prompt + {usage['completion_tokens']} "
            "completion tokens",
            highlight=False,
        )
    if out is not None:
        write_jsonl(out, records)
        console.print(f"wrote {len(records)} records to {out}", highlight=False)


def _flag_overrides(
    model: str | None,
    judge: str | None,
    principles: list[str] | None,
    rounds: int | None,
    few_shot: int | None,
    temperature: float | None,
    max_new_tokens: int | None,
    seed: int | None,
) -> dict[str, Any]:
    """The run config overrides of the flags given (None: not given, so the config's value stands)."""
    selectors = [part.strip() for value in principles or [] for part in value.split(",") if part.strip()] or None
    sampling = {"temperature": temperature, "max_new_tokens": max_new_tokens}
    critique: dict[str, Any] = {"principles": selectors, "rounds": rounds, "few_shot": few_shot}
    critique = {k: v for k, v in critique.items() if v is not None}
    critique["sampling"] = {k: v for k, v in sampling.items() if v is not None}
    flags: dict[str, Any] = {"critique": critique}
    if seed is not None:
        flags["seed"] = seed
    if model is not None:
        flags["feedback"] = {"model": model}
    if judge is not None:
        # An explicit --judge asks for the filter, even with the policy as the judge (a run would leave it off).
        flags["judge"] = {"model": judge}
        critique["judge_filter"] = True
    return flags


def _run_config(config: Path | None, overrides: list[str] | None, flags: dict[str, Any]) -> RunConfig:
    """The run config: the file (errors name its lines), then --set, then the flags; exit 2 on any problem."""
    try:
        cfg = load_run_config(config)
    except (ValidationError, yaml.YAMLError) as exc:
        assert config is not None  # (the defaults validate)
        raise _fail("invalid run config:\n" + "\n".join(run_config_file_problems(config, exc))) from None
    except (ValueError, OSError) as exc:
        raise _fail(exc) from None
    for source, change in (("--set", lambda: parse_dotted_overrides(overrides or [])), ("flags", lambda: flags)):
        try:
            cfg = cfg.with_overrides(change())
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<config>'}: {e['msg']}" for e in exc.errors())
            raise _fail(f"invalid {source}: {problems}") from None
        except ValueError as exc:
            raise _fail(f"{source}: {exc}") from None
    return cfg


def register(app: typer.Typer) -> None:
    """Add `critique` to the top-level app."""
    app.command("critique")(critique_command)
