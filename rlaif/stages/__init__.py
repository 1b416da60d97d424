"""The stages of a run, one module each, in pipeline order:

1. critique_revise  SL-CAI: answer, critique, revise (records -> SFT data)
2. sft              supervised fine-tuning on the final revisions
3. sample_pairs     K responses per prompt from the policy -> comparisons
4. judge            AI feedback: soft labels from (A)/(B) log-probs, both orders
5. reward_model     scalar head, Bradley-Terry on soft labels               (ppo, best_of_n)
6. ppo              PPO with a per-token KL penalty to the SFT reference    (policy_optimization: ppo)
5-6. dpo            DPO / IPO on the soft labels against the SFT reference  (policy_optimization: dpo)
3-6. online_dpo     sample two, judge, one DPO step, each step (OAIF)       (policy_optimization: online_dpo)
6. best_of_n        SFT on the reward model's best of n samples (RAFT)      (policy_optimization: best_of_n)
7. evaluate         aligned vs base on held-out prompts

Which of 5-6 a run has, and how iterations repeat 3 to 6, is `rlaif.pipeline.plan`.

Each module has a pure core over items (usable on a shard) and a `run_<stage>(...) -> StageResult` that
reads its inputs from and writes its outputs to the artifact store. Artifact names within a stage folder
are the constants below, so stages and the service agree on them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# Artifact layout under <root>/runs/<run_id>/
INPUTS = "inputs"  # prompts.jsonl (train), eval_prompts.jsonl (held out), constitution.json, config.json
HUMAN_PAIRS_FILE = "human_pairs.jsonl"  # inputs: HumanPair, the run's preference set (when it names one)
PROMPTS_FILE = "prompts.jsonl"
EVAL_PROMPTS_FILE = "eval_prompts.jsonl"
CONSTITUTION_FILE = "constitution.json"
CONFIG_FILE = "config.json"
CRITIQUE_RECORDS_FILE = "records.jsonl"  # stage critique: CritiqueRecord
SFT_DATA_FILE = "sft.jsonl"  # stage critique: SFTExample (kept records only)
RESPONSES_FILE = "responses.jsonl"  # stage pairs: ResponseSet
COMPARISONS_FILE = "comparisons.jsonl"  # stage pairs: Comparison
LABELS_FILE = "labels.jsonl"  # stage judge: LabelRecord
STEP_LABELS_DIR = "labels"  # stage online_dpo: labels/step-000001.jsonl, the LabelRecords of each optimizer step
MODEL_DIR = "model"  # training stages: the Hugging Face folder (with its own manifest.json)
STEPS_DIR = "steps"  # training stages: resumable step checkpoints
METRICS_FILE = "metrics.jsonl"  # training stages: one JSON object of namespaced metrics per step
TENSORBOARD_DIR = "tensorboard"  # training stages: the same metrics as TensorBoard event files (rlaif/metrics_log.py)


class StageResult(BaseModel):
    """What a stage reports when it finishes."""

    stage: str = Field(description="Stage name.")
    outputs: list[str] = Field(default_factory=list, description="Artifact paths written, relative to the run folder.")
    counts: dict[str, int] = Field(default_factory=dict, description="Item counts (in, out, dropped...).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final namespaced metrics.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Anything else worth showing a user.")
