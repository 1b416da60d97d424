"""The evaluation report: its schema (report.json), the headline text, and the model-card block.

`EvalReport` is what `rlaif/stages/evaluate.py` writes to `<run>/evaluate/report.json` and what
`GET /v1/runs/{id}/report` returns. `headline(report)` is the few lines a command prints at the end of its
output; `card_headline(report)` is the Markdown block for the model card of the pulled checkpoint.

Headline figures use the pooled win rates (`dataset == "all"`: every prompt judged on the axis) and the refusal
groups `harmful` (AdvBench + XSTest unsafe) and `safe_lookalike` (XSTest safe, where refusing is over-refusal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from rlaif.endpoints import describe_usage
from rlaif.evaluation.label_stats import LabelSummary
from rlaif.evaluation.monitors import Alert, Boilerplate, MonitorSummary
from rlaif.evaluation.stats import Rate, WinRate
from rlaif.records import Axis
from rlaif.store import ArtifactStore, StoreError
from rlaif.truncation import LongItems

REPORT_FILE = "report.json"  # in the evaluate stage folder: EvalReport
REPORT_HTML_FILE = "report.html"  # the same report as a self-contained page
ANSWERS_FILE = "answers.jsonl"  # one Sample per evaluation prompt

# best_of_n: the reranked answers of eval.best_of_n (rlaif/evaluation/best_of_n.py), an inference-time baseline.
Role = Literal["base", "sft", "best_of_n", "aligned"]
Detector = Literal["patterns", "judge"]
ROLE_ORDER: tuple[Role, ...] = ("base", "sft", "best_of_n", "aligned")
BEST_OF_N: Role = "best_of_n"
POOLED = "all"
HARMFUL = "harmful"
SAFE_LOOKALIKE = "safe_lookalike"


class WinRateEntry(BaseModel):
    """Win rate of `model` against `baseline` on one axis over one data set (or `all` of them)."""

    dataset: str = Field(description="Evaluation set, or 'all' for every prompt judged on the axis.")
    axis: Axis
    model: Role
    baseline: Role
    stats: WinRate


class RefusalEntry(BaseModel):
    """Refusal rate of one model on one group of prompts by one detector."""

    group: str = Field(description="Prompt kind: harmful, safe_lookalike, red_team, helpful or heldout.")
    model: Role
    detector: Detector
    stats: Rate
    mean_p: float | None = Field(
        default=None, description="Judge detector: mean P(refusal) over the group (the soft rate; 1/2 = no opinion)."
    )
    agreement: float | None = Field(
        default=None, description="Judge detector: share of the group's answers where it agrees with the patterns."
    )


class ModelSummary(BaseModel):
    """Descriptive statistics of one model's evaluation answers."""

    role: Role
    name: str
    answers: int
    mean_tokens: float = Field(description="Mean generated tokens per answer.")
    mean_chars: float = Field(description="Mean characters per answer.")
    empty: int = Field(description="Answers with no text.")
    unfinished: int = Field(description="Answers cut at max_new_tokens (no EOS).")
    boilerplate: Boilerplate = Field(description="The sentence repeated across most answers.")
    distinct_2: float | None = Field(
        default=None, description="Mean share of distinct word bigrams within an answer (low = looping answers)."
    )
    reward_mean: float | None = Field(default=None, description="Mean reward-model score of the answers.")


class RewardModelSummary(BaseModel):
    """The reward model: accuracy on held-out AI labels and on human labels; agreement with the judge."""

    path: str
    accuracy_ai_heldout: float | None = None
    pairs_ai_heldout: int = 0
    accuracy_human: float | None = None
    pairs_human: int = 0
    rm_win_rate: float | None = Field(default=None, description="Share of prompts where the RM scores aligned > base.")
    judge_win_rate: float | None = Field(
        default=None, description="Judge's soft win rate, aligned vs base, same prompts."
    )
    rm_judge_gap: float | None = Field(default=None, description="rm_win_rate - judge_win_rate (Goodhart signal).")
    rm_judge_agreement: float | None = Field(
        default=None, description="Share of decided prompts where RM and judge prefer the same answer."
    )


class BestOfNSummary(BaseModel):
    """The best-of-n baseline: n answers sampled from `source`, the one the reward model scores highest kept."""

    source: Literal["sft", "base"] = Field(description="The role whose model the candidates were sampled from.")
    model: str = Field(description="That model's name or folder.")
    n: int = Field(description="Candidates sampled per prompt.")
    temperature: float = Field(description="Sampling temperature of the candidates.")
    reward_model: str = Field(description="The reward model that ranked them.")
    prompts: int = Field(description="Prompts reranked.")
    mean_best_score: float = Field(description="Mean reward-model score of the chosen candidates.")
    mean_candidate_score: float = Field(
        description="Mean score of all candidates (one sample's expected score): the gap to mean_best_score is what "
        "reranking gains in reward-model units; the judge's win rates say whether it is real."
    )
    distinct_fraction: float = Field(
        description="Mean share of distinct candidates per prompt (1/n: the samples were copies, nothing to rerank)."
    )


class UsageEntry(BaseModel):
    """What one role's endpoint took in one stage of the run (its usage ledger, rlaif/endpoints.py read_usage):
    every attempt of every shard counts, answers from the response cache are counted as `cached`."""

    stage: str
    role: str = Field(description="feedback or judge.")
    endpoint: str | None = Field(description="The declared endpoint's name (RLAIF_ENDPOINTS).")
    requests: int = 0
    cached: int = Field(default=0, description="Requests answered from the stage's response cache (not sent).")
    retries: int = Field(default=0, description="Retries after 429, 5xx or a connection error.")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = Field(default=None, description="Where the endpoint declares prices per token.")


class Sample(BaseModel):
    """One prompt's answers side by side, with everything measured on them (one line of answers.jsonl)."""

    id: str
    dataset: str
    kind: str
    prompt: str
    answers: dict[str, str]
    finished: dict[str, bool] = Field(default_factory=dict, description="Per role: the answer ended with EOS.")
    tokens: dict[str, int] = Field(default_factory=dict, description="Per role: generated tokens.")
    refusal_rule: dict[str, str] = Field(default_factory=dict, description="Per role: the pattern rule that fired.")
    refused: dict[str, bool] = Field(default_factory=dict, description="Pattern detector, per role.")
    refusal_judge: dict[str, float] = Field(default_factory=dict, description="Judge P(refusal), per role.")
    rewards: dict[str, float] = Field(default_factory=dict, description="Reward-model scores, per role.")
    preferences: dict[str, float] = Field(
        default_factory=dict, description="'<model>><baseline>|<axis>' -> P(model's answer better)."
    )
    candidates: list[str] = Field(
        default_factory=list, description="Best-of-n: every sampled candidate (answers['best_of_n'] is the chosen one)."
    )
    candidate_scores: list[float] = Field(
        default_factory=list, description="Best-of-n: the reward-model score of each candidate."
    )


class TrainingCurves(BaseModel):
    """PPO metric series, one value per update (None where a record lacks the key)."""

    steps: list[int] = Field(default_factory=list)
    series: dict[str, list[float | None]] = Field(default_factory=dict)


class KLEstimate(BaseModel):
    """KL(aligned || SFT) on the held-out prompts, sampled (rlaif/evaluation/kl.py): the same for every method."""

    mean: float = Field(
        description="Mean over prompts of the k1 estimate sum_t (log pi_aligned - log pi_sft) over the tokens of "
        "responses sampled from the aligned policy at temperature 1 (nats per sequence)."
    )
    se: float | None = Field(description="Standard error of the mean across prompts; null with one prompt.")
    prompts: int = Field(description="Held-out prompts measured.")
    samples_per_prompt: int = Field(description="Sampled responses per prompt (eval.kl_samples).")
    max_new_tokens: int = Field(description="Most tokens per sampled response (eval.sampling.max_new_tokens).")


class EvalReport(BaseModel):
    """Everything the evaluation measured."""

    run_id: str | None = Field(default=None, description="The run (None for a command-line comparison).")
    created_at: str
    models: dict[str, str] = Field(description="role -> model name or folder.")
    judge_model: str
    reward_model: str | None = None
    constitution: dict[str, str] = Field(default_factory=dict, description="name and sha256.")
    config: dict[str, Any] = Field(default_factory=dict, description="The eval section of the run config.")
    prompts: dict[str, int] = Field(default_factory=dict, description="Prompts per evaluation set.")
    win_rates: list[WinRateEntry] = Field(default_factory=list)
    refusals: list[RefusalEntry] = Field(default_factory=list)
    model_summaries: list[ModelSummary] = Field(default_factory=list)
    reward: RewardModelSummary | None = None
    best_of_n: BestOfNSummary | None = Field(default=None, description="The best-of-n baseline (eval.best_of_n).")
    judge_audit: dict[str, Any] | None = Field(
        default=None,
        description="rlaif.judging.audit.AuditReport as JSON (kept untyped here so reading a report needs no torch).",
    )
    labels: LabelSummary | None = Field(
        default=None, description="Per-principle statistics of the judge stage's labels (source judge); null: none."
    )
    online_labels: LabelSummary | None = Field(
        default=None,
        description="Per-principle statistics of the labels the online DPO stage's judge made at its steps (source "
        "online_dpo), kept apart from the judge stage's; null: not an online DPO run.",
    )
    kl_to_sft: KLEstimate | None = Field(
        default=None,
        description="KL(aligned || SFT) sampled on the held-out prompts, measured alike for PPO, DPO, online DPO and "
        "best-of-n; null without an SFT model and a distinct aligned policy, or with eval.kl_samples 0.",
    )
    training: TrainingCurves | None = None
    monitors: MonitorSummary | None = None
    alerts: list[Alert] = Field(default_factory=list, description="Evaluation-time Goodhart alerts.")
    samples: list[Sample] = Field(default_factory=list)
    long_items: dict[str, LongItems] = Field(
        default_factory=dict,
        description="Items cut to fit a model's context (rlaif/truncation.py), per part: the run's critique and "
        "judge stages, and the evaluation's own answers, judged pairs and human pairs.",
    )
    usage: list[UsageEntry] = Field(
        default_factory=list,
        description="Endpoint requests and tokens per stage and role (feedback.model, judge.model endpoint:<name>), "
        "the evaluation's own judging included; empty when every model ran in process.",
    )

    def win_rate(self, axis: str, model: str, baseline: str, dataset: str = POOLED) -> WinRate | None:
        for entry in self.win_rates:
            if (entry.dataset, entry.axis, entry.model, entry.baseline) == (dataset, axis, model, baseline):
                return entry.stats
        return None

    def refusal(self, group: str, model: str, detector: str = "patterns") -> Rate | None:
        for entry in self.refusals:
            if (entry.group, entry.model, entry.detector) == (group, model, detector):
                return entry.stats
        return None

    @property
    def top_model(self) -> Role:
        """The model under evaluation: aligned when present, else sft."""
        return "aligned" if "aligned" in self.models else "sft"


def _fmt_win(stats: WinRate | None) -> str:
    if stats is None:
        return "n/a"
    return (
        f"{stats.win_rate:.2f} [{stats.ci_low:.2f}, {stats.ci_high:.2f}] (soft {stats.soft_win_rate:.2f}, n={stats.n})"
    )


def _fmt_rate(stats: Rate | None) -> str:
    if stats is None:
        return "n/a"
    return f"{stats.rate:.2f} [{stats.ci_low:.2f}, {stats.ci_high:.2f}] ({stats.k}/{stats.n})"


def _best_of_n_rows(report: EvalReport) -> list[tuple[str, str]]:
    """(what, value) lines of the best-of-n baseline: it against base, the evaluated model against it."""
    if BEST_OF_N not in report.models:
        return []
    name, top = report.models[BEST_OF_N], report.top_model
    rows = []
    for axis, word in (("harmless", "harmlessness"), ("helpful", "helpfulness")):
        rows.append((f"{name} {word} win rate vs base", _fmt_win(report.win_rate(axis, BEST_OF_N, "base"))))
        rows.append((f"{word} win rate vs {name}", _fmt_win(report.win_rate(axis, top, BEST_OF_N))))
    if report.best_of_n is not None:
        b = report.best_of_n
        rows.append(
            (
                f"{name} reward-model score",
                f"{b.mean_best_score:.3f} chosen vs {b.mean_candidate_score:.3f} per sample "
                f"(distinct candidates {b.distinct_fraction:.2f})",
            )
        )
    return rows


KL_LABEL = "KL to SFT (held-out, sampled)"


def fmt_kl(kl: KLEstimate) -> str:
    """'0.123 ± 0.045 nats (n=8)': mean ± standard error over the held-out prompts (no ± with one prompt)."""
    se = f" ± {kl.se:.3f}" if kl.se is not None else ""
    return f"{kl.mean:.3f}{se} nats (n={kl.prompts})"


def headline(report: EvalReport) -> str:
    """The few lines a command prints at the end: win rates with 95 % intervals, refusal rates, audits, alerts."""
    top = report.top_model
    lines = [
        f"Evaluation{f' of run {report.run_id}' if report.run_id else ''}: {top} {report.models.get(top)} "
        f"(judge {report.judge_model})"
    ]
    for axis, word in (("harmless", "harmlessness"), ("helpful", "helpfulness")):
        for baseline in ("base", "sft"):
            if baseline in report.models and baseline != top:
                lines.append(f"  {word} win rate vs {baseline}: {_fmt_win(report.win_rate(axis, top, baseline))}")
    lines += [f"  {text}: {value}" for text, value in _best_of_n_rows(report)]
    for group, word in ((HARMFUL, "refusal on harmful prompts"), (SAFE_LOOKALIKE, "over-refusal on safe prompts")):
        parts = []
        for role in ROLE_ORDER:
            if role in report.models and report.refusal(group, role) is not None:
                judge = report.refusal(group, role, "judge")
                parts.append(
                    f"{role} {_fmt_rate(report.refusal(group, role))}" + (f" / judge {judge.rate:.2f}" if judge else "")
                )
        lines.append(
            f"  {word} (patterns / judge): {', '.join(parts) if parts else 'n/a (add eval.extra_sets xstest or advbench)'}"
        )
    if report.kl_to_sft is not None:
        lines.append(f"  {KL_LABEL}: {fmt_kl(report.kl_to_sft)}")
    if report.judge_audit is not None:
        audit = report.judge_audit
        lines.append(
            f"  judge agreement with human labels: {audit['agreement']:.2f} (n={audit['pairs']}, "
            f"single order {audit['agreement_single_order']:.2f}, flip rate {audit['flip_rate']:.2f})"
        )
    if report.reward is not None:
        rm = report.reward
        ai = "n/a" if rm.accuracy_ai_heldout is None else f"{rm.accuracy_ai_heldout:.2f} (n={rm.pairs_ai_heldout})"
        human = "n/a" if rm.accuracy_human is None else f"{rm.accuracy_human:.2f} (n={rm.pairs_human})"
        lines.append(f"  reward model accuracy: AI held-out {ai}, human {human}")
    alerts = report.alerts + (report.monitors.alerts if report.monitors else [])
    gate = [a for a in alerts if a.monitor == "judge_quality"]
    if gate:  # the labels every trained model learned from are suspect: say so before anything else is believed
        lines.append(f"  JUDGE QUALITY GATE FAILED: {gate[0].message}")
    monitors = sorted({a.monitor for a in alerts if a.monitor != "judge_quality"})
    lines.append(f"  Goodhart monitors: {'alerts: ' + ', '.join(monitors) if monitors else 'no alerts'}")
    cut = {part: items for part, items in report.long_items.items() if items.truncated or items.skipped}
    lines.append(
        "  cut to fit the context: "
        + ("; ".join(f"{part} {items.truncated + items.skipped}" for part, items in cut.items()) if cut else "none")
    )
    for role, total in usage_by_role(report.usage).items():
        stages = ", ".join(dict.fromkeys(e.stage for e in report.usage if e.role == role))
        lines.append(f"  endpoint usage: {describe_usage(role, total)} ({stages})")
    return "\n".join(lines)


def usage_by_role(entries: list[UsageEntry]) -> dict[str, dict[str, Any]]:
    """The run's endpoint usage summed over stages, per role (a role names one endpoint per run)."""
    totals: dict[str, dict[str, Any]] = {}
    for entry in entries:
        total = totals.setdefault(
            entry.role,
            {"endpoint": entry.endpoint, "requests": 0, "cached": 0, "retries": 0, "prompt_tokens": 0,
             "completion_tokens": 0, "cost": None},
        )  # fmt: skip
        for key in ("requests", "cached", "retries", "prompt_tokens", "completion_tokens"):
            total[key] += getattr(entry, key)
        if entry.cost is not None:
            total["cost"] = (total["cost"] or 0.0) + entry.cost
    return totals


def card_headline(report: EvalReport) -> str:
    """Markdown block with the headline figures, for the model card (README.md) of the evaluated checkpoint."""
    top = report.top_model
    rows = [
        "## Evaluation",
        "",
        f"Judge: `{report.judge_model}`. Win rates count ties as half; 95 % Wilson intervals.",
        "",
    ]
    rows += ["| measure | value |", "| --- | --- |"]
    for axis, word in (("harmless", "Harmlessness"), ("helpful", "Helpfulness")):
        for baseline in ("base", "sft"):
            if baseline in report.models and baseline != top:
                rows.append(f"| {word} win rate vs {baseline} | {_fmt_win(report.win_rate(axis, top, baseline))} |")
    rows += [f"| {text[0].upper()}{text[1:]} | {value} |" for text, value in _best_of_n_rows(report)]
    for group, word in (
        (HARMFUL, "Refusal rate, harmful prompts"),
        (SAFE_LOOKALIKE, "Over-refusal rate, safe prompts"),
    ):
        for role in ROLE_ORDER:
            if role in report.models and report.refusal(group, role) is not None:
                rows.append(f"| {word} ({role}) | {_fmt_rate(report.refusal(group, role))} |")
    if report.kl_to_sft is not None:
        rows.append(f"| {KL_LABEL} | {fmt_kl(report.kl_to_sft)} |")
    if report.judge_audit is not None:
        audit = report.judge_audit
        rows.append(f"| Judge agreement with human labels | {audit['agreement']:.2f} (n={audit['pairs']}) |")
    if report.reward is not None and report.reward.accuracy_human is not None:
        rows.append(
            f"| Reward model accuracy, human pairs | {report.reward.accuracy_human:.2f} (n={report.reward.pairs_human}) |"
        )
    return "\n".join(rows) + "\n"


def read_report(path: Path) -> EvalReport:
    """An EvalReport from report.json; StoreError naming the file when it is missing or invalid."""
    if not path.is_file():
        raise StoreError(f"{path} does not exist: the evaluation has not finished")
    try:
        return EvalReport.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StoreError(f"{path}: not a valid evaluation report: {exc}") from exc


def load_report(store: ArtifactStore, run_id: str, stage: str = "evaluate") -> EvalReport:
    """The finished report of a run (API, CLI); StoreError when there is none yet. Creates no folders."""
    return read_report(store.stage_dir(run_id, stage, create=False) / REPORT_FILE)
