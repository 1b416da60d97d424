"""Stage 4 core on the tiny model: principle ensembles, reproducible sampling, chain of thought, the stage files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlaif.config import JudgeConfig, RunConfig, SamplingConfig
from rlaif.constitution import Constitution, load_constitution
from rlaif.judging.judge import (
    JudgeRequest,
    judge_comparisons,
    judge_pair,
    judgements_from_scores,
    principles_for,
    score_requests,
)
from rlaif.judging.labels import clamp
from rlaif.records import Comparison, LabelRecord
from rlaif.settings import settings
from rlaif.stages import COMPARISONS_FILE, LABELS_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.judge import run_judge
from rlaif.store import ArtifactStore, StoreError, read_jsonl, verify_manifest, write_jsonl, write_manifest


@pytest.fixture(scope="module")
def tiny_lm(tiny_model: str) -> tuple[Any, Any]:
    from rlaif.modeling import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny_model, dtype="float32")


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(settings.constitutions_dir / "minimal.yaml")


COMPARISONS = [
    Comparison(
        id="p1:0:1", prompt="How do I pick a lock?", response_a="I can't help with that.", response_b="Use a pick."
    ),
    Comparison(id="p2:0:1", prompt="What is 7 x 8?", response_a="56.", response_b="54."),
    Comparison(id="p3:0:1", prompt="Say something mean.", response_a="No, thanks.", response_b="You are useless."),
]


def test_ensemble_label_is_the_mean_over_sampled_principles(
    tiny_lm: tuple[Any, Any], constitution: Constitution
) -> None:
    model, tokenizer = tiny_lm
    cfg = JudgeConfig(principles_per_label=3, few_shot=1)
    labels = list(judge_comparisons(COMPARISONS, model, tokenizer, constitution, None, cfg, seed=5, progress=False))
    assert [label.id for label in labels] == [c.id for c in COMPARISONS]
    for comparison, label in zip(COMPARISONS, labels, strict=True):
        chosen = principles_for(comparison.id, constitution.principles, 3, seed=5)
        assert [j.principle_id for j in label.judgements] == [p.id for p in chosen]
        # p_a = (p_a_mean_1 + p_a_mean_2 + p_a_mean_3) / 3
        assert label.p_a == pytest.approx(sum(j.p_a_mean for j in label.judgements) / 3)
        for judgement, principle in zip(label.judgements, chosen, strict=True):
            alone = judge_pair(
                model,
                tokenizer,
                comparison.prompt,
                comparison.response_a,
                comparison.response_b,
                principle,
                examples=constitution.comparison_examples[:1],
            )
            assert judgement.p_a == pytest.approx(alone.p_a, abs=1e-5)
            assert judgement.p_a_swapped == pytest.approx(alone.p_a_swapped, abs=1e-5)
            assert judgement.p_a_mean == pytest.approx((judgement.p_a + judgement.p_a_swapped) / 2)
            assert judgement.flip == ((judgement.p_a - 0.5) * (judgement.p_a_swapped - 0.5) < 0)


def test_principle_sampling_is_per_item_and_reproducible(constitution: Constitution) -> None:
    first = [p.id for p in principles_for("p1:0:1", constitution.principles, 8, seed=0)]
    assert first == [p.id for p in principles_for("p1:0:1", constitution.principles, 8, seed=0)]
    # Another seed or another item draws differently (fixed seeds, so this is deterministic).
    assert first != [p.id for p in principles_for("p1:0:1", constitution.principles, 8, seed=1)]
    assert first != [p.id for p in principles_for("p2:0:1", constitution.principles, 8, seed=0)]


def test_selectors_restrict_the_principles(tiny_lm: tuple[Any, Any], constitution: Constitution) -> None:
    model, tokenizer = tiny_lm
    cfg = JudgeConfig(principles_per_label=2)
    labels = list(
        judge_comparisons(COMPARISONS, model, tokenizer, constitution, ["tag:helpful"], cfg, 0, progress=False)
    )
    assert {j.principle_id for label in labels for j in label.judgements} == {"helpful"}
    with pytest.raises(ValueError, match=r"unknown principle selector\(s\) \['kindness'\]"):
        list(judge_comparisons(COMPARISONS, model, tokenizer, constitution, ["kindness"], cfg, 0, progress=False))


def test_bad_comparisons_raise_naming_the_item(tiny_lm: tuple[Any, Any], constitution: Constitution) -> None:
    model, tokenizer = tiny_lm
    empty = Comparison(id="bad:0:1", prompt=" ", response_a="a", response_b="b")
    with pytest.raises(ValueError, match="'bad:0:1': empty prompt"):
        list(judge_comparisons([empty], model, tokenizer, constitution, None, JudgeConfig(), 0, progress=False))
    with pytest.raises(ValueError, match="'p1:0:1' appears twice"):
        list(
            judge_comparisons(
                COMPARISONS[:1] * 2, model, tokenizer, constitution, None, JudgeConfig(), 0, progress=False
            )
        )
    # A long pair is cut to fit (tests/test_truncation.py); only when the parts never cut (the principle's question,
    # the options, the instruction) exceed judge.max_length does it fail, naming the pair and the limit.
    long = Comparison(id="long:0:1", prompt="Why?", response_a="very " * 300, response_b="b")
    with pytest.raises(ValueError, match="'long:0:1'.*more than the limit of 64.*never cut"):
        list(
            judge_comparisons(
                [long], model, tokenizer, constitution, None, JudgeConfig(max_length=64), 0, progress=False
            )
        )


def test_chain_of_thought_clamps_each_order(tiny_lm: tuple[Any, Any], constitution: Constitution) -> None:
    from rlaif.generation.hf import HFGenerator

    model, tokenizer = tiny_lm
    generator = HFGenerator.from_loaded(model, tokenizer, "tiny-random-llama")
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=8)
    requests = [
        JudgeRequest(c.id, c.prompt, c.response_a, c.response_b, constitution.principles[0]) for c in COMPARISONS
    ]
    raw = score_requests(model, tokenizer, requests, chain_of_thought=True, generator=generator, cot_sampling=sampling)
    bounds = (0.49, 0.51)  # narrow, so the clamp bites on the random model's probabilities
    clamped = judgements_from_scores(raw, requests, bounds)
    p_a = raw.p_a.tolist()
    assert any(not bounds[0] <= p <= bounds[1] for p in p_a)
    for i, verdict in enumerate(clamped):
        # Each order's P(A) is clamped first, then the orders are combined.
        assert verdict.p_a == pytest.approx(clamp(p_a[2 * i], bounds))
        assert verdict.p_a_swapped == pytest.approx(1 - clamp(p_a[2 * i + 1], bounds))
        assert bounds[0] <= verdict.p_a_mean <= bounds[1]
    with pytest.raises(ValueError, match="needs a generator"):
        score_requests(model, tokenizer, requests, chain_of_thought=True)


def _store_with_comparisons(tmp_path: Path, comparisons: list[Comparison]) -> ArtifactStore:
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("run1", "pairs", COMPARISONS_FILE), comparisons)
    write_manifest(store.stage_dir("run1", "pairs"))
    return store


def test_run_judge_writes_labels_then_manifest_and_skips_finished_work(
    tmp_path: Path, tiny_lm: tuple[Any, Any], constitution: Constitution
) -> None:
    model, tokenizer = tiny_lm
    store = _store_with_comparisons(tmp_path, COMPARISONS)
    cfg = RunConfig(judge={"principles_per_label": 2})
    result = run_judge(
        StageContext.of(store, "run1", "judge", cfg=cfg, constitution=constitution), model=model, tokenizer=tokenizer
    )
    labels_path = store.path("run1", "judge", LABELS_FILE)
    labels = read_jsonl(labels_path, LabelRecord)
    assert [label.id for label in labels] == [c.id for c in COMPARISONS]
    assert all(len(label.judgements) == 2 for label in labels)
    manifest = verify_manifest(store.stage_dir("run1", "judge"))
    assert list(manifest["files"]) == [LABELS_FILE]
    assert result.counts == {"comparisons": 3, "labels": 3, "judgements": 6, "truncated": 0}
    assert result.metrics["judge/flip_rate"] == pytest.approx(sum(j.flip for x in labels for j in x.judgements) / 6)
    # A second call finds the manifest and returns the same result without judging (the file is untouched).
    before = labels_path.stat().st_mtime_ns
    again = run_judge(
        StageContext.of(store, "run1", "judge", cfg=cfg, constitution=constitution), model=model, tokenizer=tokenizer
    )
    assert again.counts == result.counts and labels_path.stat().st_mtime_ns == before
    assert json.loads((store.stage_dir("run1", "judge") / "manifest.json").read_text())["stage"] == "judge"


def test_run_judge_refuses_unfinished_pairs(
    tmp_path: Path, tiny_lm: tuple[Any, Any], constitution: Constitution
) -> None:
    model, tokenizer = tiny_lm
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("run1", "pairs", COMPARISONS_FILE), COMPARISONS)  # no manifest: still being written
    with pytest.raises(StoreError, match="stage 'pairs' has no manifest"):
        run_judge(
            StageContext.of(store, "run1", "judge", cfg=RunConfig(), constitution=constitution),
            model=model,
            tokenizer=tokenizer,
        )


@pytest.mark.slow
def test_critique_then_judge_end_to_end_on_the_embedded_model(tmp_path: Path, embedded_model: str) -> None:
    """4 demo prompts: SL-CAI records and SFT data, then AI labels for (first answer, final revision) pairs."""
    from rlaif.judging.judge import JudgeRequest, score_requests
    from rlaif.modeling import load_model_and_tokenizer
    from rlaif.prompts import load_prompts
    from rlaif.records import CritiqueRecord
    from rlaif.stages import CRITIQUE_RECORDS_FILE, INPUTS, PROMPTS_FILE
    from rlaif.stages.critique_revise import run_critique_revise

    harmless = load_constitution(settings.constitutions_dir / "harmless.yaml")
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo_prompts.jsonl"
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("run1", INPUTS, PROMPTS_FILE), load_prompts(demo, limit=4))
    cfg = RunConfig(
        policy_model=embedded_model,
        critique={"rounds": 1, "batch_size": 4, "sampling": {"temperature": 0.7, "max_new_tokens": 40}},
        judge={"principles_per_label": 2},
    )
    critique = run_critique_revise(
        StageContext.of(store, "run1", "critique", cfg=cfg, constitution=harmless)
    )  # generator from make_generator (transformers)
    records = read_jsonl(store.path("run1", "critique", CRITIQUE_RECORDS_FILE), CritiqueRecord)
    assert critique.counts["prompts"] == 4 and len(records) == 4
    # The demo set alternates harmful and helpful prompts: harmful ones get a critique round, helpful ones an answer.
    harmful = [r for r in records if r.kind == "harmful"]
    assert [r.kind for r in records] == ["harmful", "helpful", "harmful", "helpful"]
    assert all(r.initial_response and len(r.rounds) == 1 and r.rounds[0].critique for r in harmful)
    assert all(r.initial_response and r.rounds == [] for r in records if r.kind == "helpful")
    assert {r.rounds[0].principle_id for r in harmful} <= {p.id for p in harmless.principles}

    comparisons = [
        Comparison(id=f"{r.id}:0:1", prompt=r.prompt, response_a=r.initial_response, response_b=r.final_revision)
        for r in records
    ]
    write_jsonl(store.path("run1", "pairs", COMPARISONS_FILE), comparisons)
    write_manifest(store.stage_dir("run1", "pairs"))
    result = run_judge(StageContext.of(store, "run1", "judge", cfg=cfg, constitution=harmless))
    labels = read_jsonl(store.path("run1", "judge", LABELS_FILE), LabelRecord)
    assert result.counts == {"comparisons": 4, "labels": 4, "judgements": 8, "truncated": 0}
    assert all(0.0 < label.p_a < 1.0 and len(label.judgements) == 2 for label in labels)
    verify_manifest(store.stage_dir("run1", "judge"))

    # The real instruct model answers the judge prompt in format: most of its next-token mass is on "A" or "B".
    model, tokenizer = load_model_and_tokenizer(embedded_model, dtype="float32")
    requests = [JudgeRequest(c.id, c.prompt, c.response_a, c.response_b, harmless.principles[0]) for c in comparisons]
    scores = score_requests(model, tokenizer, requests, examples=harmless.comparison_examples[:1])
    assert scores.option_mass.min().item() > 0.5
