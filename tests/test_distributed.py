"""Data parallelism for real: two gloo ranks under torchrun give the loss curve of one process.

The same global batch (4 sequences) is split 2 ranks x 1 micro-batch of 2, or 1 process x 2 micro-batches of
2; the loss is normalised over the global batch either way, so the curves agree to float tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlaif.config import RunConfig, load_run_config
from rlaif.records import LabelRecord, SFTExample
from rlaif.stages import LABELS_FILE, SFT_DATA_FILE, TENSORBOARD_DIR
from rlaif.stages.contract import StageContext
from rlaif.stages.reward_model import run_reward_model
from rlaif.stages.sft import run_sft
from rlaif.store import ArtifactStore, verify_manifest, write_jsonl

OVERRIDES = [
    "seed=5",
    "sft.batch_size=4",
    "sft.micro_batch_size=2",
    "sft.epochs=2",
    "sft.learning_rate=0.001",
    "sft.eval_fraction=0.2",
    "sft.dtype=float32",
    "reward_model.batch_size=4",
    "reward_model.epochs=2",
    "reward_model.micro_batch_size=2",
    "reward_model.learning_rate=0.001",
    "reward_model.eval_fraction=0.2",
    "reward_model.dtype=float32",
]


def _write_inputs(store: ArtifactStore, run_id: str) -> None:
    write_jsonl(
        store.path(run_id, "critique", SFT_DATA_FILE),
        [
            SFTExample(id=f"s{i}", prompt=f"Tell me about {i}.", response=f"{i} is a number. " * (1 + i % 4))
            for i in range(10)
        ],
    )
    write_jsonl(
        store.path(run_id, "judge", LABELS_FILE),
        [
            LabelRecord(
                id=f"l{i}",
                prompt=f"Help {i}",
                response_a="Sure! " * (1 + i % 3),
                response_b="No.",
                p_a=0.7,
                judgements=[],
            )
            for i in range(10)
        ],
    )


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _torchrun(args: list[str], root: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rlaif"]
    done = subprocess.run(command + args + ["--root", str(root)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny_model: str, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    for run_id in ("one", "two"):
        _write_inputs(store, run_id)

    cfg: RunConfig = load_run_config(None, OVERRIDES)
    torch.set_num_threads(1)
    run_sft(StageContext.of(store, "one", "sft", cfg=cfg, models={"base": tiny_model}))
    run_reward_model(
        StageContext.of(store, "one", "reward_model", cfg=cfg, models={"base": str(store.path("one", "sft", "model"))})
    )

    _torchrun(
        ["sft", "--run-id", "two", "--base-model", tiny_model, *[a for o in OVERRIDES for a in ("--set", o)]], tmp_path
    )
    _torchrun(["reward-model", "--run-id", "two"], tmp_path)

    for stage, keys in (
        ("sft", ("loss/train", "loss/eval")),
        ("reward_model", ("loss/train", "loss/eval", "reward/margin_train")),
    ):
        one = _metrics(store.path("one", stage, "metrics.jsonl"))
        two = _metrics(store.path("two", stage, "metrics.jsonl"))
        assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) >= 4
        for a, b in zip(one, two, strict=True):
            for key in keys:
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (stage, a["step"], key)
        verify_manifest(store.path("two", stage, "model"))
        w1 = load_file(store.path("one", stage, "model", "model.safetensors"))
        w2 = load_file(store.path("two", stage, "model", "model.safetensors"))
        # Adam divides by sqrt(v): where a gradient is ~0 its float noise becomes an lr-sized step, so weights
        # agree to a few x lr (1e-3) x steps, not to 1e-6 like the losses.
        worst = max((w1[n] - w2[n]).abs().max().item() for n in w1)
        assert worst < 4e-3, (stage, worst)
    # Only rank 0 wrote: one metrics line per step, one TensorBoard event file, no stray temporary folders.
    assert not [p for p in store.stage_dir("two", "sft").iterdir() if p.name.startswith(".")]
    for stage in ("sft", "reward_model"):
        assert len(list((store.stage_dir("two", stage) / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 1
