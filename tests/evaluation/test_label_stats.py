"""Per-principle statistics of AI labels, by hand; the online DPO step labels read in step order, marked by source."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.evaluation.label_stats import principle_stats, read_step_labels
from rlaif.records import LabelRecord, PairJudgement
from rlaif.store import write_jsonl


def _j(pid: str, p_a: float, p_a_swapped: float) -> PairJudgement:
    flip = (p_a - 0.5) * (p_a_swapped - 0.5) < 0
    return PairJudgement(
        principle_id=pid, p_a=p_a, p_a_swapped=p_a_swapped, p_a_mean=(p_a + p_a_swapped) / 2, flip=flip
    )


def test_principle_stats_by_hand() -> None:
    labels = [
        # harmful: p_a_mean 0.8 (no flip); helpful: 0.6 from 0.9 and 0.3 (a flip)
        LabelRecord(
            id="1",
            prompt="p",
            response_a="a",
            response_b="b",
            p_a=0.7,
            judgements=[_j("harmful", 0.8, 0.8), _j("helpful", 0.9, 0.3)],
        ),
        # harmful: 0.3 from 0.4 and 0.2 (no flip, first order < 1/2)
        LabelRecord(id="2", prompt="p", response_a="a", response_b="b", p_a=0.3, judgements=[_j("harmful", 0.4, 0.2)]),
    ]
    summary = principle_stats(labels)
    assert (summary.labels, summary.judgements) == (2, 3)
    assert summary.flip_rate == pytest.approx(1 / 3)
    harmful, helpful = summary.principles  # sorted by id
    assert harmful.principle_id == "harmful" and harmful.judgements == 2
    assert harmful.share == pytest.approx(2 / 3)
    assert harmful.mean_preference == pytest.approx((0.8 + 0.3) / 2)
    # confidence |p - 1/2| x 2: (0.6 + 0.4) / 2 = 0.5
    assert harmful.mean_confidence == pytest.approx(0.5)
    assert harmful.flip_rate == 0.0
    assert harmful.first_position_rate == pytest.approx(0.5)  # 0.8 > 1/2, 0.4 < 1/2
    assert helpful.flip_rate == 1.0
    assert helpful.mean_confidence == pytest.approx(0.2)  # |0.6 - 0.5| x 2


def test_no_labels_gives_an_empty_summary() -> None:
    summary = principle_stats([])
    assert summary.principles == [] and summary.flip_rate == 0.0


def test_step_labels_are_read_in_step_order_and_marked_online_dpo(tmp_path: Path) -> None:
    def label(id_: str, pid: str) -> LabelRecord:
        return LabelRecord(id=id_, prompt="p", response_a="a", response_b="b", p_a=0.8, judgements=[_j(pid, 0.8, 0.8)])

    write_jsonl(tmp_path / "step-000002.jsonl", [label("p0@2", "helpful")])
    write_jsonl(tmp_path / "step-000001.jsonl", [label("p0@1", "harmful"), label("p1@1", "harmful")])
    labels = read_step_labels(tmp_path)
    assert [x.id for x in labels] == ["p0@1", "p1@1", "p0@2"]
    assert read_step_labels(tmp_path / "absent") == []
    summary = principle_stats(labels, "online_dpo", "online_dpo-2")
    assert (summary.source, summary.stage, summary.labels) == ("online_dpo", "online_dpo-2", 3)
    assert {p.principle_id: p.judgements for p in summary.principles} == {"harmful": 2, "helpful": 1}
    assert principle_stats(labels).source == "judge"  # (the default: the judge stage's labels.jsonl)
