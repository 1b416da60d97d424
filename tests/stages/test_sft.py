"""SFT stage on the tiny model: a loadable checkpoint with lineage, helpful mixing, LoRA, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlaif.config import RunConfig, SFTConfig
from rlaif.constitution import load_constitution, resolve_constitution
from rlaif.modeling import prepare_model
from rlaif.records import CritiqueRecord, SFTExample
from rlaif.stages import CONSTITUTION_FILE, CRITIQUE_RECORDS_FILE, INPUTS, SFT_DATA_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.sft import count_critiqued, revision_survival, run_sft, train_sft
from rlaif.store import ArtifactStore, verify_manifest, write_jsonl


def _examples(n: int, prefix: str = "q") -> list[SFTExample]:
    return [
        SFTExample(
            id=f"{prefix}{i}",
            prompt=f"Question {i}: how should I answer?",
            response="Politely and honestly. " * (1 + i % 3),
        )
        for i in range(n)
    ]


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


FAST = SFTConfig(batch_size=4, micro_batch_size=2, epochs=2, learning_rate=1e-3, eval_fraction=0.2, dtype="float32")


def test_train_sft_learns_and_writes_a_loadable_model(tiny_model: str, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"epochs": 4})
    result = train_sft(_examples(10), tiny_model, cfg, tmp_path, seed=0, progress=False)

    # 8 train examples (2 held out), batch 4 -> 2 steps per epoch, 4 epochs.
    assert result.counts == {
        "train_examples": 8,
        "eval_examples": 2,
        "helpful_examples": 0,
        "dropped_too_long": 0,
        "steps": 8,
    }
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"loss/train", "optim/lr", "perf/tokens_per_s", "epoch"} <= set(rows[0])
    evals = [r["loss/eval"] for r in rows if "loss/eval" in r]
    assert len(evals) == 4 and evals[-1] < evals[0]  # one eval per epoch, improving on the repetitive data
    assert rows[-1]["loss/train"] < rows[0]["loss/train"]
    assert result.metrics == {"loss/train": rows[-1]["loss/train"], "loss/eval": rows[-1]["loss/eval"]}

    verify_manifest(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert not (tmp_path / "steps").exists()  # resume states removed once the model is complete


def test_run_sft_reads_the_run_and_records_lineage(tiny_model: str, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    cfg = RunConfig(seed=3, sft=FAST.model_copy(update={"epochs": 1, "helpful_mix": 0.5}))
    # The critique stage writes revisions and the plain answers of `kind: helpful` prompts into one file.
    helpful = [e.model_copy(update={"kind": "helpful"}) for e in _examples(20, prefix="h")]
    write_jsonl(store.path("r1", "critique", SFT_DATA_FILE), _examples(10) + helpful)
    constitution = load_constitution(resolve_constitution("minimal"))
    store.path("r1", INPUTS, CONSTITUTION_FILE).write_text(constitution.model_dump_json())

    result = run_sft(StageContext.of(store, "r1", "sft", cfg=cfg, models={"base": tiny_model}))
    assert result.counts["helpful_examples"] == 4  # round(0.5 x 8 training revisions)
    assert result.counts["train_examples"] == 12
    meta = json.loads(store.path("r1", "sft", "model", "meta.json").read_text())
    assert meta["constitution"]["sha256"] == constitution.sha256 and meta["base_model"] == tiny_model
    assert meta["run_config"]["sft"]["helpful_mix"] == 0.5 and meta["counts"]["sft_records"] == 10
    assert meta["metrics"] == result.metrics

    weights = store.path("r1", "sft", "model", "model.safetensors").stat().st_mtime_ns
    assert (
        run_sft(StageContext.of(store, "r1", "sft", cfg=cfg, models={"base": tiny_model})).metrics == result.metrics
    )  # redelivered: not trained again
    assert store.path("r1", "sft", "model", "model.safetensors").stat().st_mtime_ns == weights


def test_helpful_mix_takes_all_helpful_answers_by_default_or_a_fraction(caplog: pytest.LogCaptureFixture) -> None:
    from rlaif.stages.sft import _helpful_mix

    helpful = _examples(20, prefix="h")
    assert _helpful_mix(helpful, 8, FAST, seed=0) == helpful  # helpful_mix null: every helpful answer
    half = _helpful_mix(helpful, 8, FAST.model_copy(update={"helpful_mix": 0.5}), seed=0)
    assert len(half) == 4 and set(e.id for e in half) <= {e.id for e in helpful}  # round(0.5 x 8)
    assert _helpful_mix(helpful, 8, FAST.model_copy(update={"helpful_mix": 0.0}), seed=0) == []
    with caplog.at_level("WARNING"):  # a prompt set without helpful prompts trains on revisions alone
        assert _helpful_mix([], 8, FAST.model_copy(update={"helpful_mix": 0.5}), seed=0) == []
    assert "no helpful examples" in caplog.text


def test_too_few_surviving_revisions_warn_in_the_result(
    tiny_model: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 4 revisions of 20 critiqued prompts survived: 20 % < the default sft.min_revision_survival of 30 %.
    cfg = FAST.model_copy(update={"epochs": 1, "eval_fraction": 0.0})
    low = train_sft(_examples(4), tiny_model, cfg, tmp_path / "low", seed=0, progress=False, critiqued=20)
    [warning] = low.extra["warnings"]
    assert warning.startswith("only 4 of 20 critiqued prompts (20%) kept a revision for SFT, below ")
    assert "sft.min_revision_survival 30%" in warning and warning in caplog.text
    assert low.extra["revision_survival"] == {"kept": 4, "critiqued": 20, "fraction": 0.2}
    meta = json.loads((tmp_path / "low" / "model" / "meta.json").read_text())
    assert meta["warnings"] == [warning]  # (what a finished stage reads back)
    # 4 of 10 (40 %) is enough; without the count (a caller that does not know it) nothing is checked.
    assert revision_survival(4, 10, cfg.min_revision_survival).warning is None
    assert revision_survival(4, None, cfg.min_revision_survival).extra() == {}
    assert revision_survival(0, 0, cfg.min_revision_survival).warning is None  # (no harmful prompts at all)
    strict = revision_survival(4, 10, 0.5)
    assert (
        strict.fraction == 0.4
        and strict.warning is not None
        and "below sft.min_revision_survival 50%" in strict.warning
    )


def test_count_critiqued_reads_the_harmful_records(tmp_path: Path) -> None:
    records = [
        CritiqueRecord(id=f"r{i}", prompt="p?", kind=kind, initial_response="a", rounds=[], final_revision="a",
                       kept=i % 2 == 0)
        for i, kind in enumerate(["harmful", "harmful", "helpful", "harmful"])
    ]  # fmt: skip
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("r1", "critique", CRITIQUE_RECORDS_FILE), records)
    assert count_critiqued(store, "r1") == 3
    assert count_critiqued(store, "r2") is None  # (no critique stage)


def test_bad_inputs_name_the_problem(tiny_model: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sft.batch_size per rank 6 is not divisible by sft.micro_batch_size"):
        train_sft(
            _examples(4), tiny_model, FAST.model_copy(update={"batch_size": 6, "micro_batch_size": 4}), tmp_path, 0
        )
    with pytest.raises(FileNotFoundError, match="run the critique stage first"):
        run_sft(StageContext.of(ArtifactStore(tmp_path), "r2", "sft", cfg=RunConfig(), models={"base": tiny_model}))


def test_lora_sft_trains_adapters_only_and_saves_both(tiny_model: str, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"lora_rank": 4, "lora_alpha": 8, "epochs": 1})
    train_sft(_examples(6), tiny_model, cfg, tmp_path, seed=0, progress=False)
    verify_manifest(tmp_path / "model")
    adapter = load_file(tmp_path / "model" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    merged = load_file(tmp_path / "model" / "model.safetensors")
    base = load_file(prepare_model(tiny_model) / "model.safetensors")
    changed = [n for n in base if n in merged and not torch.equal(base[n], merged[n])]
    assert changed and all("proj" in n for n in changed)  # the merged adapters moved the linear layers only


def test_resume_matches_an_uninterrupted_run(tiny_model: str, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"epochs": 3, "checkpoint_every": 2, "dtype": "auto"})
    examples = _examples(10)
    train_sft(examples, tiny_model, cfg, tmp_path / "full", seed=1, progress=False)

    class Preempted(Exception):
        """Stands in for a worker being killed mid-training."""

    def crash_at_step_5(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 5:
            raise Preempted

    with pytest.raises(Preempted):
        train_sft(examples, tiny_model, cfg, tmp_path / "resumed", seed=1, progress=False, on_step=crash_at_step_5)
    assert (tmp_path / "resumed" / "steps" / "step-00000004").exists() and not (tmp_path / "resumed" / "model").exists()
    train_sft(examples, tiny_model, cfg, tmp_path / "resumed", seed=1, progress=False)  # resumes at step 4

    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(full[name], resumed[name]) for name in full)

    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]

    assert timeless(_metrics(tmp_path / "full")) == timeless(_metrics(tmp_path / "resumed"))
    assert [r["step"] for r in _metrics(tmp_path / "resumed")] == list(range(1, 7))  # 8 examples / 4 x 3 epochs
