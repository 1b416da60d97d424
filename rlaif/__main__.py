"""`python -m rlaif` is the `rlaif` command."""

from rlaif.cli import app

app()
