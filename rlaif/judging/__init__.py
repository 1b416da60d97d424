"""The AI-feedback judge (RL-CAI, Bai et al. 2022 sec. 4): soft preference labels from option log-probabilities.

One module per job:

- `prompts.py`  the multiple-choice judge prompt, put through the model's chat template, and the option tokens
- `scoring.py`  one forward pass over many judge prompts: padding, length-sorted batches, shared-prefix KV reuse
- `labels.py`   the arithmetic: two-option normalisation, both-order averaging, flips, clamping, ensembling
- `judge.py`    `judge_pair` (one pair, both orders, one forward pass), `judge_requests` (many pairs) and
               `judge_comparisons` (comparisons under principles sampled per pair, ensembled into labels)
- `audit.py`    agreement with human labels, position-flip rate and calibration (`rlaif judge-eval`)
- `revision_filter.py`  SL-CAI revisions kept only when the judge prefers them to the first answer in both orders

The stage that labels a run's comparisons is `rlaif/stages/judge.py`.
"""

from __future__ import annotations

from rlaif.judging.judge import JudgeRequest, judge_pair, judge_requests
from rlaif.judging.labels import combine_orders, ensemble, two_option_probability
from rlaif.records import PairJudgement

__all__ = [
    "JudgeRequest",
    "PairJudgement",
    "combine_orders",
    "ensemble",
    "judge_pair",
    "judge_requests",
    "two_option_probability",
]
