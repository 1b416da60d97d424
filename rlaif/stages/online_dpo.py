"""One RLAIF iteration with `policy_optimization: online_dpo`: DPO with the judge in the loop.

Online AI feedback (OAIF; Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", sec. 3 and
Algorithm 1): offline DPO learns from pairs the SFT model sampled once, so the further the policy moves, the less
its training pairs look like what it now writes. OAIF samples the pairs from the *current* policy at every step:
for each prompt of the step's batch, two responses from the policy being trained (eval mode for sampling, each
prompt under a seed from (seed, step, prompt id)); the run's judge labels each pair in both orders under principles
sampled from the run's selection (rlaif/judging/judge.py `judge_comparisons`: in process, or the judge endpoint);
then one soft-label DPO update (rlaif.rl.losses.dpo_loss, the batching of rlaif/stages/dpo.py) against the frozen
reference, the SFT model. The pairs are new every step, so the reference stays in memory and scores each step's
pairs before the update (offline DPO scores its fixed pairs once).

Each step's judged pairs are written to `<stage>/labels/step-000001.jsonl` (atomically) before the update, so a
step redone after a resume (or a redelivered task) re-reads them and judges nothing twice; identical responses
carry no preference and are not judged. The evaluation's per-principle statistics read these labels too, apart
from the judge stage's (report.json `online_labels`, rlaif/evaluation/label_stats.py). Step checkpoints every `online_dpo.checkpoint_every` steps resume as in
dpo.py. Metrics: `loss/dpo`, `rewards/*`, `logps/*` (chosen = the side the judge prefers), `online/judge_p_a_mean`,
`online/flip_rate` (principle judgements whose two orders disagree), `online/pairs`, `online/identical_pairs`.
One process: the samples and labels of a step are made on one device (no torchrun).

    python -c "from rlaif.stages.online_dpo import run_online_dpo; from rlaif.stages.contract import StageContext; \
from rlaif.store import ArtifactStore; from rlaif.settings import settings; \
print(run_online_dpo(StageContext.of(ArtifactStore(settings.artifacts_dir), 'RUN_ID', 'online_dpo')))"
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rlaif.checkpoints import (
    checkpoint_meta,
    load_latest_step_state,
    read_meta,
    remove_resume_states,
    save_hf_checkpoint,
    save_step_state,
)
from rlaif.config import OnlineDPOConfig, RunConfig, SamplingConfig
from rlaif.constitution import Constitution
from rlaif.distributed import init_distributed, wrap_ddp
from rlaif.evaluation.label_stats import read_step_labels
from rlaif.generation import Generator
from rlaif.generation.common import derive_seed
from rlaif.generation.hf import HFGenerator
from rlaif.judging.judge import cached_judge, judge_comparisons
from rlaif.metrics_log import MetricsLog
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.records import Comparison, LabelRecord, PromptItem
from rlaif.stages import METRICS_FILE, MODEL_DIR, PROMPTS_FILE, STEP_LABELS_DIR, STEPS_DIR, StageResult
from rlaif.stages.contract import StageContext, StepCallback
from rlaif.stages.dpo import (
    compute_reference_logps,
    dpo_batch_loss,
    dpo_train_step,
    pair_metrics,
    tokenize_dpo,
)
from rlaif.stages.judge import judge_generator
from rlaif.store import StoreError, read_jsonl, read_manifest, write_jsonl
from rlaif.training import (
    LossModule,
    autocast_dtype,
    global_batches,
    make_optimizer,
    make_scheduler,
    rank_micro_batches,
    seed_everything,
    target_tokens,
    use_packed_attention,
)

log = logging.getLogger(__name__)

LABELS_DIR = STEP_LABELS_DIR  # labels/step-000001.jsonl: the judged pairs of each optimizer step, written before it
# The judge as a function: this step's comparisons in, their soft labels out, in input order (style guide 11).
LabelFn = Callable[[list[Comparison]], list[LabelRecord]]


def train_online_dpo(
    prompts: list[PromptItem],
    policy_model: str,
    label_fn: LabelFn,
    cfg: OnlineDPOConfig,
    out_dir: Path,
    seed: int,
    reference_model: str | None = None,
    meta: dict[str, Any] | None = None,
    generation_batch_size: int = 16,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> StageResult:
    """Online DPO of `policy_model` on `prompts`, judged by `label_fn`, against `reference_model` (default: the
    policy itself); writes out_dir/model (HF folder), out_dir/labels, out_dir/steps, out_dir/metrics.jsonl.

    `on_step(step, total_steps, metrics)` runs after every optimizer step (heartbeat hook; raising in it stops training
    like a crash, and the next call resumes from the newest step state and re-reads the stored labels of the steps
    it redoes). `generation_batch_size` is the sequences per generate call.
    """
    # --- setup ----------------------------------------------------------------------------------------------
    info = init_distributed()
    if info.world_size > 1:
        raise ValueError(
            "online DPO runs in one process: each step samples and judges on one device; run it without torchrun"
        )
    seed_everything(seed)
    out_dir = Path(out_dir)
    steps_dir, labels_dir = out_dir / STEPS_DIR, out_dir / LABELS_DIR
    reference_model = reference_model or policy_model
    tokenizer = load_tokenizer(policy_model)
    amp = autocast_dtype(cfg.dtype, info.device)
    if cfg.prompts_per_step > len(prompts):
        raise ValueError(
            f"online_dpo.prompts_per_step {cfg.prompts_per_step} is more than the run's {len(prompts)} training "
            "prompts: a step would sample a prompt twice"
        )
    steps_per_epoch = math.ceil(len(prompts) / cfg.prompts_per_step)
    total_steps = cfg.steps

    model = load_causal_lm(policy_model, dtype="float32", device=str(info.device))  # fp32 master weights
    attention = use_packed_attention(model)  # restored before saving
    model.train()
    # The pairs are new every step, so the reference stays in memory to score each step's pairs.
    reference = load_causal_lm(reference_model, dtype="float32", device=str(info.device)).requires_grad_(False)
    use_packed_attention(reference)
    # Samples come from the model being trained (the generator switches it to eval mode while it samples).
    generator = HFGenerator.from_loaded(model, tokenizer, policy_model, batch_size=generation_batch_size)
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, total_steps, cfg.warmup_ratio)
    start_step = load_latest_step_state(steps_dir, model, optimizer, scheduler) or 0
    # metrics.jsonl, TensorBoard, MLflow; a resumed run rewrites what came after its step state.
    metrics_log = MetricsLog(out_dir, "online_dpo", cfg, meta, start_step)
    loss_module = wrap_ddp(LossModule(model, functools.partial(dpo_batch_loss, cfg=cfg)), info)
    log.info(
        "online DPO of %s against %s on %d prompts: %d steps of %d prompts x 2 samples, micro-batches of %d pairs, "
        "%s loss, beta %g, start at step %d, autocast %s",
        policy_model, reference_model, len(prompts), total_steps, cfg.prompts_per_step, cfg.micro_batch_size,
        cfg.loss, cfg.beta, start_step, amp,
    )  # fmt: skip

    # --- loop -----------------------------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=start_step, desc="online dpo", disable=not progress)
    metrics: dict[str, float] = {}
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        batch = [prompts[i] for i in global_batches(len(prompts), cfg.prompts_per_step, seed, epoch)[index]]
        started, started_cpu = time.perf_counter(), time.process_time()
        labels = step_labels(
            labels_dir / f"step-{step + 1:06d}.jsonl", batch, step + 1, generator, label_fn, cfg.sampling, seed
        )
        label_seconds = time.perf_counter() - started
        data = [tokenize_dpo(tokenizer, label, cfg.max_length) for label in labels]
        data = [e for e in data if target_tokens(e.chosen) > 0 and target_tokens(e.rejected) > 0]
        ref = {r.id: r for r in compute_reference_logps(reference, data, cfg.micro_batch_size, info.device, amp)}
        lengths = [len(e.chosen.input_ids) + len(e.rejected.input_ids) for e in data]
        micro_batches = rank_micro_batches(range(len(data)), lengths, info.rank, info.world_size, cfg.micro_batch_size)
        # A step whose pairs were all identical has no micro-batch, so no gradient: AdamW leaves the weights alone.
        sums = dpo_train_step(loss_module, data, ref, micro_batches, len(data), info, amp)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
        metrics = {
            "step": step + 1,
            "epoch": epoch,
            **pair_metrics(sums, max(len(data), 1)),
            **online_metrics(labels, len(batch)),
            "optim/lr": lr,
            "perf/pairs_per_s": len(data) / seconds,
            "perf/step_s": seconds,
            "perf/label_s": label_seconds,  # sampling and judging (about 0 where the labels were stored)
            "perf/step_cpu_s": cpu_seconds,  # all threads; well below step_s x threads = a contended CPU
        }
        metrics_log.log(metrics)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
            save_step_state(steps_dir, step + 1, model, optimizer, scheduler, {"metrics": metrics})
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss/dpo']:.3f}", acc=f"{metrics['rewards/accuracy']:.2f}")
        if on_step is not None:
            on_step(step + 1, total_steps, metrics)
    bar.close()
    metrics_log.close()

    # --- save -----------------------------------------------------------------------------------------------
    # Counted from the stored labels, so a resumed stage counts the steps its earlier attempt made too.
    judged = len(read_step_labels(labels_dir))
    counts = {"prompts": len(prompts), "steps": total_steps, "pairs_judged": judged}
    final = {k: v for k, v in metrics.items() if k.startswith(("loss/", "rewards/", "online/"))}
    full_meta = {**(meta or {}), "counts": {**(meta or {}).get("counts", {}), **counts}, "metrics": final}
    full_meta.setdefault("stage", "online_dpo")
    full_meta.setdefault("base_model", policy_model)
    full_meta.setdefault("reference_model", reference_model)
    model.eval()
    model.set_attn_implementation(attention)
    save_hf_checkpoint(model, tokenizer, out_dir / MODEL_DIR, full_meta)
    remove_resume_states(out_dir, STEPS_DIR)  # the finished model supersedes the resume states
    return StageResult(stage="online_dpo", outputs=[MODEL_DIR, METRICS_FILE, LABELS_DIR], counts=counts, metrics=final)


def step_labels(
    path: Path,
    prompts: Sequence[PromptItem],
    step: int,
    generator: Generator,
    label_fn: LabelFn,
    sampling: SamplingConfig,
    seed: int,
) -> list[LabelRecord]:
    """The judged pairs of one step: read from `path` when an earlier attempt stored them for these prompts (a
    redone step judges nothing twice), else sampled from the current policy, judged, and written before the update."""
    comparison_ids = {comparison_id(item, step) for item in prompts}
    if path.is_file():
        stored = read_jsonl(path, LabelRecord)
        if {label.id for label in stored} <= comparison_ids:
            return stored
        log.warning("%s does not hold the pairs of step %d's prompts: sampling and judging them again", path, step)
    comparisons = sample_online_pairs(prompts, step, generator, sampling, seed)
    labels = label_fn(comparisons) if comparisons else []
    if [label.id for label in labels] != [c.id for c in comparisons]:
        raise ValueError(f"step {step}: the judge returned labels for other pairs than it was given")
    write_jsonl(path, labels)  # atomic: a crash leaves the old file or none, never half a step's labels
    return labels


def comparison_id(item: PromptItem, step: int) -> str:
    """The id of a prompt's pair at one step: unique in the stage (the judge seeds its principles by it)."""
    return f"{item.id}@{step}"


def sample_online_pairs(
    prompts: Sequence[PromptItem], step: int, generator: Generator, sampling: SamplingConfig, seed: int
) -> list[Comparison]:
    """Two responses per prompt from `generator`'s model, each prompt under a seed from (seed, step, prompt id), so
    a redone step samples the same text; pairs of identical responses are left out (nothing to prefer)."""
    conversations = [[{"role": "user", "content": item.prompt}] for item in prompts]
    outputs = generator.generate(
        conversations,
        2,
        sampling,
        seed=[derive_seed(seed, "online_dpo", step, item.id) for item in prompts],
        progress=False,
        fit_context=True,  # a prompt too long for the context is cut (rlaif/truncation.py), not fatal
    )
    pairs = []
    for item, (a, b) in zip(prompts, outputs, strict=True):
        if a.text.strip() == b.text.strip():
            log.info("prompt %s, step %d: both samples are identical; pair skipped (nothing to prefer)", item.id, step)
            continue
        pairs.append(Comparison(id=comparison_id(item, step), prompt=item.prompt, response_a=a.text, response_b=b.text))
    return pairs


def online_metrics(labels: Sequence[LabelRecord], prompts: int) -> dict[str, float]:
    """online/* metrics of one step: the judge's mean P(a better) (near 0.5 for two samples of one policy), the
    fraction of principle judgements whose two orders disagree, and the pairs judged and skipped."""
    metrics = {"online/pairs": float(len(labels)), "online/identical_pairs": float(prompts - len(labels))}
    judgements = [j for label in labels for j in label.judgements]
    if judgements:  # (a step whose samples were all identical judged nothing)
        metrics["online/judge_p_a_mean"] = sum(label.p_a for label in labels) / len(labels)
        metrics["online/flip_rate"] = sum(j.flip for j in judgements) / len(judgements)
    return metrics


def judge_label_fn(cfg: RunConfig, constitution: Constitution, stage_dir: Path) -> LabelFn:
    """The run's judge as a LabelFn: `judge_comparisons` with the judge of `cached_judge` (in process or the
    endpoint, its cache and usage ledger in the stage folder), loaded at the first step that needs labels, so a
    resumed stage whose remaining steps are all judged never loads it."""

    def label(comparisons: list[Comparison]) -> list[LabelRecord]:
        model, tokenizer = cached_judge(cfg.judge_model, cfg.judge.dtype, stage_dir=stage_dir)
        generator = None
        if cfg.judge.chain_of_thought:
            generator = judge_generator(model, tokenizer, cfg.judge_model, cfg.generation.batch_size)
        return list(
            judge_comparisons(
                comparisons, model, tokenizer, constitution, cfg.judge.principles, cfg.judge, cfg.seed,
                generator=generator, progress=False,
            )
        )  # fmt: skip

    return label


# --- stage wrapper ---------------------------------------------------------------------------------------------


def run_online_dpo(ctx: StageContext) -> StageResult:
    """Stage wrapper: <run>/inputs/prompts.jsonl + the policy (SFT or the previous iteration's) -> <run>/<stage>/model,
    judged by the run's judge under its constitution, against the frozen reference (the run's SFT model).

    A finished stage (model folder with a manifest) is not trained again: a redelivered task returns its result.
    """
    out_dir = ctx.out_dir
    if read_manifest(out_dir / MODEL_DIR) is not None:
        log.info("%s/%s already has a complete model; skipping training", ctx.run_id, ctx.name)
        remove_resume_states(out_dir, STEPS_DIR)  # (left behind if a worker died right after the save)
        meta = read_meta(out_dir / MODEL_DIR)
        return StageResult(
            stage=ctx.name,
            outputs=[MODEL_DIR, METRICS_FILE, LABELS_DIR],
            counts=meta.get("counts", {}),
            metrics=meta.get("metrics", {}),
        )
    if ctx.constitution is None:
        raise StoreError(f"run {ctx.run_id}: online DPO needs the run's constitution (inputs/constitution.json)")
    cfg = ctx.cfg
    prompts = read_jsonl(ctx.path("prompts", PROMPTS_FILE), PromptItem)
    policy_model, reference_model = ctx.model("policy"), ctx.model("reference")
    meta = checkpoint_meta(
        "online_dpo", policy_model, cfg, ctx.constitution_document(), judge_model=cfg.judge_model,
        counts={"prompts_in": len(prompts)}, run_id=ctx.run_id, policy_optimization="online_dpo",
        reference_model=reference_model,
    )  # fmt: skip
    # The stage name is part of the seed so that each RLAIF iteration samples afresh (and walks the prompts anew).
    seed = derive_seed(cfg.seed, ctx.name)
    return train_online_dpo(
        prompts, policy_model, judge_label_fn(cfg, ctx.constitution, out_dir), cfg.online_dpo, out_dir, seed,
        reference_model=reference_model, meta=meta, generation_batch_size=cfg.generation.batch_size,
        on_step=ctx.hooks.on_step,
    )  # fmt: skip
