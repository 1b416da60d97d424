"""DPO stage on the tiny model: reference log-probs, learning on a toy set, lineage, LoRA, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlaif.config import DPOConfig, RunConfig
from rlaif.constitution import load_constitution, resolve_constitution
from rlaif.modeling import load_causal_lm, load_tokenizer, prepare_model
from rlaif.records import LabelRecord
from rlaif.rl.losses import dpo_loss
from rlaif.stages import CONSTITUTION_FILE, INPUTS, LABELS_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.dpo import (
    REF_LOGPS_FILE,
    RefLogps,
    compute_reference_logps,
    dpo_batch_loss,
    pack_dpo,
    run_dpo,
    tokenize_dpo,
    train_dpo,
)
from rlaif.store import ArtifactStore, read_jsonl, verify_manifest, write_jsonl
from rlaif.training import IGNORE_INDEX

FAST = DPOConfig(
    batch_size=4, micro_batch_size=2, epochs=2, learning_rate=1e-3, eval_fraction=0.2, beta=0.5, dtype="float32"
)


def _labels(n: int) -> list[LabelRecord]:
    # A polite answer against a curt refusal; the judge prefers the polite one, on side a or on side b.
    labels = []
    for i in range(n):
        polite, curt = "Of course, here is how. " * (1 + i % 3), "No." * (1 + i % 2)
        a_polite = i % 4 != 3
        labels.append(
            LabelRecord(
                id=f"p{i}:0:1",
                prompt=f"Request {i}: please help me.",
                response_a=polite if a_polite else curt,
                response_b=curt if a_polite else polite,
                p_a=(0.9 if i % 2 else 1.0) if a_polite else 0.2,
                judgements=[],
            )
        )
    return labels


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _by_hand_logp(model: torch.nn.Module, ids: list[int], labels: list[int]) -> float:
    """log pi(response | prompt) of one unpacked sequence: the sum of log softmax at each response token."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX)


def test_pairs_are_turned_so_the_judge_prefers_chosen(tiny_model: str) -> None:
    tokenizer = load_tokenizer(tiny_model)
    polite, curt = _labels(4)[0], _labels(4)[3]  # p_a = 1.0 (a polite); p_a = 0.2 (b polite)
    kept = tokenize_dpo(tokenizer, polite, 128)
    turned = tokenize_dpo(tokenizer, curt, 128)
    assert kept.p == 1.0 and turned.p == pytest.approx(0.8)  # P(chosen better) = 1 - 0.2
    text = lambda e: tokenizer.decode([t for t in e.labels if t != IGNORE_INDEX])  # noqa: E731
    assert text(kept.chosen).startswith("Of course") and text(turned.chosen).startswith("Of course")
    assert text(turned.rejected).startswith("No.")
    # The prompt is masked exactly as in SFT: every label before the response is IGNORE_INDEX.
    n_prompt = kept.chosen.labels.index(next(t for t in kept.chosen.labels if t != IGNORE_INDEX))
    assert kept.chosen.input_ids[:n_prompt] == kept.rejected.input_ids[:n_prompt]


def test_precomputed_reference_logps_equal_on_the_fly_ones(tiny_model: str) -> None:
    tokenizer = load_tokenizer(tiny_model)
    model = load_causal_lm(tiny_model, device="cpu")
    examples = [tokenize_dpo(tokenizer, label, 128) for label in _labels(5)]
    # Packed, 2 pairs (4 sequences) per forward pass, LM head on the response positions only ...
    stored = compute_reference_logps(model, examples, micro_batch_size=2, device=torch.device("cpu"))
    assert [r.id for r in stored] == [e.id for e in examples]
    for e, r in zip(examples, stored, strict=True):
        # ... equals each sequence run alone through the plain forward, summed over its response tokens.
        assert r.chosen == pytest.approx(_by_hand_logp(model, *e.chosen), abs=1e-4)
        assert r.rejected == pytest.approx(_by_hand_logp(model, *e.rejected), abs=1e-4)
        assert r.tokens_chosen == sum(t != IGNORE_INDEX for t in e.chosen.labels)
    # At the start the policy is the reference: Delta = 0, so the loss is ln 2 whatever p, and the rewards are 0.
    batch = pack_dpo(examples[:2], {r.id: r for r in stored}, torch.device("cpu"))
    with torch.no_grad():
        loss_sum, out, logps = dpo_batch_loss(model, batch, FAST)
    assert logps[:2].tolist() == pytest.approx([r.chosen for r in stored[:2]], abs=1e-4)
    assert loss_sum.item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item(), abs=1e-4)
    assert out.chosen_rewards.abs().max().item() < 1e-4
    # Length normalisation reaches the loss as dpo_loss's token counts.
    normalised = FAST.model_copy(update={"length_normalize": True, "beta": 2.0})
    shifted = batch._replace(ref_logps=batch.ref_logps - torch.tensor([1.0, 1.0, 0.0, 0.0]))  # chosen log-ratio +1
    with torch.no_grad():
        _, out, _ = dpo_batch_loss(model, shifted, normalised)
    expected = dpo_loss(
        logps[:2], logps[2:], shifted.ref_logps[:2], shifted.ref_logps[2:], batch.p, 2.0,
        chosen_tokens=batch.tokens[:2], rejected_tokens=batch.tokens[2:],
    )  # fmt: skip
    assert out.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)
    assert out.chosen_rewards.tolist() == pytest.approx((2.0 / batch.tokens[:2]).tolist(), abs=1e-4)


def test_dpo_learns_the_preference_and_writes_a_loadable_policy(tiny_model: str, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"epochs": 4})
    result = train_dpo(_labels(10), tiny_model, cfg, tmp_path, seed=0, progress=False)

    # 8 train pairs (2 held out), batch 4 -> 2 steps per epoch, 4 epochs.
    assert result.counts == {"train_pairs": 8, "eval_pairs": 2, "dropped_too_long": 0, "steps": 8}
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"loss/dpo", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy"} <= set(rows[0])
    assert {"logps/chosen", "logps/rejected", "optim/lr", "perf/pairs_per_s"} <= set(rows[0])
    # Step 1 trains the policy that is still the reference: Delta = 0, loss ln 2, margins 0, nothing "correct".
    assert rows[0]["loss/dpo"] == pytest.approx(0.693147, abs=1e-3) and abs(rows[0]["rewards/margins"]) < 1e-3
    assert rows[-1]["loss/dpo"] < rows[0]["loss/dpo"] - 0.1
    assert rows[-1]["rewards/accuracy"] == 1.0 > rows[0]["rewards/accuracy"]
    assert rows[-1]["rewards/chosen"] > rows[-1]["rewards/rejected"]
    assert rows[-1]["rewards/margins"] == pytest.approx(rows[-1]["rewards/chosen"] - rows[-1]["rewards/rejected"])
    vals = [r for r in rows if "val/loss" in r]
    assert len(vals) == 4 and vals[-1]["val/rewards_accuracy"] == 1.0  # one validation per epoch
    assert set(result.metrics) >= {"loss/dpo", "rewards/accuracy", "val/loss", "val/rewards_margins"}

    verify_manifest(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert not (tmp_path / "steps").exists()  # resume states removed once the model is complete
    ref = read_jsonl(tmp_path / REF_LOGPS_FILE, RefLogps)
    assert len(ref) == 10  # every pair, held-out ones included, scored once by the reference


def test_run_dpo_records_lineage_and_trains_lora_adapters(tiny_model: str, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("r1", "judge", LABELS_FILE), _labels(8))
    constitution = load_constitution(resolve_constitution("minimal"))
    store.path("r1", INPUTS, CONSTITUTION_FILE).write_text(constitution.model_dump_json())
    dpo = FAST.model_copy(update={"epochs": 1, "lora_rank": 4, "lora_alpha": 8})
    cfg = RunConfig(seed=3, policy_optimization="dpo", dpo=dpo)

    result = run_dpo(
        StageContext.of(store, "r1", "dpo", cfg=cfg, models={"policy": tiny_model, "reference": tiny_model})
    )
    folder = store.path("r1", "dpo", "model")
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["stage"], meta["base_model"], meta["reference_model"]) == ("dpo", tiny_model, tiny_model)
    assert meta["policy_optimization"] == "dpo" == meta["run_config"]["policy_optimization"]
    assert meta["constitution"]["sha256"] == constitution.sha256 and meta["counts"]["labels"] == 8
    assert meta["metrics"] == result.metrics
    card = (folder / "README.md").read_text()
    assert "- stage: `dpo`" in card and "- policy optimization: `dpo`" in card
    assert f"- reference model: `{tiny_model}`" in card

    adapter = load_file(folder / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    merged = load_file(folder / "model.safetensors")
    base = load_file(prepare_model(tiny_model) / "model.safetensors")
    changed = [n for n in base if n in merged and not torch.equal(base[n], merged[n])]
    assert changed and all("proj" in n for n in changed)  # the merged adapters moved the linear layers only

    weights = (folder / "model.safetensors").stat().st_mtime_ns
    assert (
        run_dpo(StageContext.of(store, "r1", "dpo", cfg=cfg, models={"policy": tiny_model})).metrics == result.metrics
    )  # redelivered: not trained again
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights
    with pytest.raises(FileNotFoundError, match="run the judge-2 stage first"):
        run_dpo(
            StageContext.of(
                store, "r1", "dpo-2", cfg=cfg.model_copy(update={"iterations": 2}), models={"policy": tiny_model}
            )
        )


def test_bad_sizes_name_the_fields() -> None:
    with pytest.raises(ValueError, match="dpo.batch_size 6 is not divisible by dpo.micro_batch_size 4"):
        DPOConfig(batch_size=6, micro_batch_size=4)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(label_smoothing=0.5)


def test_dpo_resume_matches_an_uninterrupted_run(tiny_model: str, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"epochs": 3, "checkpoint_every": 2, "dtype": "auto"})
    labels = _labels(10)
    train_dpo(labels, tiny_model, cfg, tmp_path / "full", seed=1, progress=False)

    class Preempted(Exception):
        """Stands in for a worker being killed mid-training."""

    def crash_at_step_5(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 5:
            raise Preempted

    with pytest.raises(Preempted):
        train_dpo(labels, tiny_model, cfg, tmp_path / "resumed", seed=1, progress=False, on_step=crash_at_step_5)
    resumed_dir = tmp_path / "resumed"
    assert (resumed_dir / "steps" / "step-00000004").exists() and not (resumed_dir / "model").exists()
    scored = (resumed_dir / REF_LOGPS_FILE).stat().st_mtime_ns
    train_dpo(labels, tiny_model, cfg, resumed_dir, seed=1, progress=False)  # resumes at step 4
    assert (resumed_dir / REF_LOGPS_FILE).stat().st_mtime_ns == scored  # the stored reference log-probs, reused

    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    resumed = load_file(resumed_dir / "model" / "model.safetensors")
    assert all(torch.equal(full[name], resumed[name]) for name in full)

    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]

    assert timeless(_metrics(tmp_path / "full")) == timeless(_metrics(resumed_dir))
    assert [r["step"] for r in _metrics(resumed_dir)] == list(range(1, 7))  # 8 pairs / 4 x 3 epochs
