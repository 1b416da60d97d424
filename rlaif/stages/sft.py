"""Stage 2, SL-CAI supervised fine-tuning: train the policy on (prompt, final revision) pairs.

Bai et al. 2022, sec. 3 ("Constitutional AI: Critiques, Revisions, and Supervised Learning"): the pretrained
model is fine-tuned on its own revised responses, optionally mixed with helpful-only samples (sec. 3.1).
The prompt is chat-templated exactly as generation sees it and masked out of the loss (labels -100 on the
prompt and the padding), so the model learns the response only. The loss is the token mean over each global
batch: the same for any split into ranks and micro-batches. AdamW, linear warm-up then decay, gradient
clipping, bf16 autocast where fast, optional LoRA (peft), step checkpoints every `sft.checkpoint_every` steps
with exact resume, and metrics (`loss/train`, `loss/eval`, `optim/lr`, `perf/tokens_per_s`) in metrics.jsonl,
TensorBoard files and MLflow (rlaif/metrics_log.py).
Runs data-parallel under torchrun (rlaif/distributed.py).

    rlaif sft --run-id demo                                  # one process
    torchrun --nproc_per_node 2 -m rlaif sft --run-id demo   # two data-parallel ranks
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from rlaif.checkpoints import (
    checkpoint_meta,
    load_latest_step_state,
    remove_resume_states,
    save_hf_checkpoint,
    save_step_state,
)
from rlaif.config import RunConfig, SFTConfig
from rlaif.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, no_sync, wrap_ddp
from rlaif.metrics_log import MetricsLog
from rlaif.modeling import disable_dropout, load_causal_lm, load_tokenizer
from rlaif.records import CritiqueRecord, SFTExample
from rlaif.stages import (
    CRITIQUE_RECORDS_FILE,
    METRICS_FILE,
    MODEL_DIR,
    SFT_DATA_FILE,
    STEPS_DIR,
    StageResult,
)
from rlaif.stages.contract import StageContext, StepCallback
from rlaif.store import ArtifactStore, read_jsonl, read_manifest
from rlaif.training import (
    LossModule,
    TokenizedExample,
    autocast,
    autocast_dtype,
    global_batches,
    make_optimizer,
    make_scheduler,
    masked_lm_loss_sum,
    pack,
    plan_batches,
    rank_micro_batches,
    seed_everything,
    seeded_permutation,
    split_holdout,
    target_tokens,
    tokenize_chat,
    use_packed_attention,
)

log = logging.getLogger(__name__)


def train_sft(
    examples: list[SFTExample],
    base_model: str,
    cfg: SFTConfig,
    out_dir: Path,
    seed: int,
    meta: dict[str, Any] | None = None,
    helpful_examples: list[SFTExample] | None = None,
    progress: bool = True,
    on_step: StepCallback | None = None,
    critiqued: int | None = None,
) -> StageResult:
    """Fine-tune `base_model` on `examples`; writes out_dir/model (HF folder), out_dir/steps, out_dir/metrics.jsonl.

    `on_step(step, total_steps, metrics)` is called after every optimizer step (and after that step's checkpoint): a worker
    heartbeats from it, and an exception raised in it stops training like a crash (resume picks up from the
    newest step state). `meta` (lineage from `checkpoint_meta`) is extended with counts and final metrics.
    `critiqued` is how many harmful prompts stage 1 critiqued (`count_critiqued`): with it, the share whose revision
    survived into `examples` is checked against sft.min_revision_survival (a warning in the result's extra).
    """
    # --- setup ----------------------------------------------------------------------------------------------
    info = init_distributed()
    seed_everything(seed)
    out_dir = Path(out_dir)
    steps_dir = out_dir / STEPS_DIR
    tokenizer = load_tokenizer(base_model)
    survival = revision_survival(len(examples), critiqued, cfg.min_revision_survival)
    if survival.warning and info.is_main:
        log.warning("%s", survival.warning)

    train_idx, eval_idx = split_holdout(len(examples), cfg.eval_fraction, seed)
    train_examples = [examples[i] for i in train_idx] + _helpful_mix(helpful_examples, len(train_idx), cfg, seed)
    train_data, dropped_train = _tokenize(tokenizer, train_examples, cfg.max_length)
    eval_data, dropped_eval = _tokenize(tokenizer, [examples[i] for i in eval_idx], cfg.max_length)
    plan = plan_batches(len(train_data), cfg.batch_size, cfg.micro_batch_size, info.world_size, "sft")
    total_steps = plan.steps_per_epoch * cfg.epochs
    lengths = [len(e.input_ids) for e in train_data]

    model = load_causal_lm(base_model, dtype="float32", device=str(info.device))  # fp32 master weights
    attention = use_packed_attention(model)  # restored before saving
    if cfg.lora_rank > 0:
        model = _add_lora(model, cfg)
    model.train()
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, total_steps, cfg.warmup_ratio)
    start_step = load_latest_step_state(steps_dir, model, optimizer, scheduler) or 0
    # metrics.jsonl, TensorBoard, MLflow; a resumed run rewrites what came after its step state. Rank 0 writes.
    metrics_log = MetricsLog(out_dir, "sft", cfg, meta, start_step, enabled=info.is_main)
    loss_module = wrap_ddp(LossModule(model, masked_lm_loss_sum), info)
    amp = autocast_dtype(cfg.dtype, info.device)
    log.info(
        "SFT of %s on %d examples (%d held out, %d helpful mixed in): %d steps of %d sequences, %d micro-batches of "
        "%d per rank x %d ranks, start at step %d, autocast %s",
        base_model, len(train_data), len(eval_data), len(train_examples) - len(train_idx), total_steps,
        plan.batch_size, plan.accumulation, cfg.micro_batch_size, info.world_size, start_step, amp,
    )  # fmt: skip

    # --- loop -----------------------------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=start_step, desc="sft", disable=not (progress and info.is_main))
    metrics: dict[str, float] = {}
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, plan.steps_per_epoch)
        batch = global_batches(len(train_data), plan.batch_size, seed, epoch)[index]
        micro_batches = rank_micro_batches(batch, lengths, info.rank, info.world_size, cfg.micro_batch_size)
        n_targets = sum(target_tokens(train_data[i]) for i in batch)  # the whole global batch, known on every rank
        started, started_cpu = time.perf_counter(), time.process_time()
        loss_sum, n_tokens = _train_step(loss_module, train_data, micro_batches, n_targets, info, amp)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, n_tokens = all_reduce_sum([loss_sum, n_tokens], info)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
        metrics = {
            "step": step + 1,
            "epoch": epoch,
            "loss/train": loss_sum / n_targets,
            "optim/lr": lr,
            "perf/tokens_per_s": n_tokens / seconds,
            "perf/step_s": seconds,
            "perf/step_cpu_s": cpu_seconds,  # all threads; well below step_s x threads = a contended CPU
        }
        if (step + 1) % plan.steps_per_epoch == 0 and eval_data:
            metrics["loss/eval"] = evaluate_sft_loss(model, eval_data, cfg.micro_batch_size, info, amp)
        metrics_log.log(metrics)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
            if info.is_main:
                save_step_state(steps_dir, step + 1, model, optimizer, scheduler, {"metrics": metrics})
            barrier(info)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss/train']:.3f}")
        if on_step is not None:
            on_step(step + 1, total_steps, metrics)
    bar.close()
    metrics_log.close()

    # --- save -----------------------------------------------------------------------------------------------
    counts = {
        "train_examples": len(train_data),
        "eval_examples": len(eval_data),
        "helpful_examples": len(train_examples) - len(train_idx),
        "dropped_too_long": dropped_train + dropped_eval,
        "steps": total_steps,
    }
    final = {k: v for k, v in metrics.items() if k.startswith("loss/")}
    extra = survival.extra()
    if info.is_main:
        full_meta = {**(meta or {}), "counts": {**(meta or {}).get("counts", {}), **counts}, "metrics": final}
        full_meta.update(extra)  # (so a finished stage read back from its model folder still says so)
        full_meta.setdefault("stage", "sft")
        full_meta.setdefault("base_model", base_model)
        model.eval()
        model.set_attn_implementation(attention)
        save_hf_checkpoint(model, tokenizer, out_dir / MODEL_DIR, full_meta)
        remove_resume_states(out_dir, STEPS_DIR)  # the finished model supersedes the resume states
    barrier(info)
    return StageResult(stage="sft", outputs=[MODEL_DIR, METRICS_FILE], counts=counts, metrics=final, extra=extra)


class RevisionSurvival(NamedTuple):
    """How many of the critiqued prompts kept a revision for SFT, and the warning when too few did."""

    kept: int
    critiqued: int | None
    warning: str | None

    @property
    def fraction(self) -> float | None:
        return self.kept / self.critiqued if self.critiqued else None

    def extra(self) -> dict[str, Any]:
        """The StageResult extra: {"revision_survival", "warnings"}; {} when the critiqued count is unknown."""
        if self.critiqued is None:
            return {}
        return {
            "revision_survival": {"kept": self.kept, "critiqued": self.critiqued, "fraction": self.fraction},
            "warnings": [self.warning] if self.warning else [],
        }


def revision_survival(kept: int, critiqued: int | None, minimum: float) -> RevisionSurvival:
    """`kept` revisions of `critiqued` harmful prompts against sft.min_revision_survival. Too few means stage 1's
    feedback model (or its judge filter) threw most revisions away: SFT then trains on little, and on what a weak
    model happened to get right, so the run says so where people look (the stage's event and the report)."""
    if not critiqued or kept / critiqued >= minimum:
        return RevisionSurvival(kept, critiqued, None)
    return RevisionSurvival(
        kept,
        critiqued,
        f"only {kept} of {critiqued} critiqued prompts ({kept / critiqued:.0%}) kept a revision for SFT, below "
        f"sft.min_revision_survival {minimum:.0%}: see the critique stage's extra.dropped for why; a stronger "
        "feedback.model gives more usable revisions",
    )


def count_critiqued(store: ArtifactStore, run_id: str, stage: str = "critique") -> int | None:
    """Harmful prompts in the run's stage 1 records.jsonl (the prompts it critiqued, `train_sft(critiqued=...)`);
    None when the file is not there."""
    path = store.stage_dir(run_id, stage, create=False) / CRITIQUE_RECORDS_FILE
    if not path.is_file():
        return None
    return sum(record.kind == "harmful" for record in read_jsonl(path, CritiqueRecord))


def _train_step(
    loss_module: torch.nn.Module,
    data: list[TokenizedExample],
    micro_batches: list[list[int]],
    n_targets: int,
    info: DistInfo,
    amp: torch.dtype | None,
) -> tuple[float, int]:
    """Forward/backward over this rank's micro-batches; returns (summed token loss, tokens seen) of this rank.

    Each micro-batch contributes loss_sum / n_targets, so the accumulated gradient is that of the token-mean
    loss over the global batch. DDP averages gradients over ranks; multiplying by world_size undoes that mean.
    """
    loss_total, tokens = 0.0, 0
    for i, micro in enumerate(micro_batches):
        batch = pack([data[j] for j in micro]).to(info.device)  # padding-free: no compute on padding
        with no_sync(loss_module, sync=i == len(micro_batches) - 1):
            with autocast(info.device, amp):
                loss_sum = loss_module(batch)
            (loss_sum * info.world_size / n_targets).backward()
        loss_total += loss_sum.item()
        tokens += batch.input_ids.numel()
    return loss_total, tokens


@torch.no_grad()
def evaluate_sft_loss(
    model: torch.nn.Module,
    data: list[TokenizedExample],
    micro_batch_size: int,
    info: DistInfo,
    amp: torch.dtype | None = None,
) -> float:
    """Token-mean masked LM loss over `data` (dealt across ranks, sums all-reduced)."""
    model.eval()
    mine = list(range(info.rank, len(data), info.world_size))
    loss_sum, n_targets = 0.0, 0
    for start in range(0, len(mine), micro_batch_size):
        chunk = [data[i] for i in mine[start : start + micro_batch_size]]
        with autocast(info.device, amp):
            loss_sum += masked_lm_loss_sum(model, pack(chunk).to(info.device)).item()
        n_targets += sum(target_tokens(e) for e in chunk)
    model.train()
    loss_sum, n_targets = all_reduce_sum([loss_sum, n_targets], info)
    return loss_sum / max(n_targets, 1)


def _tokenize(tokenizer: Any, examples: list[SFTExample], max_length: int) -> tuple[list[TokenizedExample], int]:
    """Tokenised examples, and how many were dropped because the prompt leaves no room for a response token."""
    out = [tokenize_chat(tokenizer, e.prompt, e.response, max_length) for e in examples]
    kept = [e for e in out if target_tokens(e) > 0]
    if len(kept) < len(out):
        log.warning(
            "dropped %d of %d SFT examples whose prompt fills sft.max_length=%d",
            len(out) - len(kept),
            len(out),
            max_length,
        )
    return kept, len(out) - len(kept)


def _helpful_mix(helpful: list[SFTExample] | None, n_train: int, cfg: SFTConfig, seed: int) -> list[SFTExample]:
    """The helpful examples mixed into training (Bai et al. mix in helpful data): all of them when
    sft.helpful_mix is null, else round(helpful_mix x n_train), a seeded sample."""
    helpful = helpful or []
    if cfg.helpful_mix is None:
        return list(helpful)
    if cfg.helpful_mix <= 0:
        return []
    wanted = round(cfg.helpful_mix * n_train)
    if not helpful:
        log.warning(
            "sft.helpful_mix is %s but there are no helpful examples: training on revisions only", cfg.helpful_mix
        )
        return []
    if wanted > len(helpful):
        log.warning("sft.helpful_mix wants %d helpful examples, only %d exist: using all", wanted, len(helpful))
    order = seeded_permutation(len(helpful), seed, 2)[:wanted]
    return [helpful[i] for i in sorted(order)]


def _add_lora(model: torch.nn.Module, cfg: SFTConfig) -> torch.nn.Module:
    """LoRA adapters on every linear layer of the decoder (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    disable_dropout(model)
    return model


def data_parallel(cfg: RunConfig) -> str | None:
    """None: this stage runs data-parallel (a Celery task with RLAIF_TRAIN_DEVICES > 1 starts it on that many
    ranks, rlaif/service/ranks.py)."""
    return None


def run_sft(ctx: StageContext) -> StageResult:
    """Stage wrapper: <run>/critique/sft.jsonl (revisions, and helpful answers mixed in) + the policy model (or
    `ctx.models["base"]`) -> <run>/<stage>/model.

    A finished stage (model folder with a manifest) is not trained again: a redelivered task returns its result.
    """
    out_dir = ctx.out_dir
    if read_manifest(out_dir / MODEL_DIR) is not None:
        log.info("%s/%s already has a complete model; skipping training", ctx.run_id, ctx.name)
        remove_resume_states(out_dir, STEPS_DIR)  # (left behind if a worker died right after the save)
        return _finished_result(ctx.name, out_dir)
    records = read_jsonl(ctx.path("data", SFT_DATA_FILE), SFTExample)
    # Revisions of harmful prompts are split for the eval loss; helpful answers are mixed into training.
    examples = [e for e in records if e.kind == "harmful"]
    helpful = [e for e in records if e.kind == "helpful"]
    base_model = ctx.models.get("base", ctx.cfg.policy_model)
    meta = checkpoint_meta(
        "sft", base_model, ctx.cfg, ctx.constitution_document(), counts={"sft_records": len(examples)},
        run_id=ctx.run_id,
    )  # fmt: skip
    return train_sft(
        examples, base_model, ctx.cfg.sft, out_dir, ctx.cfg.seed, meta=meta, helpful_examples=helpful,
        on_step=ctx.hooks.on_step, critiqued=count_critiqued(ctx.store, ctx.run_id, ctx.source("data") or "critique"),
    )  # fmt: skip


def _finished_result(stage: str, out_dir: Path) -> StageResult:
    meta = _read_json(out_dir / MODEL_DIR / "meta.json")
    return StageResult(
        stage=stage, outputs=[MODEL_DIR, METRICS_FILE], counts=meta.get("counts", {}), metrics=meta.get("metrics", {})
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
