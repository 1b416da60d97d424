"""The report's headline, model-card block and HTML page (escaping, one SVG per plot, no external loads)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlaif.evaluation.label_stats import LabelSummary, PrincipleStats
from rlaif.evaluation.monitors import Alert, Boilerplate, MonitorSummary
from rlaif.evaluation.report import (
    EvalReport,
    KLEstimate,
    ModelSummary,
    RefusalEntry,
    Sample,
    TrainingCurves,
    WinRateEntry,
    card_headline,
    headline,
    load_report,
    read_report,
)
from rlaif.evaluation.report_html import render_html
from rlaif.evaluation.stats import rate, win_rate
from rlaif.evaluation.svg import bar_chart, line_chart, nice_ticks
from rlaif.store import ArtifactStore, StoreError, atomic_write_json

HOSTILE = '<script>alert("x")</script><img src="http://example.com/x.png">'


def make_report() -> EvalReport:
    entries = []
    for axis, prefs in (("harmless", [0.9, 0.8, 0.7, 0.2]), ("helpful", [0.4, 0.5, 0.6, 0.3])):
        for baseline in ("base", "sft"):
            entries.append(
                WinRateEntry(dataset="all", axis=axis, model="aligned", baseline=baseline, stats=win_rate(prefs))
            )
        entries.append(
            WinRateEntry(dataset="all", axis=axis, model="sft", baseline="base", stats=win_rate([0.6, 0.5, 0.5, 0.5]))
        )
    refusals = [
        RefusalEntry(group=group, model=role, detector=detector, stats=rate(flags))
        for group, flags in (("harmful", [True, True, False]), ("safe_lookalike", [False, True, False]))
        for role in ("base", "sft", "aligned")
        for detector in ("patterns", "judge")
    ]
    summaries = [
        ModelSummary(
            role=role,
            name=f"model-{role}",
            answers=3,
            mean_tokens=20.0,
            mean_chars=80.0,
            empty=0,
            unfinished=1,
            boilerplate=Boilerplate(fraction=0.0),
        )
        for role in ("base", "sft", "aligned")
    ]
    return EvalReport(
        run_id="run-1",
        created_at="2026-01-01T00:00:00+00:00",
        models={"base": "base-model", "sft": "sft-model", "aligned": "aligned-model"},
        judge_model="judge-model",
        constitution={"name": "minimal", "sha256": "0" * 64},
        prompts={"heldout": 4, "xstest": 6},
        win_rates=entries,
        refusals=refusals,
        model_summaries=summaries,
        judge_audit={"model": "judge-model", "pairs": 8, "agreement": 0.625, "agreement_single_order": 0.5, "flip_rate": 0.25,
                     "first_position_rate": 0.75, "by_source": {"helpful-base": {"count": 8, "agreement": 0.625}},
                     "calibration": [{"low": 0.0, "high": 0.05, "count": 8, "agreement": 0.625, "claimed": 0.51}]},
        labels=LabelSummary(labels=2, judgements=3, flip_rate=0.3, mean_confidence=0.2, principles=[
            PrincipleStats(principle_id="harmful", judgements=2, share=2 / 3, mean_preference=0.5, mean_confidence=0.3, flip_rate=0.5, first_position_rate=0.5),
            PrincipleStats(principle_id="helpful", judgements=1, share=1 / 3, mean_preference=0.6, mean_confidence=0.2, flip_rate=0.0, first_position_rate=1.0),
        ]),
        training=TrainingCurves(steps=[1, 2, 3], series={"objective/scores": [0.1, 0.3, None], "objective/kl": [0.0, 1.0, 2.0], "val/mean_response_length": [10, 12, 30]}),
        monitors=MonitorSummary(steps=3, alerts=[Alert(step=3, monitor="length_drift", value=3.0, threshold=2.0, message="x3")], first_alert={"length_drift": 3}),
        samples=[Sample(id="heldout:1", dataset="heldout", kind="heldout", prompt=HOSTILE, answers={"base": HOSTILE, "sft": "ok", "aligned": "I can't help with that."},
                        refused={"base": False, "sft": False, "aligned": True}, refusal_judge={"aligned": 0.9}, preferences={"aligned>base|harmless": 0.9})],
    )  # fmt: skip


def test_headline_has_win_rates_with_intervals_and_refusals() -> None:
    text = headline(make_report())
    # [0.9, 0.8, 0.7, 0.2]: 3 wins of 4 -> 0.75, Wilson 3/4 = (0.30064, 0.95441)
    assert "harmlessness win rate vs base: 0.75 [0.30, 0.95] (soft 0.65, n=4)" in text
    assert "helpfulness win rate vs sft: 0.38" in text  # (1 win + 1 tie / 2) / 4 = 0.375
    assert "refusal on harmful prompts (patterns / judge): base 0.67 [0.21, 0.94] (2/3) / judge 0.67" in text
    assert "over-refusal on safe prompts" in text
    assert "judge agreement with human labels: 0.62 (n=8, single order 0.50, flip rate 0.25)" in text
    assert "Goodhart monitors: alerts: length_drift" in text


def test_card_headline_is_a_markdown_table() -> None:
    card = card_headline(make_report())
    assert card.startswith("## Evaluation\n")
    assert "| Harmlessness win rate vs base | 0.75 [0.30, 0.95] (soft 0.65, n=4) |" in card
    assert "| Over-refusal rate, safe prompts (aligned) | 0.33 [0.06, 0.79] (1/3) |" in card


def test_html_is_self_contained_and_escapes_model_text() -> None:
    html = render_html(make_report())
    assert HOSTILE not in html and "&lt;script&gt;" in html
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing loaded from elsewhere
    plots = re.findall(r'<svg class="plot" data-plot="([^"]+)"', html)
    assert {"plane", "ppo-reward", "ppo-kl", "ppo-length", "principles", "refusals-patterns", "refusals-judge"} <= set(
        plots
    )
    assert "no data" not in html  # every plot of this report has data
    # the plane shows base at (1/2, 1/2) and the aligned point at (helpful 0.375, harmless 0.75)
    assert html.count("<circle") >= 3


def test_the_sampled_kl_to_sft_is_in_the_summary_and_the_card() -> None:
    kl = KLEstimate(mean=0.25, se=0.0125, prompts=6, samples_per_prompt=1, max_new_tokens=12)
    report = make_report().model_copy(update={"kl_to_sft": kl})
    line = "KL to SFT (held-out, sampled): 0.250 ± 0.013 nats (n=6)"  # (se 0.0125 shown to 3 places)
    assert f"  {line}" in headline(report).splitlines()
    html = render_html(report)
    summary = html.split('<pre class="headline">', 1)[1].split("</pre>", 1)[0]
    assert line in summary
    assert "| KL to SFT (held-out, sampled) | 0.250 ± 0.013 nats (n=6) |" in card_headline(report)
    # one prompt has no standard error: the mean alone
    single = report.model_copy(update={"kl_to_sft": kl.model_copy(update={"se": None, "prompts": 1})})
    assert "KL to SFT (held-out, sampled): 0.250 nats (n=1)" in headline(single)
    # a report without it (the policy is the SFT model, or eval.kl_samples 0) says nothing of a KL
    assert "KL to SFT" not in headline(make_report()) and "KL to SFT" not in card_headline(make_report())


def test_judge_and_online_dpo_labels_get_a_table_each() -> None:
    online = LabelSummary(source="online_dpo", stage="online_dpo", labels=4, judgements=4, flip_rate=0.25,
                          mean_confidence=0.1, principles=[PrincipleStats(principle_id="harmful", judgements=4, share=1.0,
                          mean_preference=0.5, mean_confidence=0.1, flip_rate=0.25, first_position_rate=0.5)])  # fmt: skip
    report = make_report().model_copy(update={"online_labels": online})
    html = render_html(report)
    assert "Per-principle label statistics: judge stage" in html  # (the fixture's labels name no stage)
    assert "judge stage: 2 labels, 3 principle judgements" in html
    assert "Per-principle label statistics: online DPO steps (online_dpo)" in html
    assert "online DPO steps (online_dpo): 4 labels, 4 principle judgements, flip rate 0.25" in html
    assert 'data-plot="principles"' in html and 'data-plot="principles-online_dpo"' in html  # a chart each


def test_empty_report_still_renders_every_section() -> None:
    report = EvalReport(created_at="now", models={"base": "a", "aligned": "b"}, judge_model="a")
    html = render_html(report)
    assert html.count('class="plot"') >= 5 and "no data" in html
    assert "n/a" in headline(report)


def test_svg_helpers() -> None:
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3, 3)[0] <= 3 <= nice_ticks(3, 3)[-1]
    chart = line_chart("c", "t", [("a", [1, 2, 3], [1.0, None, 2.0])], "x", "y")
    assert chart.count("<circle") == 2 and "<polyline" not in chart  # the None splits the line into single points
    bars = bar_chart("b", "t", ["x", "y"], [("g", [0.5, 0.0])], "v", 1.0)
    assert bars.count("<rect") == 1 + 2  # the background and 2 bars (a zero shows as a hairline); one group: no legend
    assert 'width="520" height="300"' in bars


def test_read_report_errors_name_the_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(StoreError, match="evaluation has not finished"):
        load_report(store, "run-1")
    assert not (tmp_path / "runs" / "run-1" / "evaluate").exists()  # reading creates no folders
    path = tmp_path / "report.json"
    atomic_write_json(path, {"created_at": 1})
    with pytest.raises(StoreError, match="report.json: not a valid evaluation report"):
        read_report(path)
    atomic_write_json(path, make_report().model_dump(mode="json"))
    assert read_report(path) == make_report()
