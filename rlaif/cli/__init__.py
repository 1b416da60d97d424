"""The `rlaif` command line. One module per command group; this file only assembles them."""

from __future__ import annotations

import logging
import os

# Before torch is imported anywhere: no OpenMP spin-waiting (20x slowdowns when processes share cores), no hub.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import typer

from rlaif.cli import constitutions, critique, db, evaluate, generate, judge, models, service, train

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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
