"""The whole service at toy size: REST API -> Celery worker subprocesses on real Redis -> every stage on
tiny-random-llama, evaluation included -> report and checkpoint download, on SQLite (API, worker and CLI as
subprocesses; XSTest and human pairs from the data folder) and on PostgreSQL (in-process API, two workers
splitting the queues, two RLAIF iterations). Style guide 14.

    python -m pytest tests/test_end_to_end.py -q
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from service_fixtures import KEYS, REPO, TINY_RUN, Service, auth, check_run_integrity, wait_for

from rlaif.client import Client
from rlaif.config import RunConfig

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300


def _prompts(tmp_path: Path, n: int = 8) -> Path:
    lines = (REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:n]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _check_outputs(service: Service, client: Client, run: dict, tmp_path: Path, n_extra: int = 0) -> dict:
    """Stage results, metrics, the evaluation report and the pulled policy of a finished run; returns the report.
    `n_extra`: prompts the evaluation drew from named sets besides the held-out ones."""
    from transformers import AutoModelForCausalLM

    from rlaif.cli.service import pull_checkpoint
    from rlaif.pipeline import stage_name

    cfg = RunConfig.model_validate(run["config"])
    counts = check_run_integrity(service, run["id"])
    iterations = range(1, cfg.iterations + 1)
    assert counts["critique"] == run["train_prompts"] == 6
    for i in iterations:
        assert counts[stage_name("pairs", i)] == run["train_prompts"]
        assert 1 <= counts[stage_name("judge", i)] <= run["train_prompts"]  # a pair per prompt, identical ones skipped
    stages = {s["name"]: s for s in run["stages"]}
    assert stages["critique"]["shards_total"] == 2 and stages["critique"]["counts"]["prompts"] == 6
    final = stage_name("ppo", cfg.iterations)
    assert stages[final]["done"] == stages[final]["total"] == cfg.ppo.num_updates
    history = client.json("GET", f"/v1/runs/{run['id']}/metrics")["stages"][final]["history"]
    assert [h["step"] for h in history] == list(range(1, cfg.ppo.num_updates + 1))
    assert "objective/kl" in history[0]
    trained = {"sft", *(stage_name(k, i) for i in iterations for k in ("reward_model", "ppo"))}
    checkpoints = client.checkpoints(run["id"])
    assert {c["stage"] for c in checkpoints} == trained  # the evaluation adds no checkpoint
    folder = pull_checkpoint(client, run["id"], "policy", tmp_path / "pulled")  # every SHA-256 checked
    assert folder.name == f"{final}-{cfg.ppo.num_updates}"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["stage"] == "ppo" and meta["run_id"] == run["id"]
    if cfg.iterations > 1:  # iteration 2 starts from iteration 1's policy
        previous = service.artifacts / "runs" / run["id"] / stage_name("ppo", cfg.iterations - 1) / "model"
        assert meta["base_model"] == str(previous)

    # Stage 7 ran last, on the last iteration's models, and its figures reached the API and the policy's card.
    evaluate = stages["evaluate"]
    assert list(stages)[-1] == "evaluate" and evaluate["done"] == evaluate["total"] == run["eval_prompts"] + n_extra
    report = client.report(run["id"])
    run_dir = service.artifacts / "runs" / run["id"]
    assert report["models"] == {
        "base": "tiny-random-llama",
        "sft": str(run_dir / "sft" / "model"),
        "aligned": str(run_dir / final / "model"),
    }
    assert report["reward_model"] == str(run_dir / stage_name("reward_model", cfg.iterations) / "model")
    assert report["prompts"]["heldout"] == run["eval_prompts"] == 2
    pooled = {(e["axis"], e["model"], e["baseline"]): e["stats"] for e in report["win_rates"] if e["dataset"] == "all"}
    for axis in ("harmless", "helpful"):  # held-out prompts count on both axes
        for pair in (("aligned", "base"), ("aligned", "sft"), ("sft", "base")):
            stats = pooled[(axis, *pair)]
            assert stats["n"] == 2 and stats["wins"] + stats["losses"] + stats["ties"] == 2
            assert stats["ci_low"] <= stats["win_rate"] <= stats["ci_high"]
    refusals = {(e["group"], e["model"], e["detector"]): e["stats"] for e in report["refusals"]}
    assert refusals[("heldout", "aligned", "patterns")]["n"] == 2 and ("heldout", "base", "judge") in refusals
    assert report["training"]["steps"] == list(range(1, cfg.ppo.num_updates + 1))  # the last PPO's curves
    assert report["labels"]["labels"] == counts[stage_name("judge", cfg.iterations)]  # the last judge's labels
    figures = {k: v for k, v in evaluate["metrics"].items() if k.startswith("eval/")}
    assert figures["eval/harmless_win_rate_vs_base"] == pooled[("harmless", "aligned", "base")]["win_rate"]
    assert meta["metrics"].items() >= figures.items() and meta["evaluation"]["report"] == "evaluate/report.json"
    card = (folder / "README.md").read_text()
    assert "## Evaluation" in card and "| Harmlessness win rate vs base |" in card
    policy_row = next(c for c in checkpoints if c["stage"] == final)
    assert policy_row["metrics"].items() >= figures.items()
    if cfg.iterations > 1:  # only the final policy is evaluated
        earlier = run_dir / stage_name("ppo", cfg.iterations - 1) / "model" / "README.md"
        assert "## Evaluation" not in earlier.read_text()
    return report


def test_sqlite_api_worker_and_cli_as_processes(
    make_service, service_tiny_model: str, packaged_data: Path, tmp_path: Path
) -> None:
    service: Service = make_service("sqlite", data_dir=packaged_data)  # the worker gets RLAIF_DATA_DIR
    url = service.start_api(via_cli=True)  # `rlaif serve`
    service.start_worker("w1", beat=True, via_cli=True)  # `rlaif worker`
    config = tmp_path / "run.yaml"
    eval_sets = {"extra_sets": ["xstest"], "prompts_per_set": 2, "human_pairs": 2}
    # A judge limit of 512 tokens and one prompt of ~1,000: the pairs of that prompt are cut to fit, not fatal.
    judge = {**TINY_RUN["judge"], "max_length": 512}
    config.write_text(yaml.safe_dump({**TINY_RUN, "judge": judge, "eval": {**TINY_RUN["eval"], **eval_sets}}))
    prompts = _prompts(tmp_path)
    lines = prompts.read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps(
        {**first, "prompt": first["prompt"] + " Some background: " + "the cat sat on the mat. " * 150}
    )
    prompts.write_text("\n".join(lines) + "\n")
    env = service.env(RLAIF_API_URL=url, RLAIF_API_KEY=KEYS["alice"])
    argv = [sys.executable, "-m", "rlaif", "submit", "--constitution", "minimal", "--prompts", str(prompts)]
    argv += ["--config", str(config), "--set", "seed=1", "--watch"]
    submitted = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr + service.log("w1")[-5000:]
    run_id = submitted.stdout.strip().splitlines()[-1]
    assert "succeeded" in submitted.stdout
    # stdout is a pipe, not a terminal: plain progress lines, one per stage transition, instead of live bars.
    assert re.search(r"^\[\d+:\d\d\] stage critique: running", submitted.stdout, re.MULTILINE), submitted.stdout
    assert re.search(r"^\[\d+:\d\d\] stage evaluate: succeeded", submitted.stdout, re.MULTILINE), submitted.stdout
    assert f"Evaluation of run {run_id}: aligned" in submitted.stdout  # the headline, at the end of --watch
    assert "harmlessness win rate vs base:" in submitted.stdout
    pulled = subprocess.run(
        [sys.executable, "-m", "rlaif", "pull", run_id, "--out", str(tmp_path / "cli-pull")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert (
        Path(pulled.stdout.strip())
        == tmp_path / "cli-pull" / run_id / f"ppo-{RunConfig().with_overrides(TINY_RUN).ppo.num_updates}"
    )
    client = Client(url, KEYS["alice"])
    run = client.run(run_id)
    assert run["config"]["seed"] == 1
    report = _check_outputs(service, client, run, tmp_path, n_extra=2)
    # The data folder reached the worker: XSTest refusal figures, the judge audit and the RM's human accuracy.
    assert report["prompts"] == {"heldout": 2, "xstest": 2}
    groups = {(e["group"], e["model"]) for e in report["refusals"]}
    assert {("harmful", "aligned"), ("safe_lookalike", "aligned"), ("harmful", "base")} <= groups
    assert report["judge_audit"]["pairs"] == 2 and report["reward"]["pairs_human"] == 2
    # The long prompt's pairs were cut to fit the judge: counted in the report and in the run's events, by id.
    cut = {part: items for part, items in report["long_items"].items() if items["truncated"] and part != "human pairs"}
    assert cut, report["long_items"]
    assert all(first["id"] in item_id for items in cut.values() for item_id in items["truncated_ids"]), cut
    warnings = client.events(run_id, after=0, kind="message")["data"]
    assert any("truncated to fit the context" in e["message"] and e["level"] == "warning" for e in warnings)
    assert "cut to fit the context:" in submitted.stdout
    page = client.report_html(run_id)
    assert page.startswith("<!DOCTYPE html>") and run_id in page


def test_postgresql_two_workers_two_iterations(make_service, service_tiny_model: str, tmp_path: Path) -> None:
    from api.main import create_app

    service: Service = make_service("postgresql")
    service.start_worker("w1", queues="control,generate,judge")
    service.start_worker("w2", queues="train,generate")
    with TestClient(create_app(service.settings())) as api:
        client = Client("http://testserver", None)
        client.http = TestClient(api.app, headers=auth())  # type: ignore[assignment]  # httpx's API, in-process
        con = client.upload_constitution((REPO / "constitutions" / "minimal.yaml").read_bytes())
        prompt_set = client.upload_prompts(_prompts(tmp_path))
        request = {"constitution_id": con["id"], "prompt_set_id": prompt_set["id"], "config": TINY_RUN, "iterations": 2}
        run = client.create_run(request)
        run = wait_for(
            lambda: (r := client.run(run["id"]))["status"] in ("succeeded", "failed") and r, RUN_TIMEOUT, "the run"
        )
        assert run["status"] == "succeeded", (run["error"], service.log("w1")[-3000:], service.log("w2")[-3000:])
        _check_outputs(service, client, run, tmp_path)
    # Both workers took generation shards: the queue is shared, not owned.
    assert "generate.critique_shard" in service.log("w1") or "generate.pairs_shard" in service.log("w1")
    assert "generate.critique_shard" in service.log("w2") or "generate.pairs_shard" in service.log("w2")
