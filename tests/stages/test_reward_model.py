"""Reward model stage on the tiny model: soft-label loss, last-token pooling, normalisation, checkpoints, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlaif.config import RewardModelConfig, RunConfig
from rlaif.distributed import init_distributed
from rlaif.evaluation.datasets import load_human_pairs
from rlaif.records import HumanPair, LabelRecord
from rlaif.rl.losses import bradley_terry_loss
from rlaif.stages import LABELS_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.reward_model import (
    PairExample,
    _add_lora,
    _human_mix,
    evaluate_reward_model,
    load_reward_backbone,
    pack_pairs,
    packed_rewards,
    pair_loss_sum,
    pooled_rewards,
    reward_score_fn,
    reward_tokenizer,
    run_reward_model,
    train_reward_model,
)
from rlaif.store import ArtifactStore, verify_manifest, write_jsonl
from rlaif.training import tokenize_chat

FAST = RewardModelConfig(
    batch_size=4, micro_batch_size=2, epochs=2, learning_rate=1e-3, eval_fraction=0.2, dtype="float32"
)


def _labels(n: int) -> list[LabelRecord]:
    # a: a polite answer of varying length; b: a curt refusal. Soft labels favour a, some are ties.
    return [
        LabelRecord(
            id=f"p{i}:0:1",
            prompt=f"Request {i}: please help me.",
            response_a="Of course, here is how. " * (1 + i % 3),
            response_b="No." * (1 + i % 2),
            p_a=0.5 if i % 5 == 0 else 0.8,
            judgements=[],
        )
        for i in range(n)
    ]


def test_soft_bradley_terry_by_hand() -> None:
    # sigma(0) = 1/2, so at margin 0 the loss is ln 2 whatever the label.
    # sigma(ln 3) = 3/4: p = 0.75 gives -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.21576 + 0.34657 = 0.56233;
    # p = 1 gives -ln 0.75 = 0.28768; p = 0 gives -ln 0.25 = 1.38629. Mean of the four = 0.66069.
    margin = torch.tensor([0.0, math.log(3), math.log(3), math.log(3)])
    p = torch.tensor([0.3, 0.75, 1.0, 0.0])
    expected = (math.log(2) + 0.5623351446 + 0.2876820725 + 1.3862943611) / 4
    assert bradley_terry_loss(margin, p).item() == pytest.approx(expected, abs=1e-6)


def test_pair_loss_uses_the_rewards_of_both_sides(tiny_model: str) -> None:
    tokenizer = reward_tokenizer(tiny_model)
    model = load_reward_backbone(tiny_model, tokenizer.pad_token_id, torch.device("cpu"))
    pairs = [
        PairExample(
            tokenize_chat(tokenizer, "q", "long answer here", 64).input_ids,
            tokenize_chat(tokenizer, "q", "no", 64).input_ids,
            0.9,
        ),
        PairExample(
            tokenize_chat(tokenizer, "r", "x", 64).input_ids, tokenize_chat(tokenizer, "r", "y z", 64).input_ids, 0.2
        ),
    ]
    batch = pack_pairs(pairs, torch.device("cpu"))
    with torch.no_grad():
        loss_sum, margin = pair_loss_sum(model, batch)
        rewards = packed_rewards(model, batch)  # a sides, then b sides
    margins = [(rewards[0] - rewards[2]).item(), (rewards[1] - rewards[3]).item()]
    assert margin.tolist() == pytest.approx(margins)

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    by_hand = sum(-(p * log_sigmoid(m) + (1 - p) * log_sigmoid(-m)) for m, p in zip(margins, (0.9, 0.2), strict=True))
    assert loss_sum.item() == pytest.approx(by_hand, rel=1e-5)


def test_pooling_reads_the_last_real_token(tiny_model: str) -> None:
    tokenizer = reward_tokenizer(tiny_model)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id  # SmolLM2 pads with EOS; the reward model must not
    model = load_reward_backbone(tiny_model, tokenizer.pad_token_id, torch.device("cpu"))
    short = tokenize_chat(tokenizer, "Hi", "Hello!", 128).input_ids  # ends with EOS (<|im_end|>)
    long = tokenize_chat(tokenizer, "Hi", "Hello, how can I help you today?", 128).input_ids
    padded = torch.full((2, len(long)), tokenizer.pad_token_id)
    padded[0, : len(short)], padded[1] = torch.tensor(short), torch.tensor(long)
    with torch.no_grad():
        # transformers' own pooling on a right-padded batch (what scoring and other consumers of the folder use)
        pooled = pooled_rewards(model, padded, (padded != tokenizer.pad_token_id).long())
        # the packed training path: both sequences in one row, the head read at each one's last token
        packed = packed_rewards(model, pack_pairs([PairExample(short, long, 1.0)], torch.device("cpu")))
        # By hand: the head applied to the hidden state of the final token (the EOS) of each sequence run alone.
        by_hand = [
            model.score(model.model(torch.tensor([ids])).last_hidden_state)[0, -1, 0].item() for ids in (short, long)
        ]
        assert pooled.tolist() == pytest.approx(by_hand, abs=1e-5)
        assert packed.tolist() == pytest.approx(by_hand, abs=1e-5)
        # Had the pad id been EOS, transformers would pool at the token *before* the final EOS instead.
        model.config.pad_token_id = tokenizer.eos_token_id
        wrong = pooled_rewards(model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
        before_eos = model.score(model.model(torch.tensor([short])).last_hidden_state)[0, -2, 0]
        assert wrong.item() == pytest.approx(before_eos.item(), abs=1e-5) and wrong.item() != pytest.approx(by_hand[0])


def test_train_normalises_and_saves_a_loadable_reward_model(tiny_model: str, tmp_path: Path) -> None:
    labels = _labels(10)
    result = train_reward_model(
        labels, tiny_model, FAST.model_copy(update={"eval_fraction": 0.0}), tmp_path, seed=0, progress=False
    )
    assert result.counts == {
        "train_pairs": 10,
        "human_pairs": 0,
        "eval_pairs": 0,
        "normalisation_responses": 20,
        "steps": 6,
    }

    folder = tmp_path / "model"
    verify_manifest(folder)
    config = json.loads((folder / "config.json").read_text())
    meta = json.loads((folder / "meta.json").read_text())
    assert config["reward_gain"] == meta["reward_normalisation"]["gain"] == result.extra["reward_gain"]
    assert config["pad_token_id"] != config["eos_token_id"]
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_labels == 1

    # The 20 distinct training responses score mean 0, std 1 (population std, unbiased=False) after normalisation.
    score = reward_score_fn(folder, batch_size=3)
    sides = sorted({(r.prompt, s) for r in labels for s in (r.response_a, r.response_b)})
    scores = score([p for p, _ in sides], [s for _, s in sides])
    assert scores.shape == (20,) and scores.dtype == torch.float32
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    # Scoring is per item: batch size and order do not change a score.
    assert score([sides[3][0]], [sides[3][1]]).item() == pytest.approx(scores[3].item(), abs=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["reward/accuracy_train"] == 1.0 and rows[-1]["loss/train"] < rows[0]["loss/train"]


def test_run_reward_model_and_human_pair_evaluation(tiny_model: str, tmp_path: Path, packaged_data: Path) -> None:
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("r1", "judge", LABELS_FILE), _labels(10))
    cfg = RunConfig(seed=2, reward_model=FAST)
    result = run_reward_model(StageContext.of(store, "r1", "reward_model", cfg=cfg, models={"base": tiny_model}))
    assert result.metrics["reward/accuracy_eval"] == 1.0 and "loss/eval" in result.metrics
    folder = store.path("r1", "reward_model", "model")
    meta = json.loads((folder / "meta.json").read_text())
    assert (
        meta["judge_model"] == cfg.policy_model
        and meta["counts"]["labels"] == 10
        and meta["max_length"] == FAST.max_length
    )

    report = evaluate_reward_model(folder, load_human_pairs(packaged_data / "preference_pairs.dev.jsonl", limit=8))
    assert report["pairs"] == 8 and 0.0 <= report["accuracy"] <= 1.0 and report["loss"] > 0
    with pytest.raises(FileNotFoundError, match="run the judge stage first"):
        run_reward_model(StageContext.of(store, "r2", "reward_model", cfg=cfg, models={"base": tiny_model}))


HUMAN = [
    # Human helpfulness comparisons, unlike anything the AI labels hold: a recipe beats a brush-off.
    HumanPair(id=f"hp{i}", prompt=f"Dinner idea {i}?", chosen="Pasta with garlic and lemon.", rejected="Dunno.")
    for i in range(4)
]


def test_human_pairs_train_beside_the_ai_labels(tiny_model: str, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"eval_fraction": 0.0, "epochs": 3})
    result = train_reward_model(_labels(6), tiny_model, cfg, tmp_path, seed=0, progress=False, human_pairs=HUMAN)
    # 6 AI pairs + 4 human pairs = 10 training pairs, batch 4 -> 3 steps per epoch (the last one wraps), 3 epochs.
    assert result.counts == {
        "train_pairs": 10,
        "human_pairs": 4,
        "eval_pairs": 0,
        "normalisation_responses": 12,  # (the AI pairs' responses only: what PPO's samples resemble)
        "steps": 9,
    }
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    assert meta["counts"]["human_pairs"] == 4
    # Trained on them as hard labels (p = 1 for chosen): the reward now ranks each human pair's chosen first.
    assert evaluate_reward_model(tmp_path / "model", HUMAN)["accuracy"] == 1.0


def test_human_mix_takes_every_human_pair_by_default_or_a_seeded_fraction(caplog: pytest.LogCaptureFixture) -> None:
    pairs = [HUMAN[0].model_copy(update={"id": f"hp{i}"}) for i in range(10)]
    assert _human_mix(pairs, 6, RewardModelConfig(), 0) == pairs  # human_mix null: all of them
    assert _human_mix(pairs, 6, RewardModelConfig(human_mix=0), 0) == []
    assert _human_mix(None, 6, RewardModelConfig(human_mix=0.5), 0) == []
    half = _human_mix(pairs, 6, RewardModelConfig(human_mix=0.5), 0)  # round(0.5 x 6) = 3, in file order
    assert len(half) == 3 and half == sorted(half, key=lambda p: pairs.index(p))
    assert half == _human_mix(pairs, 6, RewardModelConfig(human_mix=0.5), 0)  # seeded: the same every time
    assert _human_mix(pairs, 6, RewardModelConfig(human_mix=4), 0) == pairs and "only 10 exist" in caplog.text


def test_reward_model_resume_matches_an_uninterrupted_run(tiny_model: str, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"epochs": 2, "checkpoint_every": 1, "dtype": "auto"})
    labels = _labels(12)
    train_reward_model(labels, tiny_model, cfg, tmp_path / "full", seed=4, progress=False)

    def crash_at_step_4(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_reward_model(
            labels, tiny_model, cfg, tmp_path / "resumed", seed=4, progress=False, on_step=crash_at_step_4
        )
    train_reward_model(labels, tiny_model, cfg, tmp_path / "resumed", seed=4, progress=False)
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(full[name], resumed[name]) for name in full)
    assert (
        json.loads((tmp_path / "full" / "model" / "config.json").read_text())["reward_gain"]
        == (json.loads((tmp_path / "resumed" / "model" / "config.json").read_text())["reward_gain"])
    )
    assert init_distributed().world_size == 1


def test_lora_reward_model_trains_adapter_and_head_exports_merged_and_resumes(tiny_model: str, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"lora_rank": 4, "lora_alpha": 8, "checkpoint_every": 1, "eval_fraction": 0.0})
    # What trains: LoRA A and B on every linear layer of the backbone, and peft's trainable copy of the score head.
    tokenizer = reward_tokenizer(tiny_model)
    model = _add_lora(load_reward_backbone(tiny_model, tokenizer.pad_token_id, torch.device("cpu")), cfg)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert "base_model.model.score.modules_to_save.default.weight" in trainable
    assert all("lora_A" in n or "lora_B" in n or "score.modules_to_save" in n for n in trainable)
    # 2 layers x 7 linear layers x (A, B), plus the head
    assert len(trainable) == 2 * 7 * 2 + 1

    labels = _labels(12)
    train_reward_model(labels, tiny_model, cfg, tmp_path / "full", seed=4, progress=False)

    def crash_at_step_4(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_reward_model(labels, tiny_model, cfg, tmp_path / "resumed", seed=4, progress=False,
                           on_step=crash_at_step_4)  # fmt: skip
    state = load_file(tmp_path / "resumed" / "steps" / "step-00000004" / "model.safetensors")
    assert state.keys() == set(trainable)  # the step state holds what trains, not the frozen backbone
    train_reward_model(labels, tiny_model, cfg, tmp_path / "resumed", seed=4, progress=False)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        full = load_file(tmp_path / "full" / "model" / name)
        resumed = load_file(tmp_path / "resumed" / "model" / name)
        assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)

    # The exports: the merged classifier (what PPO and users load, no peft needed) and the adapter, both in the
    # manifest. The adapter on the base scores as the merged folder does, up to float rounding (merging adds
    # B A scale to each weight once); the head is the trained one, not the base's fresh one.
    folder = tmp_path / "full" / "model"
    files = verify_manifest(folder)["files"]
    assert {"model.safetensors", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= set(files)
    merged = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    base = load_reward_backbone(tiny_model, tokenizer.pad_token_id, torch.device("cpu"))
    fresh_head = base.score.weight.clone()
    adapted = PeftModel.from_pretrained(base, folder / "adapter").eval()
    rows = [
        tokenize_chat(tokenizer, r.prompt, s, 64).input_ids for r in labels[:3] for s in (r.response_a, r.response_b)
    ]
    width = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    mask = (ids != tokenizer.pad_token_id).long()
    with torch.no_grad():
        merged_scores, adapter_scores = pooled_rewards(merged, ids, mask), pooled_rewards(adapted, ids, mask)
    torch.testing.assert_close(merged_scores, adapter_scores, atol=1e-5, rtol=1e-5)
    assert merged_scores.std().item() > 0  # six different responses, six different rewards
    assert not torch.equal(merged.score.weight, fresh_head)
    # The normalisation made it into the merged folder: scores of the training responses are mean 0, std 1.
    sides = sorted({(r.prompt, s) for r in labels for s in (r.response_a, r.response_b)})
    scores = reward_score_fn(folder)([p for p, _ in sides], [s for _, s in sides])
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
