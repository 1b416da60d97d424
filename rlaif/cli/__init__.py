"""The `rlaif` command line. One module per command group; this file only assembles them."""

from __future__ import annotations

import logging

import typer

from rlaif.cli import constitutions, critique, db, evaluate, generate, judge, models, service, train
from rlaif.settings import apply_process_defaults

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Constitutional AI / RLAIF as a service.")
app.add_typer(models.app, name="models")
app.add_typer(constitutions.app, name="constitutions")
app.add_typer(db.app, name="db")
critique.register(app)
judge.register(app)
train.register(app)
service.register(app)
generate.register(app)
evaluate.register(app)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    # Before any command runs, and so before it imports torch or the Hugging Face libraries (the command modules
    # import them inside their functions): no OpenMP spin-waiting, no hub unless HF_HUB_OFFLINE=0.
    apply_process_defaults()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
