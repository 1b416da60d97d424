"""Best-of-n (RAFT): the argmax over each prompt's samples, the kept samples and their scores by hand with a rule-based
score function, per-prompt sampling seeds, and the stage on the tiny model with a tiny reward model: what it keeps,
its lineage, and a redelivered stage that fine-tunes on its stored samples without sampling again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlaif.config import BestOfNConfig, RewardModelConfig, RunConfig, SamplingConfig, SFTConfig
from rlaif.generation.hf import HFGenerator
from rlaif.records import LabelRecord, PromptItem, ResponseSet
from rlaif.stages import INPUTS, PROMPTS_FILE
from rlaif.stages.best_of_n import (
    BEST_FILE,
    BestSample,
    best_metrics,
    best_of,
    pick_best,
    run_best_of_n,
    sample_candidates,
)
from rlaif.stages.contract import StageContext, StageHooks
from rlaif.stages.reward_model import reward_score_fn, train_reward_model
from rlaif.store import ArtifactStore, read_jsonl, write_jsonl


def test_best_of_picks_the_argmax_of_each_prompt_and_the_first_of_ties() -> None:
    scores = torch.tensor(
        [
            [0.1, 0.7, 0.3],  # -> 1
            [2.0, 2.0, -1.0],  # a tie between 0 and 1 -> 0, the first
            [-3.0, -2.0, -2.5],  # all negative -> 1
        ]
    )
    assert best_of(scores).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="scores must be"):
        best_of(torch.tensor([1.0, 2.0]))


def length_score(prompts: list[str], responses: list[str]) -> torch.Tensor:
    """A rule-based score function (style guide 11): longer is better."""
    return torch.tensor([float(len(r)) for r in responses])


def test_pick_best_keeps_the_top_scored_sample_with_every_score() -> None:
    candidates = [
        ResponseSet(id="p0", prompt="q0", responses=["ab", "abcd", "a"], finished=[True] * 3),
        ResponseSet(id="p1", prompt="q1", responses=["xyz", "xy", "xyz"], finished=[True] * 3),
    ]
    best = pick_best(candidates, length_score)
    assert [(b.id, b.response, b.index, b.score) for b in best] == [("p0", "abcd", 1, 4.0), ("p1", "xyz", 0, 3.0)]
    assert best[0].scores == [2.0, 4.0, 1.0] and best[1].scores == [3.0, 2.0, 3.0]
    # kept: (4 + 3) / 2 = 3.5; all: ((2 + 4 + 1) / 3 + (3 + 2 + 3) / 3) / 2 = (7/3 + 8/3) / 2 = 2.5; gain 1.
    metrics = best_metrics(best)
    assert metrics["best_of_n/score_best"] == 3.5
    assert metrics["best_of_n/score_mean"] == pytest.approx(2.5) and metrics["best_of_n/gain"] == pytest.approx(1.0)
    assert metrics["best_of_n/best_chars"] == 3.5


def test_each_prompt_samples_under_its_own_seed(tiny_model: str) -> None:
    cfg = BestOfNConfig(n=3, sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=6))
    generator = HFGenerator(tiny_model, dtype="float32")
    items = [PromptItem(id=f"p{i}", prompt=f"Question {i}?") for i in range(3)]
    together = sample_candidates(items, cfg, generator, seed=5)
    alone = sample_candidates(items[2:], cfg, generator, seed=5)
    assert [c.id for c in together] == ["p0", "p1", "p2"] and all(len(c.responses) == 3 for c in together)
    assert alone[0] == together[2]  # the same samples whichever prompts share the call


def test_run_best_of_n_fine_tunes_on_the_reward_models_favourites_and_resumes(tiny_model: str, tmp_path: Path) -> None:
    labels = [
        LabelRecord(id=f"p{i}:0:1", prompt=f"Request {i}", response_a="Sure, here is how.", response_b="No.",
                    p_a=0.8, judgements=[])
        for i in range(4)
    ]  # fmt: skip
    rm_cfg = RewardModelConfig(batch_size=2, micro_batch_size=2, eval_fraction=0.0, dtype="float32")
    train_reward_model(labels, tiny_model, rm_cfg, tmp_path / "rm", seed=0, progress=False)
    reward_model = str(tmp_path / "rm" / "model")

    store = ArtifactStore(tmp_path / "artifacts")
    write_jsonl(
        store.path("r1", INPUTS, PROMPTS_FILE), [PromptItem(id=f"q{i}", prompt=f"Question {i}?") for i in range(5)]
    )
    sft = SFTConfig(batch_size=2, micro_batch_size=2, max_length=128, checkpoint_every=1, dtype="float32")
    cfg = RunConfig(
        policy_model=tiny_model, policy_optimization="best_of_n",
        best_of_n=BestOfNConfig(n=3, sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=6), sft=sft),
    )  # fmt: skip
    models = {"policy": tiny_model, "reward_model": reward_model}

    class Preempted(Exception):
        """Stands in for a worker being killed during the fine-tuning."""

    def crash_at_step_1(step: int, total: int | None, metrics: dict[str, float]) -> None:
        raise Preempted

    hooks = StageHooks(on_progress=crash_at_step_1)
    with pytest.raises(Preempted):
        run_best_of_n(StageContext.of(store, "r1", "best_of_n", cfg=cfg, models=models, hooks=hooks))
    best_path = store.path("r1", "best_of_n", BEST_FILE)
    best = read_jsonl(best_path, BestSample)
    sampled_at = best_path.stat().st_mtime_ns
    assert [b.id for b in best] == [f"q{i}" for i in range(5)]
    assert all(len(b.scores) == 3 and b.score == max(b.scores) == b.scores[b.index] for b in best)
    score_fn = reward_score_fn(reward_model)  # the kept sample's score is the reward model's, normalised
    assert score_fn([best[0].prompt], [best[0].response]).item() == pytest.approx(best[0].score, abs=1e-4)

    result = run_best_of_n(StageContext.of(store, "r1", "best_of_n", cfg=cfg, models=models))  # redelivered
    assert best_path.stat().st_mtime_ns == sampled_at  # the stored samples, not sampled again
    folder = store.path("r1", "best_of_n", "model")
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["stage"], meta["policy_optimization"], meta["reward_model"]) == (
        "best_of_n",
        "best_of_n",
        reward_model,
    )
    assert meta["best_of_n"]["best_of_n/score_best"] == pytest.approx(sum(b.score for b in best) / 5)
    assert result.counts["samples"] == 15 and result.counts["steps"] == 2  # 5 prompts, 1 held out: 4 / 2
    # generation.backend auto, 5 prompts x n=3 x 6 tokens = 90 tokens: far below the break-even, or no vllm at all.
    assert result.extra["backend"] == "transformers"
    assert result.extra["backend_reason"] in (
        "auto: transformers (vllm not installed)",
        "auto: transformers (vllm importable, no CUDA GPU, ~90 generated tokens < 2,500 break-even)",
    )
    assert "- policy optimization: `best_of_n`" in (folder / "README.md").read_text()
