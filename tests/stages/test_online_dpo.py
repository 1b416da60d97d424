"""Online DPO (OAIF) on the tiny model with the tiny model as its judge: per-prompt sampling seeds, the step metrics
by hand, a resumed step that re-reads its stored labels instead of judging again, the stage's lineage, and the
evaluation's per-principle statistics of its step labels."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlaif.config import OnlineDPOConfig, RunConfig, SamplingConfig
from rlaif.constitution import load_constitution, resolve_constitution
from rlaif.evaluation.report import EvalReport
from rlaif.evaluation.report_html import render_html
from rlaif.generation.hf import HFGenerator
from rlaif.modeling import load_causal_lm, load_tokenizer, prepare_model
from rlaif.records import Comparison, LabelRecord, PairJudgement, PromptItem
from rlaif.stages import CONSTITUTION_FILE, INPUTS, PROMPTS_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.evaluate import online_dpo_label_stats
from rlaif.stages.online_dpo import (
    LABELS_DIR,
    LabelFn,
    judge_label_fn,
    online_metrics,
    run_online_dpo,
    sample_online_pairs,
    train_online_dpo,
)
from rlaif.store import ArtifactStore, write_jsonl

# 4 prompts, 2 a step: 4 steps are two passes over the prompts.
FAST = OnlineDPOConfig(
    prompts_per_step=2, total_prompts=8, micro_batch_size=2, checkpoint_every=2, learning_rate=1e-3, beta=0.5,
    max_length=128, sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=8), dtype="float32",
)  # fmt: skip
PROMPTS = [PromptItem(id=f"p{i}", prompt=f"Request {i}: how do I pick a lock?") for i in range(4)]


def _run_config(tiny_model: str) -> RunConfig:
    return RunConfig(
        policy_model=tiny_model, policy_optimization="online_dpo", online_dpo=FAST,
        judge={"batch_size": 8, "dtype": "float32"},
    )  # fmt: skip


class CountingJudge:
    """The run's real judge (judge_label_fn), recording every comparison it is asked to label."""

    def __init__(self, judge: LabelFn) -> None:
        self.judge = judge
        self.judged: list[str] = []

    def __call__(self, comparisons: list[Comparison]) -> list[LabelRecord]:
        self.judged += [c.id for c in comparisons]
        return self.judge(comparisons)


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_each_prompt_samples_under_its_own_seed_whatever_the_batch(tiny_model: str) -> None:
    generator = HFGenerator.from_loaded(load_causal_lm(tiny_model), load_tokenizer(tiny_model), tiny_model)
    alone = sample_online_pairs(PROMPTS[1:2], 3, generator, FAST.sampling, seed=7)
    together = sample_online_pairs(PROMPTS[:2], 3, generator, FAST.sampling, seed=7)
    assert [c.id for c in alone] == ["p1@3"] and [c.id for c in together] == ["p0@3", "p1@3"]
    assert alone[0] == together[1]  # seed from (seed, step, prompt id): not from its batch companions
    later = sample_online_pairs(PROMPTS[1:2], 4, generator, FAST.sampling, seed=7)
    assert (later[0].response_a, later[0].response_b) != (alone[0].response_a, alone[0].response_b)


def test_online_metrics_by_hand() -> None:
    def judgement(p_a: float, p_a_swapped: float) -> PairJudgement:
        mean = (p_a + p_a_swapped) / 2
        return PairJudgement(
            principle_id="x", p_a=p_a, p_a_swapped=p_a_swapped, p_a_mean=mean, flip=(p_a > 0.5) != (p_a_swapped > 0.5)
        )

    labels = [
        # order 1 says a (0.8), order 2 says b (0.4): a flip; label 0.6
        LabelRecord(id="a", prompt="q", response_a="x", response_b="y", p_a=0.6, judgements=[judgement(0.8, 0.4)]),
        # both orders say b: no flip; label 0.2
        LabelRecord(id="b", prompt="q", response_a="x", response_b="z", p_a=0.2, judgements=[judgement(0.1, 0.3)]),
    ]
    # 3 prompts, 2 pairs judged (one pair of identical samples skipped); p_a mean (0.6 + 0.2) / 2 = 0.4; 1 flip of 2.
    assert online_metrics(labels, 3) == pytest.approx(
        {"online/pairs": 2, "online/identical_pairs": 1, "online/judge_p_a_mean": 0.4, "online/flip_rate": 0.5}
    )
    assert online_metrics([], 2) == {"online/pairs": 0, "online/identical_pairs": 2}  # nothing judged: no judge mean


def test_a_resumed_step_re_reads_its_labels_and_ends_bit_identical(tiny_model: str, tmp_path: Path) -> None:
    constitution = load_constitution(resolve_constitution("minimal"))
    judge = judge_label_fn(_run_config(tiny_model), constitution, tmp_path)

    full = CountingJudge(judge)
    train_online_dpo(PROMPTS, tiny_model, full, FAST, tmp_path / "full", seed=1, progress=False)
    assert {c.split("@")[1] for c in full.judged} == {"1", "2", "3", "4"}  # every step judged once
    assert len(full.judged) == len(set(full.judged))
    full_dir = tmp_path / "full"
    assert sorted(p.name for p in (full_dir / LABELS_DIR).iterdir()) == [f"step-00000{i}.jsonl" for i in (1, 2, 3, 4)]
    history = _metrics(full_dir)
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert {"loss/dpo", "rewards/margins", "rewards/accuracy", "online/judge_p_a_mean", "online/flip_rate"} <= set(
        history[0]
    )

    class Preempted(Exception):
        """Stands in for a worker being killed after step 3 (its labels written, its checkpoint not: every 2)."""

    def crash_at_step_3(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 3:
            raise Preempted

    first = CountingJudge(judge)
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(Preempted):
        train_online_dpo(PROMPTS, tiny_model, first, FAST, resumed_dir, seed=1, progress=False, on_step=crash_at_step_3)
    assert (resumed_dir / "steps" / "step-00000002").exists() and not (resumed_dir / "model").exists()
    step_3 = resumed_dir / LABELS_DIR / "step-000003.jsonl"
    judged_at = step_3.stat().st_mtime_ns

    again = CountingJudge(judge)
    train_online_dpo(PROMPTS, tiny_model, again, FAST, resumed_dir, seed=1, progress=False)  # resumes at step 2
    # Step 3 is redone from its stored labels: only step 4 reaches the judge, and step 3's file is untouched.
    assert {c.split("@")[1] for c in again.judged} == {"4"}
    assert step_3.stat().st_mtime_ns == judged_at
    assert first.judged + again.judged == full.judged

    full_weights = load_file(full_dir / "model" / "model.safetensors")
    resumed = load_file(resumed_dir / "model" / "model.safetensors")
    assert all(torch.equal(full_weights[name], resumed[name]) for name in full_weights)

    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]

    assert timeless(_metrics(resumed_dir)) == timeless(history)


def test_run_online_dpo_records_lineage_and_is_not_trained_twice(tiny_model: str, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("r1", INPUTS, PROMPTS_FILE), PROMPTS)
    constitution = load_constitution(resolve_constitution("minimal"))
    store.path("r1", INPUTS, CONSTITUTION_FILE).write_text(constitution.model_dump_json())
    cfg = _run_config(tiny_model).with_overrides({"online_dpo": {"total_prompts": 4}})
    models = {"policy": tiny_model, "reference": tiny_model}

    result = run_online_dpo(StageContext.of(store, "r1", "online_dpo", cfg=cfg, models=models))
    folder = store.path("r1", "online_dpo", "model")
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["stage"], meta["base_model"], meta["reference_model"]) == ("online_dpo", tiny_model, tiny_model)
    assert meta["policy_optimization"] == "online_dpo" == meta["run_config"]["policy_optimization"]
    assert meta["judge_model"] == tiny_model and meta["counts"]["steps"] == result.counts["steps"] == 2
    labels = [line for p in (folder.parent / LABELS_DIR).iterdir() for line in p.read_text().splitlines()]
    assert result.counts["pairs_judged"] == len(labels) > 0
    assert "- policy optimization: `online_dpo`" in (folder / "README.md").read_text()
    trained, base = load_file(folder / "model.safetensors"), load_file(prepare_model(tiny_model) / "model.safetensors")
    assert any(not torch.equal(base[name], trained[name]) for name in base)  # the DPO steps moved the policy

    weights = (folder / "model.safetensors").stat().st_mtime_ns
    redelivered = run_online_dpo(StageContext.of(store, "r1", "online_dpo", cfg=cfg, models=models))
    assert redelivered.metrics == result.metrics and (folder / "model.safetensors").stat().st_mtime_ns == weights
    with pytest.raises(ValueError, match="prompts_per_step 8 is more than the run's 4 training prompts"):
        train_online_dpo(PROMPTS, tiny_model, judge_label_fn(cfg, constitution, tmp_path), OnlineDPOConfig(),
                         tmp_path / "x", seed=0)  # fmt: skip


def test_the_evaluation_counts_the_step_labels_per_principle_marked_online_dpo(tiny_model: str, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("r1", INPUTS, PROMPTS_FILE), PROMPTS)
    constitution = load_constitution(resolve_constitution("minimal"))
    store.path("r1", INPUTS, CONSTITUTION_FILE).write_text(constitution.model_dump_json())
    # 2 principles per pair, so one label counts towards two principles (or twice towards one).
    cfg = _run_config(tiny_model).with_overrides(
        {"online_dpo": {"total_prompts": 4}, "judge": {"principles_per_label": 2}}
    )
    evaluate = StageContext.of(store, "r1", "evaluate", cfg=cfg)
    assert online_dpo_label_stats(evaluate) is None  # the stage has not run: no labels yet

    models = {"policy": tiny_model, "reference": tiny_model}
    result = run_online_dpo(StageContext.of(store, "r1", "online_dpo", cfg=cfg, models=models))
    summary = online_dpo_label_stats(evaluate)
    assert summary is not None and (summary.source, summary.stage) == ("online_dpo", "online_dpo")

    # The same counts straight from the stored step files: every principle judgement of every label.
    stored = [
        json.loads(line)
        for path in sorted((store.path("r1", "online_dpo", LABELS_DIR)).glob("step-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    per_principle = Counter(j["principle_id"] for label in stored for j in label["judgements"])
    flips = Counter(j["principle_id"] for label in stored for j in label["judgements"] if j["flip"])
    assert summary.labels == len(stored) == result.counts["pairs_judged"] > 0
    assert summary.judgements == sum(per_principle.values()) == 2 * len(stored)
    assert {p.principle_id: p.judgements for p in summary.principles} == per_principle
    assert {p.principle_id: p.flip_rate for p in summary.principles} == pytest.approx(
        {pid: flips[pid] / n for pid, n in per_principle.items()}
    )
    assert set(per_principle) <= {p.id for p in constitution.principles}

    # The report keeps them apart from the judge stage's labels (a run with no judge stage has none) and says so.
    report = EvalReport(created_at="now", models={"base": "a", "aligned": "b"}, judge_model="a", online_labels=summary)
    assert EvalReport.model_validate_json(report.model_dump_json()).online_labels == summary
    html = render_html(report)
    assert "Per-principle label statistics: online DPO steps (online_dpo)" in html
    assert f"online DPO steps (online_dpo): {len(stored)} labels, {summary.judgements} principle judgements" in html
    assert "judge stage" not in html


def test_bad_sizes_name_the_fields() -> None:
    with pytest.raises(
        ValueError, match="online_dpo.total_prompts 10 is not divisible by online_dpo.prompts_per_step 4"
    ):
        OnlineDPOConfig(total_prompts=10, prompts_per_step=4)
    assert OnlineDPOConfig(total_prompts=12, prompts_per_step=4).steps == 3
