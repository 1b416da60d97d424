"""The report as one self-contained HTML page: inline CSS and inline SVG plots, no scripts, nothing fetched.

Sections: headline, Goodhart alerts, harmlessness vs helpfulness plane (base, SFT, aligned: each model's win
rate against the base model on both axes, with 95 % intervals), win-rate table, refusal rates (both detectors),
PPO curves (reward, KL, response length), per-principle label statistics, judge audit and reward model, sample
answers side by side, and the endpoints' requests and tokens per stage and role. Every text from a model, a prompt
or a file is HTML-escaped.

    python -c "from rlaif.evaluation.report import EvalReport; from rlaif.evaluation.report_html import render_html; \
import sys; print(render_html(EvalReport.model_validate_json(open(sys.argv[1]).read())))" report.json > report.html
"""

from __future__ import annotations

from html import escape

from rlaif.evaluation.label_stats import LabelSummary
from rlaif.evaluation.report import HARMFUL, ROLE_ORDER, SAFE_LOOKALIKE, EvalReport, headline
from rlaif.evaluation.svg import PALETTE, PlanePoint, bar_chart, line_chart, plane

ROLE_COLOURS = {"base": PALETTE[7], "sft": PALETTE[0], "best_of_n": PALETTE[2], "aligned": PALETTE[1]}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
pre.headline { background: #f6f8fa; padding: 12px; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.alert { background: #fff4e5; border-left: 4px solid #ff9800; padding: 6px 10px; margin: 4px 0; }
.ok { background: #edf7ed; border-left: 4px solid #4caf50; padding: 6px 10px; }
td.answer { white-space: pre-wrap; max-width: 360px; font-size: 12px; }
.refused { color: #b00020; font-weight: bold; }
"""


def _maybe(value: float | None, digits: int = 3, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.{digits}f}"


def _plane_section(report: EvalReport) -> str:
    points = []
    for role in ROLE_ORDER:
        if role not in report.models:
            continue
        if role == "base":
            points.append(PlanePoint("base", 0.5, 0.5, None, None, ROLE_COLOURS[role]))
            continue
        helpful = report.win_rate("helpful", role, "base")
        harmless = report.win_rate("harmless", role, "base")
        if helpful is None or harmless is None:
            continue
        points.append(
            PlanePoint(
                role,
                helpful.win_rate,
                harmless.win_rate,
                (helpful.ci_low, helpful.ci_high),
                (harmless.ci_low, harmless.ci_high),
                ROLE_COLOURS[role],
            )
        )
    return plane(
        "plane",
        "Harmlessness vs helpfulness (win rate vs base)",
        points if len(points) > 1 else [],
        "helpfulness win rate vs base",
        "harmlessness win rate vs base",
    )


def _win_table(report: EvalReport) -> str:
    rows = [
        "<table><tr><th>set</th><th>axis</th><th>model</th><th>vs</th><th>n</th><th>wins/ties/losses</th>"
        "<th>win rate [95% Wilson]</th><th>soft win rate [95% bootstrap]</th><th>flip rate</th></tr>"
    ]
    for e in report.win_rates:
        s = e.stats
        rows.append(
            f"<tr><td>{escape(e.dataset)}</td><td>{e.axis}</td><td>{e.model}</td><td>{e.baseline}</td>"
            f'<td class="num">{s.n}</td><td class="num">{s.wins}/{s.ties}/{s.losses}</td>'
            f'<td class="num">{s.win_rate:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]</td>'
            f'<td class="num">{s.soft_win_rate:.3f} [{s.soft_ci_low:.3f}, {s.soft_ci_high:.3f}]</td>'
            f'<td class="num">{s.flip_rate:.2f}</td></tr>'
        )
    return "\n".join([*rows, "</table>"])


def _refusal_section(report: EvalReport) -> str:
    groups = list(dict.fromkeys(e.group for e in report.refusals))
    groups.sort(key=lambda g: (g not in (HARMFUL, SAFE_LOOKALIKE), g))
    roles = [r for r in ROLE_ORDER if r in report.models]
    charts = []
    for detector in ("patterns", "judge"):
        if not any(e.detector == detector for e in report.refusals):
            continue
        series = []
        for role in roles:
            values = []
            for group in groups:
                stats = report.refusal(group, role, detector)
                values.append(stats.rate if stats is not None else None)
            series.append((role, values))
        charts.append(
            bar_chart(
                f"refusals-{detector}",
                f"Refusal rate by prompt group ({detector})",
                groups,
                series,
                "refusal rate",
                1.0,
                [ROLE_COLOURS[role] for role in roles],
            )
        )
    rows = [
        "<table><tr><th>group</th><th>model</th><th>detector</th><th>refused</th><th>rate [95% Wilson]</th>"
        "<th>mean P(refusal)</th><th>agrees with patterns</th></tr>"
    ]
    for e in report.refusals:
        s = e.stats
        rows.append(
            f"<tr><td>{escape(e.group)}</td><td>{e.model}</td><td>{e.detector}</td><td class='num'>{s.k}/{s.n}</td>"
            f"<td class='num'>{s.rate:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]</td>"
            f"<td class='num'>{_maybe(e.mean_p, 3, '')}</td><td class='num'>{_maybe(e.agreement, 2, '')}</td></tr>"
        )
    note = (
        "<p><b>harmful</b>: AdvBench and XSTest-unsafe prompts (refusing is right); <b>safe_lookalike</b>: XSTest-safe "
        "prompts (refusing is over-refusal). Patterns: rlaif/evaluation/refusal.py; judge: P(refusal) &gt; 1/2, both orders.</p>"
    )
    return f'<div class="plots">{"".join(charts)}</div>{note}' + "\n".join([*rows, "</table>"])


def _training_section(report: EvalReport) -> str:
    training = report.training
    steps = training.steps if training else []
    series = training.series if training else {}

    def lines(keys: list[tuple[str, str]]) -> list[tuple[str, list[int], list[float | None]]]:
        return [(label, steps, series[key]) for key, label in keys if key in series]

    reward = line_chart(
        "ppo-reward",
        "PPO reward",
        lines(
            [
                ("objective/scores", "RM score"),
                ("objective/rlhf_reward", "RLHF reward"),
                ("eval/judge_score", "judge score"),
            ]
        ),
        "update",
        "reward",
    )
    kl = line_chart(
        "ppo-kl", "KL to the SFT reference", lines([("objective/kl", "KL (nats/sequence)")]), "update", "KL"
    )
    length = line_chart(
        "ppo-length",
        "Response length over training",
        lines([("val/mean_response_length", "mean tokens")]),
        "update",
        "tokens",
    )
    return f'<div class="plots">{reward}{kl}{length}</div>'


def _monitor_section(report: EvalReport) -> str:
    alerts = list(report.alerts) + (list(report.monitors.alerts) if report.monitors else [])
    out = []
    if not alerts:
        out.append('<div class="ok">No Goodhart monitor alerted.</div>')
    for alert in alerts:
        where = "evaluation" if alert.step < 0 else f"update {alert.step}"
        out.append(f'<div class="alert"><b>{escape(alert.monitor)}</b> ({where}): {escape(alert.message)}</div>')
    if report.monitors:
        m = report.monitors
        stop = "none" if m.stop_step is None else str(m.stop_step)
        out.append(
            f"<p>Early stopping {'on' if m.early_stop else 'off'}; it stops (or would stop) at update {stop}. "
            f"Checkpoint kept by <code>{escape(m.keep_best)}</code>: update {m.best_step}.</p>"
        )
    summaries = "".join(
        f"<tr><td>{s.role}</td><td>{escape(s.name)}</td><td class='num'>{s.answers}</td><td class='num'>{s.mean_tokens:.1f}</td>"
        f"<td class='num'>{s.empty}</td><td class='num'>{s.unfinished}</td><td class='num'>{s.boilerplate.fraction:.2f}</td>"
        f"<td>{escape(s.boilerplate.sentence[:120])}</td>"
        f"<td class='num'>{_maybe(s.reward_mean, 3)}</td></tr>"
        for s in report.model_summaries
    )
    out.append(
        "<table><tr><th>role</th><th>model</th><th>answers</th><th>mean tokens</th><th>empty</th><th>cut at limit</th>"
        f"<th>boilerplate share</th><th>most repeated sentence</th><th>mean RM score</th></tr>{summaries}</table>"
    )
    return "\n".join(out)


def _principle_section(report: EvalReport) -> str:
    summaries = [s for s in (report.labels, report.online_labels) if s is not None and s.principles]
    if not summaries:
        chart = bar_chart("principles", "Per-principle label statistics", [], [], "")
        return f'<div class="plots">{chart}</div><p>No AI labels in this run (labels.jsonl).</p>'
    return "\n".join(_principle_table(labels, i) for i, labels in enumerate(summaries))


# A table per source, so the judge stage's labels and those online DPO judged at its steps are never mixed.
SOURCE_TITLES = {"judge": "judge stage", "online_dpo": "online DPO steps"}


def _principle_table(labels: LabelSummary, index: int) -> str:
    where = SOURCE_TITLES[labels.source] + (f" ({labels.stage})" if labels.stage else "")
    names = [p.principle_id for p in labels.principles]
    chart = bar_chart(
        "principles" if index == 0 else f"principles-{labels.source}",
        f"Per-principle label statistics: {where}",
        names,
        [
            ("share sampled", [p.share for p in labels.principles]),
            ("mean confidence", [p.mean_confidence for p in labels.principles]),
            ("flip rate", [p.flip_rate for p in labels.principles]),
        ],
        "fraction",
        1.0,
    )
    rows = "".join(
        f"<tr><td>{escape(p.principle_id)}</td><td class='num'>{p.judgements}</td><td class='num'>{p.share:.2f}</td>"
        f"<td class='num'>{p.mean_preference:.3f}</td><td class='num'>{p.mean_confidence:.3f}</td>"
        f"<td class='num'>{p.flip_rate:.2f}</td><td class='num'>{p.first_position_rate:.2f}</td></tr>"
        for p in labels.principles
    )
    table = (
        f"<p>{escape(where)}: {labels.labels} labels, {labels.judgements} principle judgements, "
        f"flip rate {labels.flip_rate:.2f}.</p>"
        "<table><tr><th>principle</th><th>judgements</th><th>share</th><th>mean P(A better)</th><th>mean confidence</th>"
        f"<th>flip rate</th><th>first-position rate</th></tr>{rows}</table>"
    )
    return f'<div class="plots">{chart}</div>{table}'


def _audit_section(report: EvalReport) -> str:
    out = []
    audit = report.judge_audit
    if audit is not None:
        by_source = ", ".join(
            f"{escape(k)} {v['agreement']:.2f} (n={int(v['count'])})" for k, v in audit.get("by_source", {}).items()
        )
        out.append(
            f"<p><b>Judge audit</b> ({escape(str(audit.get('model', '')))}, {audit['pairs']} human-labelled pairs): agreement "
            f"{audit['agreement']:.3f} (single order {audit['agreement_single_order']:.3f}), flip rate {audit['flip_rate']:.3f}, "
            f"first-position rate {audit['first_position_rate']:.3f}. By source: {by_source}.</p>"
        )
        buckets = "".join(
            f"<tr><td>[{b['low']:.2f}, {b['high']:.2f})</td><td class='num'>{b['count']}</td>"
            f"<td class='num'>{_maybe(b['agreement'])}</td><td class='num'>{_maybe(b['claimed'])}</td></tr>"
            for b in audit.get("calibration", [])
        )
        out.append(
            f"<table><tr><th>confidence |P-1/2|</th><th>pairs</th><th>agreement</th><th>claimed</th></tr>{buckets}</table>"
        )
    else:
        out.append("<p>No judge audit (set eval.human_pairs &gt; 0).</p>")
    rm = report.reward
    if rm is not None:
        fmt = _maybe
        out.append(
            f"<p><b>Reward model</b> <code>{escape(rm.path)}</code>: accuracy on held-out AI labels {fmt(rm.accuracy_ai_heldout)} "
            f"(n={rm.pairs_ai_heldout}), on human labels {fmt(rm.accuracy_human)} (n={rm.pairs_human}). "
            f"RM prefers aligned over base on {fmt(rm.rm_win_rate)} of prompts; the judge's soft win rate is "
            f"{fmt(rm.judge_win_rate)} (gap {fmt(rm.rm_judge_gap)}, agreement {fmt(rm.rm_judge_agreement)}).</p>"
        )
    best = report.best_of_n
    if best is not None:
        out.append(
            f"<p><b>Best-of-{best.n} baseline</b> ({escape(report.models.get('best_of_n', ''))}): {best.n} answers per "
            f"prompt sampled from <code>{escape(best.model)}</code> at temperature {best.temperature:g}, the reward "
            f"model's favourite kept. Its mean score {best.mean_best_score:.3f} against {best.mean_candidate_score:.3f} "
            f"per sample; distinct candidates {best.distinct_fraction:.2f}. Its win rates are in the table above (model "
            f"best_of_n).</p>"
        )
    return "\n".join(out)


def _samples_section(report: EvalReport) -> str:
    roles = [r for r in ROLE_ORDER if r in report.models]
    if not report.samples:
        return "<p>No samples.</p>"
    header = "".join(f"<th>{role}</th>" for role in roles)
    rows = []
    for sample in report.samples:
        cells = []
        for role in roles:
            refused = sample.refused.get(role, False)
            flag = '<div class="refused">refusal (patterns)</div>' if refused else ""
            judge = sample.refusal_judge.get(role)
            judge_note = f"<div>judge P(refusal) {judge:.2f}</div>" if judge is not None else ""
            reward = sample.rewards.get(role)
            reward_note = f"<div>RM score {reward:.3f}</div>" if reward is not None else ""
            cells.append(
                f'<td class="answer">{escape(sample.answers.get(role, ""))}{flag}{judge_note}{reward_note}</td>'
            )
        prefs = "<br>".join(f"{escape(k)}: {v:.2f}" for k, v in sample.preferences.items())
        rows.append(
            f"<tr><td>{escape(sample.dataset)}<br>{escape(sample.kind)}</td><td class='answer'>{escape(sample.prompt)}</td>"
            f"{''.join(cells)}<td>{prefs}</td></tr>"
        )
    return f"<table><tr><th>set</th><th>prompt</th>{header}<th>judge P(win)</th></tr>{''.join(rows)}</table>"


def _usage_section(report: EvalReport) -> str:
    if not report.usage:
        return "<p>Every model ran in process: no endpoint requests.</p>"
    rows = "".join(
        f"<tr><td>{escape(e.stage)}</td><td>{escape(e.role)}</td><td><code>{escape(str(e.endpoint))}</code></td>"
        f"<td class='num'>{e.requests}</td><td class='num'>{e.cached}</td><td class='num'>{e.retries}</td>"
        f"<td class='num'>{e.prompt_tokens:,}</td><td class='num'>{e.completion_tokens:,}</td>"
        f"<td class='num'>{_maybe(e.cost, 4, '')}</td></tr>"
        for e in report.usage
    )
    return (
        "<table><tr><th>stage</th><th>role</th><th>endpoint</th><th>requests</th><th>cached</th><th>retried</th>"
        f"<th>prompt tokens</th><th>completion tokens</th><th>cost</th></tr>{rows}</table>"
    )


def render_html(report: EvalReport) -> str:
    """The whole page."""
    title = f"rlaif evaluation{f' - run {report.run_id}' if report.run_id else ''}"
    models = ", ".join(f"{role}: <code>{escape(name)}</code>" for role, name in report.models.items())
    constitution = report.constitution.get("name", "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<p>{models}; judge <code>{escape(report.judge_model)}</code>; constitution <code>{escape(constitution)}</code>;
created {escape(report.created_at)}; prompts {escape(", ".join(f"{k}: {v}" for k, v in report.prompts.items()))}.</p>
<pre class="headline">{escape(headline(report))}</pre>
<h2>Goodhart monitors</h2>
{_monitor_section(report)}
<h2>Harmlessness and helpfulness</h2>
<div class="plots">{_plane_section(report)}</div>
<p>Win rate = (wins + ties/2) / n from the judge's both-order, principle-ensembled preference; ties are pairs within
eval.tie_margin of 1/2 (identical answers are ties). Soft win rate = mean P(win).</p>
{_win_table(report)}
<h2>Refusals</h2>
{_refusal_section(report)}
<h2>Training (PPO)</h2>
{_training_section(report)}
<h2>Principles</h2>
{_principle_section(report)}
<h2>Judge and reward model</h2>
{_audit_section(report)}
<h2>Sample answers</h2>
{_samples_section(report)}
<h2>Endpoint usage</h2>
{_usage_section(report)}
</body></html>
"""
