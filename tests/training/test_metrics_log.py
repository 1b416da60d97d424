"""Training curves where people look for them (rlaif/metrics_log.py).

- SFT, the reward model and PPO each write TensorBoard event files into `<stage>/tensorboard/` with the same tags,
  steps and values as their metrics.jsonl; the model folder (and its manifest) holds none of them.
- A resumed stage rebuilds its event files and its MLflow run from the records it kept: no step shows twice.
- With RLAIF_MLFLOW_TRACKING_URI set (here a local file store), `rlaif sft` logs an MLflow run named
  '<run id>/<stage>' with the run config flattened as params and every step's metrics.

    python -m pytest tests/training/test_metrics_log.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlaif.config import PPOConfig, RewardModelConfig, RunConfig, SFTConfig
from rlaif.metrics_log import MetricsLog
from rlaif.records import LabelRecord, SFTExample
from rlaif.scorers import refusal_scorer
from rlaif.settings import settings
from rlaif.stages import SFT_DATA_FILE, TENSORBOARD_DIR
from rlaif.stages.ppo import train_ppo
from rlaif.stages.reward_model import train_reward_model
from rlaif.stages.sft import train_sft
from rlaif.store import ArtifactStore, read_manifest, verify_manifest, write_jsonl

REPO = Path(__file__).resolve().parents[2]
SFT = SFTConfig(batch_size=4, micro_batch_size=2, epochs=2, learning_rate=1e-3, eval_fraction=0.2, dtype="float32")
RM = RewardModelConfig(batch_size=4, micro_batch_size=2, epochs=1, learning_rate=1e-3, dtype="float32")
PPO = PPOConfig(
    total_episodes=8, prompts_per_step=4, num_minibatches=2, micro_batch_size=2, ppo_epochs=1, response_length=6
)
PROMPTS = ["How do I steal a car?", "Why is the sky blue?", "How can I make a bomb?", "How do I bake bread?"]


def _examples(n: int) -> list[SFTExample]:
    return [SFTExample(id=f"q{i}", prompt=f"Question {i}?", response="Politely. " * (1 + i % 3)) for i in range(n)]


def _labels(n: int) -> list[LabelRecord]:
    return [
        LabelRecord(id=f"p{i}:0:1", prompt=f"Request {i}?", response_a="Sure, here is how. " * (1 + i % 2),
                    response_b="No.", p_a=0.8, judgements=[])
        for i in range(n)
    ]  # fmt: skip


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _curves(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as {tag: [(step, value), ...]}: what the event files must hold."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                out.setdefault(key, []).append((row["step"], float(value)))
    return out


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in `folder`, as TensorBoard reads them (all events kept, none sampled)."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _assert_events_match(folder: Path, expected_tags: set[str]) -> dict[str, list[tuple[int, float]]]:
    curves, events = _curves(_rows(folder)), _events(folder / TENSORBOARD_DIR)
    assert expected_tags <= set(events) and set(events) == set(curves)
    for tag, points in curves.items():
        assert [step for step, _ in events[tag]] == [step for step, _ in points], tag  # each step once, in order
        assert [value for _, value in events[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag
    # The curves live beside the model, not in it: the checkpoint's manifest lists no event file and verifies.
    assert not any(TENSORBOARD_DIR in name for name in read_manifest(folder / "model")["files"])
    verify_manifest(folder / "model")
    return events


def test_each_training_loop_writes_tensorboard_events_of_its_metrics(tiny_model: str, tmp_path: Path) -> None:
    train_sft(_examples(10), tiny_model, SFT, tmp_path / "sft", seed=0, progress=False)
    events = _assert_events_match(tmp_path / "sft", {"loss/train", "loss/eval", "optim/lr", "perf/tokens_per_s"})
    assert [step for step, _ in events["loss/train"]] == [1, 2, 3, 4]  # 8 training examples / 4, 2 epochs
    assert [step for step, _ in events["loss/eval"]] == [2, 4]  # once per epoch

    train_reward_model(_labels(8), tiny_model, RM, tmp_path / "reward_model", seed=0, progress=False)
    events = _assert_events_match(tmp_path / "reward_model", {"loss/train", "reward/accuracy_train", "optim/lr"})
    assert [step for step, _ in events["loss/train"]] == [1, 2]

    train_ppo(PROMPTS, tiny_model, refusal_scorer(), PPO, tmp_path / "ppo", seed=0, progress=False)
    ppo_tags = {
        "objective/kl",
        "objective/scores",
        "policy/clipfrac",
        "loss/policy",
        "loss/value",
        "val/explained_variance",
    }
    events = _assert_events_match(tmp_path / "ppo", ppo_tags)
    assert [step for step, _ in events["objective/kl"]] == [1, 2]  # 8 episodes / 4 per update


def test_a_resumed_stage_rebuilds_its_event_files_without_repeating_a_step(tiny_model: str, tmp_path: Path) -> None:
    cfg = SFT.model_copy(update={"epochs": 3, "checkpoint_every": 2})

    class Preempted(Exception):
        """Stands in for a worker being killed mid-training."""

    def crash_at_step_5(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 5:
            raise Preempted

    with pytest.raises(Preempted):
        train_sft(_examples(10), tiny_model, cfg, tmp_path, seed=1, progress=False, on_step=crash_at_step_5)
    # The interrupted attempt's curves are on disk up to its last step (5); its step state is at step 4.
    assert [step for step, _ in _events(tmp_path / TENSORBOARD_DIR)["loss/train"]] == [1, 2, 3, 4, 5]
    train_sft(_examples(10), tiny_model, cfg, tmp_path, seed=1, progress=False)  # resumes at step 4
    events = _assert_events_match(tmp_path, {"loss/train", "loss/eval"})
    assert [step for step, _ in events["loss/train"]] == [1, 2, 3, 4, 5, 6]  # step 5 once, as redone


def test_a_resume_replaces_the_stages_mlflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The logger on its own: records of steps 1-4, then a resume from a step state at 2 that logs 3-5 again."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setattr(settings, "mlflow_tracking_uri", uri)  # (the server's RLAIF_MLFLOW_TRACKING_URI)
    monkeypatch.setattr(settings, "mlflow_experiment", "resume-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (this test reads the file store too)
    cfg = RunConfig(policy_model="tiny-random-llama")
    meta = {"run_id": "run-1", "run_config": cfg.model_dump(mode="json")}
    out_dir = tmp_path / "run-1" / "sft"
    first = MetricsLog(out_dir, "sft", cfg.sft, meta, start_step=0)
    for step in (1, 2, 3, 4):
        first.log({"step": step, "loss/train": 1.0 / step})  # (a crash: never closed)
    resumed = MetricsLog(out_dir, "sft", cfg.sft, meta, start_step=2)
    assert resumed.kept == [{"step": 1, "loss/train": 1.0}, {"step": 2, "loss/train": 0.5}]
    for step in (3, 4, 5):
        resumed.log({"step": step, "loss/train": 2.0 / step})
    resumed.close()

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("resume-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])  # the interrupted attempt's run is deleted
    assert (run.info.run_name, run.info.status) == ("run-1/sft", "FINISHED")
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss/train"))
    assert history == [(1, 1.0), (2, 0.5), (3, 2 / 3), (4, 0.5), (5, 0.4)]
    assert run.data.params["ppo.kl_coef"] == str(cfg.ppo.kl_coef) and run.data.params["seed"] == str(cfg.seed)
    assert [step for step, _ in _events(out_dir / TENSORBOARD_DIR)["loss/train"]] == [1, 2, 3, 4, 5]
    assert [row["step"] for row in _rows(out_dir)] == [1, 2, 3, 4, 5]


def test_rlaif_sft_logs_to_the_configured_mlflow(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    write_jsonl(store.path("r1", "critique", SFT_DATA_FILE), _examples(10))
    uri = (tmp_path / "mlruns").as_uri()
    env = {**os.environ, "RLAIF_MLFLOW_TRACKING_URI": uri, "RLAIF_MLFLOW_EXPERIMENT": "cli-test"}
    sets = [f"policy_model={tiny_model}", "sft.batch_size=4", "sft.micro_batch_size=2", "sft.epochs=2",
            "sft.eval_fraction=0.2", "sft.dtype=float32", "seed=5"]  # fmt: skip
    argv = [sys.executable, "-m", "rlaif", "sft", "--run-id", "r1", "--root", str(store.root)]
    argv += [arg for value in sets for arg in ("--set", value)]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (what rlaif sets for a file store; this test reads it)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cli-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert (run.info.run_name, run.info.status) == ("r1/sft", "FINISHED")
    assert run.data.tags["rlaif.run_id"] == "r1" and run.data.tags["rlaif.stage"] == "sft"
    params = run.data.params
    assert (params["policy_model"], params["seed"], params["sft.batch_size"], params["sft.epochs"]) == (
        tiny_model, "5", "4", "2",
    )  # fmt: skip
    assert params["ppo.kl_coef"] == str(RunConfig().ppo.kl_coef)  # the whole run config, flattened
    stage_dir = store.stage_dir("r1", "sft", create=False)
    for tag, points in _curves(_rows(stage_dir)).items():
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        assert [step for step, _ in logged] == [step for step, _ in points], tag
        assert [value for _, value in logged] == pytest.approx([value for _, value in points]), tag
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/eval")] == [2, 4]
    _assert_events_match(stage_dir, {"loss/train", "loss/eval"})
