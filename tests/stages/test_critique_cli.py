"""`rlaif critique --judge` on the tiny model, in process (typer's CliRunner): the judge filter over the CLI."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.judging.revision_filter import PREFERS_INITIAL, SPLIT_ORDERS
from rlaif.records import CritiqueRecord
from rlaif.store import read_jsonl

runner = CliRunner()


def test_critique_judge_filters_the_revisions(tmp_path: Path, tiny_model: str) -> None:
    out = tmp_path / "records.jsonl"
    args = ["critique", "--model", tiny_model, "--constitution", "minimal", "--limit", "3", "--rounds", "1"]
    result = runner.invoke(app, [*args, "--max-new-tokens", "8", "--judge", tiny_model, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"judge {tiny_model}" in result.output
    records = read_jsonl(out, CritiqueRecord)
    assert len(records) == 3
    judged = [r for r in records if r.revision_judgement is not None]
    assert judged, [r.flags for r in records]  # at least one revision passed the quality checks and met the judge
    for record in judged:
        verdict = record.revision_judgement
        assert 0.0 <= verdict.p_a <= 1.0 and 0.0 <= verdict.p_a_swapped <= 1.0
        both_prefer = verdict.p_a > 0.5 and verdict.p_a_swapped > 0.5
        assert record.kept == both_prefer
        assert both_prefer or {PREFERS_INITIAL, SPLIT_ORDERS} & set(record.flags)
    assert "P(revision better)" in result.output
    # Without --judge nothing is judged.
    plain = runner.invoke(app, [*args, "--max-new-tokens", "8", "--out", str(out)])
    assert plain.exit_code == 0, plain.output
    assert all(r.revision_judgement is None for r in read_jsonl(out, CritiqueRecord))


def test_critique_judge_rejects_a_url(tiny_model: str) -> None:
    result = runner.invoke(app, ["critique", "--model", tiny_model, "--judge", "http://example.com/v1"])
    assert result.exit_code == 2 and "--judge" in result.output
