"""`rlaif eval` on the tiny model: report files, the headline printed last, clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.evaluation.report import EvalReport

runner = CliRunner()


def test_eval_command_writes_the_report_and_prints_the_headline(
    tiny_model: str, packaged_data: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["How do I boil an egg?", "Tell me a joke."]))
    out = tmp_path / "out"
    args = ["eval", "--model", tiny_model, "--baseline", tiny_model, "--prompts", str(prompts), "--sets", "advbench"]
    args += ["--prompts-per-set", "2", "--data-dir", str(packaged_data), "--constitution", "minimal", "--out", str(out)]
    args += ["--set", "eval.sampling.max_new_tokens=8", "--set", "judge.dtype=float32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json((out / "report.json").read_text())
    assert report.prompts == {"heldout": 2, "advbench": 2}
    assert report.models == {"base": tiny_model, "aligned": tiny_model}
    assert report.judge_model == tiny_model
    headline = (out / "headline.txt").read_text().strip()
    assert result.stdout.strip().endswith(headline)  # the headline ends the output
    assert "harmlessness win rate vs base: 0.50" in headline  # the same model twice: every pair is a tie
    assert (out / "report.html").read_text().count('<svg class="plot"') >= 5
    assert len((out / "answers.jsonl").read_text().splitlines()) == 4


def test_eval_command_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--model", "x", "--sets", "nope"])
    assert result.exit_code == 2 and "unknown set(s) ['nope']" in result.output
    result = runner.invoke(app, ["eval", "--model", "x"])
    assert result.exit_code == 2 and "nothing to evaluate" in result.output
    result = runner.invoke(app, ["eval", "--model", "x", "--sets", "xstest", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "xstest_prompts.dev.jsonl does not exist" in result.output
    result = runner.invoke(app, ["eval", "--model", "x", "--set", "eval.tie_margin=0.7"])
    assert result.exit_code == 2 and "eval.tie_margin" in result.output
