"""`rlaif critique`: watch SL-CAI work: the model answers, critiques itself under a principle, and revises.

rlaif critique --constitution harmless --prompts examples/demo_prompts.jsonl --limit 3
rlaif critique --feedback endpoint:big-feedback --limit 3     # a declared endpoint (RLAIF_ENDPOINTS)
rlaif critique --judge endpoint:big-judge --limit 3           # keep a revision only when this judge prefers it
"""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from rlaif.config import DEFAULT_MODEL, CritiqueConfig, GenerationBackendConfig, JudgeConfig, SamplingConfig
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
    rounds: int = typer.Option(2, "--rounds", help="Critique-revision rounds per prompt."),
    model: str = typer.Option(
        DEFAULT_MODEL,
        "--feedback",
        "--model",
        help="The feedback model that answers, critiques and revises: registry name, local Hugging Face folder or "
        "endpoint:<name> (declared in RLAIF_ENDPOINTS).",
    ),
    judge: str | None = typer.Option(
        None,
        "--judge",
        help="The judge of the revision filter (critique.judge_filter): a revision is kept only when it prefers the "
        "revision to the first answer in both orders. Registry name, local Hugging Face folder or endpoint:<name>. "
        "Default: no filter.",
    ),
    principles: list[str] | None = typer.Option(
        None, "--principles", help="Principle ids / tag:<tag> (repeat or comma-separate)."
    ),
    few_shot: int = typer.Option(1, "--few-shot", help="Worked critique examples prepended as chat turns."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature (0 = greedy)."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", help="Most tokens per answer, critique or revision."),
    seed: int = typer.Option(0, "--seed", help="Seeds the principle draws and the sampling."),
    out: Path | None = typer.Option(None, "--out", help="Also write the CritiqueRecords to this JSONL file."),
) -> None:
    """Answer, critique and revise a few prompts with a constitution, and print every step."""
    from rlaif.constitution import ConstitutionError, load_constitution, resolve_constitution
    from rlaif.endpoints import check_model_spec
    from rlaif.generation import make_generator
    from rlaif.generation.endpoint_client import EndpointError
    from rlaif.judging.judge import cached_judge
    from rlaif.judging.revision_filter import filter_revisions
    from rlaif.modeling import ModelError
    from rlaif.prompts import PromptSetError, load_prompts
    from rlaif.stages.critique_revise import critique_revise
    from rlaif.store import write_jsonl

    selectors = [part.strip() for value in principles or [] for part in value.split(",") if part.strip()] or None
    try:
        cfg = CritiqueConfig(
            principles=selectors,
            rounds=rounds,
            few_shot=few_shot,
            sampling=SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens),
        )
        loaded = load_constitution(resolve_constitution(constitution))
        items = load_prompts(prompts, limit=limit)
        loaded.select(selectors)
        check_model_spec(model, "--feedback")
        if judge is not None:
            check_model_spec(judge, "--judge")
    except (ValidationError, ConstitutionError, FileNotFoundError, PromptSetError, ValueError) as exc:
        raise _fail(exc) from None
    try:
        generator = make_generator(model, GenerationBackendConfig())
        judge_cfg = JudgeConfig()
        judge_loaded = None if judge is None else cached_judge(judge, judge_cfg.dtype)
    except (ModelError, EndpointError) as exc:
        raise _fail(exc) from None
    console.print(
        f"critique-revise: {len(items)} prompts, {rounds} rounds, constitution {loaded.name!r}, model {model}"
        + (f", judge {judge}" if judge is not None else ""),
        highlight=False,
    )
    records = []
    try:
        for index, record in enumerate(critique_revise(items, loaded, selectors, cfg, generator, seed), start=1):
            if judge_loaded is not None:
                judge_model, judge_tokenizer = judge_loaded
                (record,) = filter_revisions([record], judge_model, judge_tokenizer, loaded, judge_cfg, seed)
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


def register(app: typer.Typer) -> None:
    """Add `critique` to the top-level app."""
    app.command("critique")(critique_command)
