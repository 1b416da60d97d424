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


def test_critique_takes_the_run_configs_critique_and_judge_sections(tmp_path: Path, tiny_model: str) -> None:
    from rlaif.judging.revision_filter import JUDGE_TRUNCATED

    config = tmp_path / "run.yaml"
    config.write_text(
        f"policy_model: {tiny_model}\n"
        "critique:\n"
        "  rounds: 2\n"
        "  sampling: {max_new_tokens: 24}\n"
        "  judge_filter: true\n"
        "judge:\n"
        f"  model: {tiny_model}\n"
        # Shorter than any of these judge prompts (~90 tokens of instructions, then the prompt and two answers
        # of ~24 tokens), longer than the least it can cut them to (8 tokens each): every judged pair is cut to fit.
        "  max_length: 112\n"
    )
    out = tmp_path / "records.jsonl"
    args = ["critique", "--config", str(config), "--constitution", "minimal", "--limit", "3", "--out", str(out)]
    result = runner.invoke(app, [*args, "--rounds", "1"])  # the flag overrides the file's 2 rounds
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # (rich wraps lines at the terminal's width)
    assert f"1 rounds, constitution 'minimal', model {tiny_model}, judge {tiny_model}" in text
    records = read_jsonl(out, CritiqueRecord)
    assert len(records) == 3 and all(len(r.rounds) <= 1 for r in records)
    judged = [r for r in records if r.revision_judgement is not None]
    assert judged, [r.flags for r in records]
    # judge.max_length came from the file: the judge saw each pair cut to 112 tokens.
    assert all(r.revision_judgement.truncated and JUDGE_TRUNCATED in r.flags for r in judged)
    # --set turns the file's filter off; the file's 2 rounds stand without --rounds.
    plain = runner.invoke(app, [*args, "--set", "critique.judge_filter=false"])
    assert plain.exit_code == 0, plain.output
    text = " ".join(plain.output.split())
    assert f"2 rounds, constitution 'minimal', model {tiny_model}" in text and f"judge {tiny_model}" not in text
    assert all(r.revision_judgement is None for r in read_jsonl(out, CritiqueRecord))


def test_critique_reports_a_bad_run_config_with_its_file_line_and_field(tmp_path: Path, tiny_model: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("seed: 1\njudge:\n  principles_per_label: 2\n  batch_size: 0\n  cot: true\n")
    result = runner.invoke(app, ["critique", "--model", tiny_model, "--config", str(config)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{config}:4: judge.batch_size: Input should be greater than or equal to 1" in text
    assert f"{config}:5: judge.cot: Extra inputs are not permitted" in text
    config.write_text("judge:\n  model: [unclosed\n")
    result = runner.invoke(app, ["critique", "--model", tiny_model, "--config", str(config)])
    assert result.exit_code == 2 and f"{config}:3: <document>:" in " ".join(result.output.split()), result.output
    bad_set = runner.invoke(app, ["critique", "--model", tiny_model, "--set", "judge.batch_size=0"])
    text = " ".join(bad_set.output.split())
    assert bad_set.exit_code == 2 and "invalid --set: judge.batch_size" in text, bad_set.output
    bad_flag = runner.invoke(app, ["critique", "--model", tiny_model, "--rounds", "99"])
    text = " ".join(bad_flag.output.split())
    assert bad_flag.exit_code == 2 and "invalid flags: critique.rounds" in text, bad_flag.output
