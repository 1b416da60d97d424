"""`rlaif models list|prepare`: the model registry and its converted-model cache."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from rlaif.modeling import ModelError, list_models, prepare_model

app = typer.Typer(no_args_is_help=True, help="Registered models and the converted-model cache.")
console = Console()


@app.command("list")
def list_command() -> None:
    """List registered models and whether each is in the cache."""
    table = Table("name", "cached", "description")
    for row in list_models():
        table.add_row(row["name"], row["cached"], row["description"])
    console.print(table)


@app.command("prepare")
def prepare_command(name: str = typer.Argument("smollm2-135m-instruct", help="Registry name or local folder.")) -> None:
    """Convert a registered model into the safetensors cache (once) and print its folder."""
    try:
        path = prepare_model(name)
    except ModelError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    print(path)
