"""`rlaif generate`: sample completions from a model on either backend (a quick look at a policy).

rlaif generate --prompt "How do I pick a lock?" -n 2
rlaif generate rlaif/data/red_team_prompts.dev.jsonl --limit 8 --temperature 0 --json
rlaif generate --prompt "Hi" --backend vllm --model smollm2-135m-instruct
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer
from pydantic import ValidationError
from rich.console import Console

from rlaif.config import DEFAULT_MODEL, GenerationBackendConfig, SamplingConfig

errors = Console(stderr=True)


def _validated(kind: type[SamplingConfig] | type[GenerationBackendConfig], **fields: object):
    try:
        return kind.model_validate(fields)
    except ValidationError as exc:
        for error in exc.errors():
            errors.print(f"[red]error:[/red] --{'-'.join(map(str, error['loc'])).replace('_', '-')}: {error['msg']}")
        raise typer.Exit(2) from None


def generate_command(
    prompts_file: Path | None = typer.Argument(
        None, help="Prompts file: JSONL lines with a 'prompt' field, or a JSON list.", exists=True, dir_okay=False
    ),
    prompt: list[str] | None = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Registry name or local Hugging Face folder."),
    backend: Literal["auto", "transformers", "vllm"] = typer.Option(
        "transformers",
        help="Engine: transformers, vllm, or auto (vLLM when installed and on a GPU or for at least 2,500 tokens: "
        "prompts x n x max-new-tokens; rlaif/generation/backend_choice.py).",
    ),
    dtype: Literal["auto", "float32", "bfloat16"] = typer.Option("auto", help="Compute dtype."),
    batch_size: int = typer.Option(16, help="Sequences per generate call (transformers backend)."),
    n: int = typer.Option(1, "-n", min=1, max=64, help="Completions per prompt."),
    temperature: float = typer.Option(0.7, help="Softmax temperature; 0 = greedy."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass."),
    max_new_tokens: int = typer.Option(96, help="Most tokens per completion."),
    seed: int = typer.Option(0, help="Seed: the same seed and inputs give the same completions."),
    system: str | None = typer.Option(None, help="System message put before each prompt."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N prompts of the file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per prompt instead of text."),
) -> None:
    """Generate completions for prompts from a file and/or --prompt options, and print them."""
    from rlaif.generation import make_generator
    from rlaif.generation.backend_choice import generation_backend
    from rlaif.modeling import ModelError
    from rlaif.prompts import PromptSetError, load_prompts, parse_prompt_items

    sampling = _validated(SamplingConfig, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    backend_cfg = _validated(GenerationBackendConfig, backend=backend, dtype=dtype, batch_size=batch_size)
    try:
        items = load_prompts(prompts_file, limit=limit) if prompts_file else []
        if prompt:
            items += parse_prompt_items(prompt, source="--prompt")[0]
    except PromptSetError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if not items:
        errors.print("[red]error:[/red] no prompts: pass a prompts file or --prompt TEXT")
        raise typer.Exit(2)
    prefix = [{"role": "system", "content": system}] if system else []
    conversations = [[*prefix, {"role": "user", "content": item.prompt}] for item in items]
    # 'auto' by the rule every stage uses, for this call's estimated tokens; the choice and why go to stderr.
    choice = generation_backend(model, backend, len(items) * n * max_new_tokens, backend_cfg.vllm_break_even_tokens)
    if backend == "auto":
        errors.print(f"backend {choice.reason}", highlight=False, soft_wrap=True)
    try:
        generator = make_generator(model, choice.applied_to(backend_cfg))
        results = generator.generate(conversations, n, sampling, seed=seed)
    except (ModelError, ImportError, ValueError) as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for item, completions in zip(items, results, strict=True):
        if as_json:
            record = {
                "id": item.id,
                "prompt": item.prompt,
                "completions": [
                    {"text": c.text, "finished": c.finished, "tokens": len(c.token_ids)} for c in completions
                ],
            }
            print(json.dumps(record, ensure_ascii=False))
            continue
        print(f"### {item.id}: {item.prompt}")
        for index, completion in enumerate(completions):
            cut = "" if completion.finished else "  [cut at max_new_tokens]"
            print(f"--- {index}{cut}\n{completion.text}")
        print()


def register(app: typer.Typer) -> None:
    """Add `generate` to the top-level app."""
    app.command("generate")(generate_command)
