"""The judge quality gate: a run checks its own AI labels before a policy is trained on them.

A judge whose two orders disagree on most pairs (flip rate), or that mostly picks whichever response comes first,
produces labels that are position noise: a reward model or DPO trained on them learns nothing about the
constitution. The gate reads the judge stage's `judge/*` metrics (rlaif/stages/judge.py `label_metrics`):

- `judge/flip_rate` above `judge.gate.max_flip_rate` (default 0.35; GPT-4 judges show about 0.13);
- `judge/order1_prefers_a` (share of first-order readings that prefer option (A)) further than
  `judge.gate.max_position_bias` from 1/2.

`judge.gate.action` says what happens: `warn` (default: a warning event that `rlaif watch` shows, and an alert in
the evaluation report) or `stop` (the run fails before any policy trains on the labels, with the same message).

    python -c "from rlaif.evaluation.judge_gate import check_labels; help(check_labels)"
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from rlaif.config import JudgeGateConfig

ADVICE = (
    "use a stronger judge (judge.model: a larger instruct model in an allowed folder), more principles per label "
    "(judge.principles_per_label), or few-shot comparison examples (judge.few_shot)"
)


class GateReport(BaseModel):
    """What the gate found in one judge stage's labels."""

    passed: bool = Field(description="No bound was exceeded.")
    action: str = Field(description="warn or stop: what a failed gate does.")
    findings: list[str] = Field(default_factory=list, description="One readable sentence per exceeded bound.")

    @property
    def stops(self) -> bool:
        return not self.passed and self.action == "stop"

    def message(self, stage: str) -> str:
        return f"judge quality gate ({stage}): " + "; ".join(self.findings) + f". What to do: {ADVICE}"


def check_labels(metrics: dict[str, float], cfg: JudgeGateConfig) -> GateReport:
    """The gate over a judge stage's metrics (no labels, no metrics: nothing to check, passed)."""
    findings: list[str] = []
    flip = metrics.get("judge/flip_rate")
    if flip is not None and flip > cfg.max_flip_rate:
        findings.append(
            f"flip rate {flip:.2f} > {cfg.max_flip_rate:.2f}: the two orders disagree on {flip:.0%} of judgements, "
            "so the labels are mostly position noise"
        )
    first = metrics.get("judge/order1_prefers_a")
    if first is not None and abs(first - 0.5) > cfg.max_position_bias:
        findings.append(
            f"option (A) preferred in {first:.0%} of first-order readings (more than {cfg.max_position_bias:.2f} "
            "from 1/2): the judge answers by position"
        )
    return GateReport(passed=not findings, action=cfg.action, findings=findings)
