"""`rlaif generate` on the tiny model: prompts from a file and --prompt, JSON output, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlaif.cli import app

runner = CliRunner()


def test_generate_from_file_and_option_as_json(tmp_path: Path, tiny_model: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Hi there"}\n{"id": "b", "prompt": "Name a colour."}\n')
    args = [str(prompts), "-p", "What is 2 + 2?", "--model", tiny_model, "--dtype", "float32"]
    args += ["-n", "2", "--temperature", "1.0", "--max-new-tokens", "5", "--json"]
    result = runner.invoke(app, ["generate", *args])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["id"] for r in records[:2]] == ["a", "b"]
    assert records[2]["prompt"] == "What is 2 + 2?"
    assert all(len(r["completions"]) == 2 for r in records)
    assert all(c["tokens"] == 5 and c["finished"] is False for r in records for c in r["completions"])


def test_generate_text_output_marks_cut_completions(tiny_model: str) -> None:
    args = ["-p", "Hi", "--model", tiny_model, "--dtype", "float32", "--temperature", "0", "--max-new-tokens", "3"]
    result = runner.invoke(app, ["generate", *args])
    assert result.exit_code == 0, result.output
    assert ": Hi" in result.stdout
    assert "--- 0  [cut at max_new_tokens]" in result.stdout


def test_generate_errors_are_clear(tiny_model: str) -> None:
    result = runner.invoke(app, ["generate", "--model", tiny_model])
    assert result.exit_code == 2
    assert "no prompts" in result.output
    result = runner.invoke(app, ["generate", "-p", "Hi", "--model", tiny_model, "--top-p", "0"])
    assert result.exit_code == 2
    assert "--top-p" in result.output
    result = runner.invoke(app, ["generate", "-p", "Hi", "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "unknown model 'no-such-model': use one of" in result.output
