"""Checkpoints: HF folders that load as is, with lineage and a verifying manifest; LoRA; step states, and that
they do not outlive a finished stage."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rlaif.checkpoints import (
    ADAPTER_DIR,
    checkpoint_meta,
    list_steps,
    load_latest_step_state,
    read_meta,
    read_step_extra,
    save_hf_checkpoint,
    save_step_state,
)
from rlaif.config import RunConfig, SFTConfig
from rlaif.constitution import load_constitution, resolve_constitution
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.records import SFTExample
from rlaif.stages import SFT_DATA_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.sft import run_sft
from rlaif.store import ArtifactStore, StoreError, verify_manifest, write_jsonl
from rlaif.training import make_optimizer, make_scheduler

PROBE = torch.tensor([[1, 9690, 198, 2683, 314, 253, 5356, 30, 2]])


def test_hf_checkpoint_loads_as_is_and_carries_lineage(tiny_model: str, tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    constitution = load_constitution(resolve_constitution("minimal"))
    meta = checkpoint_meta(
        "sft",
        tiny_model,
        RunConfig(seed=7),
        constitution,
        judge_model="judge-x",
        counts={"train": 3},
        metrics={"loss/eval": 1.5},
    )
    folder = save_hf_checkpoint(model, tokenizer, tmp_path / "model", meta)

    manifest = verify_manifest(folder)
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "meta.json",
        "README.md",
    } <= set(manifest["files"])
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        assert torch.equal(model(PROBE).logits, reloaded(PROBE).logits)
    assert load_tokenizer(str(folder)).apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == (
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    )
    saved = read_meta(folder)
    assert saved["constitution"] == {
        "name": constitution.name,
        "sha256": constitution.sha256,
        "principles": [p.id for p in constitution.principles],
    }
    assert saved["run_config"]["seed"] == 7 and saved["judge_model"] == "judge-x" and saved["counts"] == {"train": 3}
    card = (folder / "README.md").read_text()
    assert constitution.sha256 in card and "judge-x" in card and "loss/eval" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_hf_checkpoint_replaces_an_existing_folder(tiny_model: str, tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    save_hf_checkpoint(model, tokenizer, tmp_path / "model", {"stage": "a"})
    (tmp_path / "model" / "stray.txt").write_text("from the old folder")
    save_hf_checkpoint(model, tokenizer, tmp_path / "model", {"stage": "b"})
    assert read_meta(tmp_path / "model")["stage"] == "b" and not (tmp_path / "model" / "stray.txt").exists()
    (tmp_path / "model" / "manifest.json").unlink()
    with pytest.raises(StoreError, match="not a complete rlaif checkpoint"):
        read_meta(tmp_path / "model")


def test_lora_saves_adapter_and_merged_model(tiny_model: str, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    model = get_peft_model(load_causal_lm(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter change the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
        expected = model(PROBE).logits
    folder = save_hf_checkpoint(model, load_tokenizer(tiny_model), tmp_path / "model", {"stage": "sft"})
    verify_manifest(folder)
    assert (folder / ADAPTER_DIR / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(folder)  # no peft needed to use the result
    adapter = PeftModel.from_pretrained(load_causal_lm(tiny_model), folder / ADAPTER_DIR)
    with torch.no_grad():
        assert torch.allclose(merged(PROBE).logits, expected, atol=1e-4)
        assert torch.allclose(adapter(PROBE).logits, expected, atol=1e-5)
    assert isinstance(model, PeftModel)  # the caller's model was not merged in place


def _train_one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: object) -> None:
    model.train()
    model(PROBE, labels=PROBE).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_step_state_round_trip_keeps_newest(tiny_model: str, tmp_path: Path) -> None:
    model = load_causal_lm(tiny_model)
    optimizer = make_optimizer(model, 1e-3)
    scheduler = make_scheduler(optimizer, total_steps=10, warmup_ratio=0.3)
    for step in (1, 2, 3):
        _train_one_step(model, optimizer, scheduler)
        save_step_state(tmp_path, step, model, optimizer, scheduler, {"history": [float(step)]}, keep=2)
    assert list_steps(tmp_path) == [2, 3]
    (tmp_path / ".step-00000004.abc.tmp").mkdir()  # an interrupted save is ignored
    rng_after_save = (random.random(), np.random.rand(), torch.rand(1))

    fresh = load_causal_lm(tiny_model)
    fresh_optimizer = make_optimizer(fresh, 1e-3)
    fresh_scheduler = make_scheduler(fresh_optimizer, total_steps=10, warmup_ratio=0.3)
    random.seed(123)
    assert load_latest_step_state(tmp_path, fresh, fresh_optimizer, fresh_scheduler) == 3
    assert (random.random(), np.random.rand(), torch.rand(1)) == rng_after_save  # RNGs continue where they were
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert read_step_extra(tmp_path, 3) == {"history": [3.0]}
    # Both continue identically.
    _train_one_step(model, optimizer, scheduler)
    _train_one_step(fresh, fresh_optimizer, fresh_scheduler)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))


def test_no_step_state_means_a_fresh_start(tiny_model: str, tmp_path: Path) -> None:
    model = load_causal_lm(tiny_model)
    assert load_latest_step_state(tmp_path / "steps", model, None, None) is None
    save_step_state(tmp_path / "steps", 5, model, None, None)
    optimizer = make_optimizer(model, 1e-3)
    with pytest.raises(StoreError, match="saved without optimizer state"):
        load_latest_step_state(tmp_path / "steps", model, optimizer, None)
    assert json.loads((tmp_path / "steps" / "step-00000005" / "step.json").read_text()) == {"step": 5}


def test_a_finished_stage_keeps_no_step_state_even_after_a_kill_between_save_and_clean_up(
    tiny_model: str, tmp_path: Path
) -> None:
    """The stage wrapper of a redelivered task finds the model done and removes what a worker killed right after
    the save left behind: step states (weights + trainer_state.pt), a half-written model folder, a temporary file."""
    store = ArtifactStore(tmp_path)
    write_jsonl(
        store.path("r1", "critique", SFT_DATA_FILE),
        [SFTExample(id=f"q{i}", prompt=f"Question {i}?", response="Politely.") for i in range(4)],
    )
    cfg = RunConfig(sft=SFTConfig(batch_size=2, micro_batch_size=2, epochs=1, checkpoint_every=1, dtype="float32"))
    run_sft(StageContext.of(store, "r1", "sft", cfg=cfg, models={"base": tiny_model}))
    stage = store.stage_dir("r1", "sft")
    assert not (stage / "steps").exists()  # removed right after the save
    model = load_causal_lm(tiny_model)
    save_step_state(stage / "steps", 1, model, make_optimizer(model, 1e-3), None)  # as a killed worker leaves them
    (stage / ".model.k1ll3d.tmp").mkdir()
    (stage / ".model.k1ll3d.tmp" / "model.safetensors").write_bytes(b"partial")
    (stage / ".metrics.jsonl.x1.tmp").write_text("{")
    weights = (stage / "model" / "model.safetensors").stat().st_mtime_ns

    run_sft(StageContext.of(store, "r1", "sft", cfg=cfg, models={"base": tiny_model}))  # the redelivered task
    assert sorted(p.name for p in stage.iterdir()) == ["metrics.jsonl", "model", "tensorboard"]
    assert (stage / "model" / "model.safetensors").stat().st_mtime_ns == weights  # not trained again
    verify_manifest(stage / "model")
