"""`rlaif constitutions check|show|diff`: validate principle files before a run uses them, and compare two."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from rlaif.constitution import Constitution, ConstitutionError, load_constitution, resolve_constitution
from rlaif.constitution_edit import diff_constitutions

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


def _load_named(name_or_path: str) -> Constitution:
    """A shipped constitution by name or a file by path; prints the problems and exits 2 when it is not valid."""
    try:
        return load_constitution(resolve_constitution(name_or_path))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
    except ConstitutionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
    raise typer.Exit(2)


@app.command("diff")
def diff_command(
    old: str = typer.Argument(..., help="The older constitution: a shipped name (harmless) or a file."),
    new: str = typer.Argument(..., help="The newer constitution: a shipped name or a file."),
    as_json: bool = typer.Option(False, "--json", help="Print the difference as JSON."),
) -> None:
    """Print the principles NEW adds (+), removes (-) and changes (~) relative to OLD; exit 1 if they differ
    (0 if not, 2 if either is not a valid constitution), as diff does."""
    before, after = _load_named(old), _load_named(new)
    delta = diff_constitutions(before, after)
    if as_json:
        print(delta.model_dump_json(indent=2))
    else:
        print(f"{old}: {before.name}, sha256 {before.sha256[:16]} -> {new}: {after.name}, sha256 {after.sha256[:16]}")
        for principle in delta.added:
            print(f"+ {principle.id} [{', '.join(principle.tags)}]")
        for principle in delta.removed:
            print(f"- {principle.id} [{', '.join(principle.tags)}]")
        for changed in delta.changed:
            print(f"~ {changed.id}: {', '.join(changed.fields)}")
        if delta.reordered:
            print("~ the order of the principles")
        for name in delta.other_changes:
            print(f"~ {name}")
    if not delta.empty:
        raise typer.Exit(1)
