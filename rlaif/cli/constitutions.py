"""`rlaif constitutions check|show`: validate principle files before a run uses them."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from rlaif.constitution import ConstitutionError, load_constitution

app = typer.Typer(no_args_is_help=True, help="Validate and inspect constitution files.")


@app.command("check")
def check_command(files: list[Path] = typer.Argument(..., help="Constitution YAML/JSON files.")) -> None:
    """Validate files; print every error as file:line: field: message and exit 2 if any file is bad."""
    failed = False
    for path in files:
        try:
            constitution = load_constitution(path)
        except ConstitutionError as exc:
            failed = True
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        print(
            f"{path}: ok: {constitution.name}, {len(constitution.principles)} principles, sha256 {constitution.sha256[:16]}"
        )
    if failed:
        raise typer.Exit(2)


@app.command("show")
def show_command(path: Path = typer.Argument(..., help="Constitution file.")) -> None:
    """Print the principles of a constitution."""
    try:
        constitution = load_constitution(path)
    except ConstitutionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise typer.Exit(2) from None
    for principle in constitution.principles:
        print(
            f"{principle.id} [{', '.join(principle.tags)}]\n  critique:   {principle.critique}\n"
            f"  revision:   {principle.revision}\n  comparison: {principle.comparison}"
        )
