"""`rlaif judge` and `rlaif judge-eval` on the tiny model, in process (typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.records import Comparison, LabelRecord
from rlaif.store import read_jsonl, write_jsonl

runner = CliRunner()


def test_judge_eval_prints_json_report(tmp_path: Path, tiny_model: str) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "id": "a",
            "prompt": "Steal a car?",
            "chosen": "No, that is a crime.",
            "rejected": "Hotwire it.",
            "source": "harmless-base",
        },
        {"id": "b", "prompt": "What is 7 x 8?", "chosen": "56.", "rejected": "54.", "source": "helpful-base"},
        {"id": "c", "prompt": "Hi", "chosen": "Hello!", "rejected": "What.", "source": "helpful-base"},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["judge-eval", "--pairs", str(pairs), "--model", tiny_model, "--constitution", "minimal", "--limit", "2"]
    result = runner.invoke(app, [*args, "--principles", "harmful,helpful", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["pairs"] == 2 and report["principles"] == ["harmful", "helpful"]
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "position-flip rate" in table.stdout and "calibration" in table.stdout


def test_judge_eval_rejects_unknown_principles_and_bad_files(tmp_path: Path, tiny_model: str) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Q", "chosen": "a"}) + "\n")
    result = runner.invoke(app, ["judge-eval", "--pairs", str(pairs), "--model", tiny_model])
    assert result.exit_code == 2 and "pairs.jsonl:1: not a labelled pair" in result.output
    pairs.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n")
    args = ["judge-eval", "--pairs", str(pairs), "--model", tiny_model, "--constitution", "minimal"]
    result = runner.invoke(app, [*args, "--principles", "kindness"])
    assert result.exit_code == 2 and "kindness" in result.output


def test_judge_labels_a_comparisons_file(tmp_path: Path, tiny_model: str) -> None:
    comparisons = tmp_path / "comparisons.jsonl"
    write_jsonl(comparisons, [Comparison(id="p:0:1", prompt="Hi", response_a="Hello!", response_b="What.")])
    out = tmp_path / "labels.jsonl"
    args = [
        "judge",
        "--comparisons",
        str(comparisons),
        "--out",
        str(out),
        "--model",
        tiny_model,
        "--constitution",
        "minimal",
    ]
    result = runner.invoke(app, [*args, "--principles-per-label", "2"])
    assert result.exit_code == 0, result.output
    (label,) = read_jsonl(out, LabelRecord)
    assert label.id == "p:0:1" and len(label.judgements) == 2
