"""Stages 5-6 with `policy_optimization: dpo`: the policy trained on the AI-labelled pairs directly.

Rafailov et al. 2023 (Direct Preference Optimization) replace the reward model and PPO by one classification loss
on the pairs: with Delta = (log pi(a|x) - log pi_ref(a|x)) - (log pi(b|x) - log pi_ref(b|x)) and the judge's soft
label p = P(a better), loss = -[p log s(beta Delta) + (1-p) log s(-beta Delta)] (p in {0, 1} is the paper's
loss), or IPO's (Delta - (2p-1)/(2 beta))^2 (Azar et al. 2023) with `dpo.loss: ipo`; `rlaif.rl.losses.dpo_loss`.
Each pair is turned so that "chosen" is the side the judge prefers (p >= 0.5; both losses are symmetric), which
is what the `rewards/*` and `logps/*` metrics call chosen and rejected.

A response's log-probability is the sum over its tokens (and EOS) given the chat-templated prompt, exactly as SFT
tokenises (prompt tokens masked out; `dpo.length_normalize` divides by the token count). The reference is the
SFT model in every iteration: it scores every labelled pair once, before training, into `<stage>/ref_logps.jsonl`
(one line per label id), and is freed, so only the policy is in memory while training; a resumed stage reads the
file instead of loading the reference again. Each micro-batch packs its chosen then its rejected sides into one
padding-free row. The loop is the reward model's (rlaif/stages/reward_model.py): AdamW, warm-up then linear
decay, clipping, bf16 autocast where fast, optional LoRA (peft; the export is merged, the adapter kept in
`model/adapter/`), step checkpoints every `dpo.checkpoint_every` steps with exact resume, data-parallel under
torchrun, and metrics in metrics.jsonl, TensorBoard and MLflow (rlaif/metrics_log.py): `loss/dpo`,
`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracy`, `logps/chosen`, `logps/rejected`,
and `val/*` on the held-out pairs after each epoch.

    rlaif dpo --run-id demo
    torchrun --nproc_per_node 2 -m rlaif dpo --run-id demo
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from rlaif.checkpoints import (
    checkpoint_meta,
    load_latest_step_state,
    read_meta,
    remove_resume_states,
    save_hf_checkpoint,
    save_step_state,
)
from rlaif.config import DPOConfig, OnlineDPOConfig, RunConfig
from rlaif.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, no_sync, wrap_ddp
from rlaif.metrics_log import MetricsLog
from rlaif.modeling import disable_dropout, load_causal_lm, load_tokenizer
from rlaif.records import LabelRecord
from rlaif.rl.losses import dpo_loss
from rlaif.rl.types import DPOLoss
from rlaif.stages import LABELS_FILE, METRICS_FILE, MODEL_DIR, STEPS_DIR, StageResult
from rlaif.stages.contract import StageContext, StepCallback
from rlaif.store import read_jsonl, read_manifest, write_jsonl
from rlaif.training import (
    IGNORE_INDEX,
    LossModule,
    PackedBatch,
    TokenizedExample,
    autocast,
    autocast_dtype,
    chunks,
    global_batches,
    make_optimizer,
    make_scheduler,
    pack,
    plan_batches,
    rank_micro_batches,
    seed_everything,
    split_holdout,
    target_tokens,
    tokenize_chat,
    use_packed_attention,
)

log = logging.getLogger(__name__)

REF_LOGPS_FILE = "ref_logps.jsonl"  # the reference's log-probs of every labelled pair, computed once per stage


class DPOExample(NamedTuple):
    """A tokenised comparison, turned so that the judge prefers `chosen`: p = P(chosen better) >= 0.5."""

    id: str
    chosen: TokenizedExample
    rejected: TokenizedExample
    p: float


class RefLogps(BaseModel):
    """One line of ref_logps.jsonl: the reference's summed response log-probs of a label's two sides."""

    model_config = ConfigDict(extra="forbid")

    id: str
    chosen: float
    rejected: float
    tokens_chosen: int
    tokens_rejected: int


class DPOBatch(NamedTuple):
    """Micro-batch of B comparisons packed into one row: the B chosen sides, then the B rejected sides.

    No padding: position_ids restart at 0 for each sequence (see rlaif.training.PackedBatch), and `labels` is
    IGNORE_INDEX on every prompt token, so only response tokens count.
    """

    packed: PackedBatch  # (1, L) each, L = total tokens of the 2B sequences
    ref_logps: torch.Tensor  # (2B,) the reference's summed response log-probs, chosen sides then rejected
    tokens: torch.Tensor  # (2B,) response tokens of each sequence
    p: torch.Tensor  # (B,) P(chosen better)


class DPOSums(NamedTuple):
    """Sums over a rank's pairs of one step (all-reduced into the step's metrics)."""

    loss: float
    chosen_rewards: float
    rejected_rewards: float
    chosen_logps: float
    rejected_logps: float
    correct: int  # decisive pairs whose implicit reward prefers the chosen side
    decisive: int  # pairs whose label has a side: p != 0.5


NO_SUMS = DPOSums(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)


def _add(a: DPOSums, b: DPOSums) -> DPOSums:
    return DPOSums(*(x + y for x, y in zip(a, b, strict=True)))


def train_dpo(
    labels: list[LabelRecord],
    policy_model: str,
    cfg: DPOConfig,
    out_dir: Path,
    seed: int,
    reference_model: str | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> StageResult:
    """DPO of `policy_model` on soft-labelled pairs against `reference_model` (default: the policy itself);
    writes out_dir/model (HF folder), out_dir/ref_logps.jsonl, out_dir/steps, out_dir/metrics.jsonl.

    `on_step(step, total_steps, metrics)` runs after every optimizer step (heartbeat hook; raising in it stops training like a
    crash, and the next call resumes from the newest step state and the stored reference log-probs).
    """
    # --- setup ----------------------------------------------------------------------------------------------
    info = init_distributed()
    seed_everything(seed)
    out_dir = Path(out_dir)
    steps_dir = out_dir / STEPS_DIR
    reference_model = reference_model or policy_model
    tokenizer = load_tokenizer(policy_model)
    amp = autocast_dtype(cfg.dtype, info.device)

    examples, dropped = _tokenize(tokenizer, labels, cfg.max_length)
    ref = reference_logps_of(examples, reference_model, out_dir / REF_LOGPS_FILE, cfg.micro_batch_size, info, amp)
    train_idx, eval_idx = split_holdout(len(examples), cfg.eval_fraction, seed)
    train_data, eval_data = [examples[i] for i in train_idx], [examples[i] for i in eval_idx]
    plan = plan_batches(len(train_data), cfg.batch_size, cfg.micro_batch_size, info.world_size, "dpo")
    total_steps = plan.steps_per_epoch * cfg.epochs
    lengths = [len(e.chosen.input_ids) + len(e.rejected.input_ids) for e in train_data]

    model = load_causal_lm(policy_model, dtype="float32", device=str(info.device))  # fp32 master weights
    attention = use_packed_attention(model)  # restored before saving
    if cfg.lora_rank > 0:
        model = _add_lora(model, cfg)
    model.train()
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, total_steps, cfg.warmup_ratio)
    start_step = load_latest_step_state(steps_dir, model, optimizer, scheduler) or 0
    # metrics.jsonl, TensorBoard, MLflow; a resumed run rewrites what came after its step state. Rank 0 writes.
    metrics_log = MetricsLog(out_dir, "dpo", cfg, meta, start_step, enabled=info.is_main)
    loss_module = wrap_ddp(LossModule(model, functools.partial(dpo_batch_loss, cfg=cfg)), info)
    log.info(
        "DPO of %s against %s on %d pairs (%d held out, %d too long): %d steps of %d pairs, %d micro-batches of %d "
        "per rank x %d ranks, %s loss, beta %g, start at step %d, autocast %s",
        policy_model, reference_model, len(train_data), len(eval_data), dropped, total_steps, plan.batch_size,
        plan.accumulation, cfg.micro_batch_size, info.world_size, cfg.loss, cfg.beta, start_step, amp,
    )  # fmt: skip

    # --- loop -----------------------------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=start_step, desc="dpo", disable=not (progress and info.is_main))
    metrics: dict[str, float] = {}
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, plan.steps_per_epoch)
        batch = global_batches(len(train_data), plan.batch_size, seed, epoch)[index]
        micro_batches = rank_micro_batches(batch, lengths, info.rank, info.world_size, cfg.micro_batch_size)
        started, started_cpu = time.perf_counter(), time.process_time()
        sums = dpo_train_step(loss_module, train_data, ref, micro_batches, plan.batch_size, info, amp)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sums = DPOSums(*all_reduce_sum(list(sums), info))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
        metrics = {
            "step": step + 1,
            "epoch": epoch,
            **pair_metrics(sums, plan.batch_size),
            "optim/lr": lr,
            "perf/pairs_per_s": plan.batch_size / seconds,
            "perf/step_s": seconds,
            "perf/step_cpu_s": cpu_seconds,  # all threads; well below step_s x threads = a contended CPU
        }
        if (step + 1) % plan.steps_per_epoch == 0 and eval_data:
            metrics.update(evaluate_dpo(model, eval_data, ref, cfg, info, amp))
        metrics_log.log(metrics)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
            if info.is_main:
                save_step_state(steps_dir, step + 1, model, optimizer, scheduler, {"metrics": metrics})
            barrier(info)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss/dpo']:.3f}", acc=f"{metrics['rewards/accuracy']:.2f}")
        if on_step is not None:
            on_step(step + 1, total_steps, metrics)
    bar.close()
    metrics_log.close()

    # --- save -----------------------------------------------------------------------------------------------
    counts = {
        "train_pairs": len(train_data),
        "eval_pairs": len(eval_data),
        "dropped_too_long": dropped,
        "steps": total_steps,
    }
    final = {k: v for k, v in metrics.items() if k.startswith(("loss/", "rewards/", "val/"))}
    if info.is_main:
        full_meta = {**(meta or {}), "counts": {**(meta or {}).get("counts", {}), **counts}, "metrics": final}
        full_meta.setdefault("stage", "dpo")
        full_meta.setdefault("base_model", policy_model)
        full_meta.setdefault("reference_model", reference_model)
        model.eval()
        model.set_attn_implementation(attention)
        save_hf_checkpoint(model, tokenizer, out_dir / MODEL_DIR, full_meta)
        remove_resume_states(out_dir, STEPS_DIR)  # the finished model supersedes the resume states
    barrier(info)
    return StageResult(stage="dpo", outputs=[MODEL_DIR, METRICS_FILE, REF_LOGPS_FILE], counts=counts, metrics=final)


def dpo_train_step(
    loss_module: torch.nn.Module,
    data: list[DPOExample],
    ref: dict[str, RefLogps],
    micro_batches: list[list[int]],
    global_pairs: int,
    info: DistInfo,
    amp: torch.dtype | None,
) -> DPOSums:
    """Forward/backward over this rank's micro-batches; the sums of this rank's pairs (also online DPO's step).

    Each micro-batch adds loss_sum / global_pairs, so the gradient is that of the mean over the global batch;
    x world_size undoes DDP's averaging over ranks.
    """
    sums = NO_SUMS
    for i, micro in enumerate(micro_batches):
        batch = pack_dpo([data[j] for j in micro], ref, info.device)  # padding-free: no compute on padding
        with no_sync(loss_module, sync=i == len(micro_batches) - 1):
            with autocast(info.device, amp):
                loss_sum, out, logps = loss_module(batch)
            (loss_sum * info.world_size / global_pairs).backward()
        sums = _add(sums, _sums(loss_sum, out, logps, batch.p))
    return sums


def dpo_batch_loss(
    model: torch.nn.Module, batch: DPOBatch, cfg: DPOConfig | OnlineDPOConfig
) -> tuple[torch.Tensor, DPOLoss, torch.Tensor]:
    """(summed DPO loss, the loss with its detached implicit rewards, the detached summed policy log-probs (2B,))
    of a micro-batch; one forward pass for both sides. `cfg` gives the loss options (beta, loss, label_smoothing,
    length_normalize), the same fields in the dpo and online_dpo sections."""
    logps = packed_response_logps(model, batch.packed)  # (2B,)
    ref, tokens, n = batch.ref_logps, batch.tokens, batch.p.shape[0]
    chosen_tokens, rejected_tokens = (tokens[:n], tokens[n:]) if cfg.length_normalize else (None, None)
    out = dpo_loss(
        logps[:n], logps[n:], ref[:n], ref[n:], batch.p, cfg.beta, cfg.loss, cfg.label_smoothing,
        chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
    )  # fmt: skip
    return out.loss * n, out, logps.detach()


def packed_response_logps(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """log pi(response | prompt) of each sequence of a packed row, summed over its target tokens: (S,) float32.

    The decoder runs once over the row and the LM head only on the target (response) positions, as in
    `masked_lm_loss_sum`; each target's log-prob is added to the sequence it belongs to (position 0 starts one).
    """
    # use_cache=False: with a cache, transformers does not build the packed block-diagonal mask.
    hidden = model.get_decoder()(
        input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
    ).last_hidden_state  # (1, L, d)
    targets = batch.labels[:, 1:]  # (1, L-1): token t+1 is predicted at position t
    mask = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V)
    token_logps = -F.cross_entropy(logits.float(), targets[mask], reduction="none")  # (N,)
    sequence = (batch.position_ids == 0).cumsum(dim=1) - 1  # (1, L): which sequence each token is in
    n_sequences = int((batch.position_ids == 0).sum())
    return token_logps.new_zeros(n_sequences).index_add(0, sequence[:, 1:][mask], token_logps)


def pair_metrics(sums: DPOSums, pairs: int, prefix: str = "") -> dict[str, float]:
    """Means over `pairs` of the step's (or the held-out set's) sums, with the TRL metric names."""
    if prefix:  # val/loss, val/rewards_accuracy, ...: one level under val/
        names = ("loss", "rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracy")
        names += ("logps_chosen", "logps_rejected")
    else:
        names = ("loss/dpo", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy")
        names += ("logps/chosen", "logps/rejected")
    values = (
        sums.loss / pairs,
        sums.chosen_rewards / pairs,
        sums.rejected_rewards / pairs,
        (sums.chosen_rewards - sums.rejected_rewards) / pairs,
        sums.correct / max(sums.decisive, 1),
        sums.chosen_logps / pairs,
        sums.rejected_logps / pairs,
    )
    return {prefix + name: float(value) for name, value in zip(names, values, strict=True)}


def _sums(loss_sum: torch.Tensor, out: DPOLoss, logps: torch.Tensor, p: torch.Tensor) -> DPOSums:
    n = p.shape[0]
    decisive = p != 0.5
    correct = (out.chosen_rewards > out.rejected_rewards) & decisive
    return DPOSums(
        loss_sum.item(),
        out.chosen_rewards.sum().item(),
        out.rejected_rewards.sum().item(),
        logps[:n].sum().item(),
        logps[n:].sum().item(),
        int(correct.sum()),
        int(decisive.sum()),
    )


@torch.no_grad()
def evaluate_dpo(
    model: torch.nn.Module,
    data: list[DPOExample],
    ref: dict[str, RefLogps],
    cfg: DPOConfig,
    info: DistInfo,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """val/* metrics over held-out pairs (dealt across ranks, sums all-reduced)."""
    model.eval()
    mine = [data[i] for i in range(info.rank, len(data), info.world_size)]
    sums = NO_SUMS
    for chunk in chunks(mine, cfg.micro_batch_size):
        batch = pack_dpo(list(chunk), ref, info.device)
        with autocast(info.device, amp):
            loss_sum, out, logps = dpo_batch_loss(model, batch, cfg)
        sums = _add(sums, _sums(loss_sum, out, logps, batch.p))
    model.train()
    sums = DPOSums(*all_reduce_sum(list(sums), info))
    return pair_metrics(sums, len(data), prefix="val/")


# --- data ------------------------------------------------------------------------------------------------------


def tokenize_dpo(tokenizer: Any, label: LabelRecord, max_length: int) -> DPOExample:
    """Both sides chat-templated as SFT trains (prompt masked, response + EOS), turned so the judge prefers chosen."""
    a = tokenize_chat(tokenizer, label.prompt, label.response_a, max_length)
    b = tokenize_chat(tokenizer, label.prompt, label.response_b, max_length)
    if label.p_a >= 0.5:
        return DPOExample(label.id, a, b, label.p_a)
    return DPOExample(label.id, b, a, 1.0 - label.p_a)


def _tokenize(tokenizer: Any, labels: list[LabelRecord], max_length: int) -> tuple[list[DPOExample], int]:
    """Tokenised pairs, and how many were dropped because the prompt leaves no room for a response token."""
    out = [tokenize_dpo(tokenizer, label, max_length) for label in labels]
    kept = [e for e in out if target_tokens(e.chosen) > 0 and target_tokens(e.rejected) > 0]
    if len(kept) < len(out):
        log.warning(
            "dropped %d of %d DPO pairs whose prompt fills dpo.max_length=%d",
            len(out) - len(kept),
            len(out),
            max_length,
        )
    return kept, len(out) - len(kept)


def pack_dpo(pairs: Sequence[DPOExample], ref: dict[str, RefLogps], device: torch.device) -> DPOBatch:
    """The chosen then the rejected sides of `pairs` packed into one row (see DPOBatch), with reference log-probs."""
    packed = pack([p.chosen for p in pairs] + [p.rejected for p in pairs]).to(device)
    refs = [ref[p.id] for p in pairs]
    ref_logps = torch.tensor([r.chosen for r in refs] + [r.rejected for r in refs], dtype=torch.float32)
    tokens = torch.tensor([r.tokens_chosen for r in refs] + [r.tokens_rejected for r in refs], dtype=torch.float32)
    p = torch.tensor([pair.p for pair in pairs], dtype=torch.float32)
    return DPOBatch(packed, ref_logps.to(device), tokens.to(device), p.to(device))


# --- reference -------------------------------------------------------------------------------------------------


@torch.no_grad()
def compute_reference_logps(
    model: torch.nn.Module,
    examples: Sequence[DPOExample],
    micro_batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> list[RefLogps]:
    """The summed response log-probs of both sides of every pair under `model` (packed, `micro_batch_size` pairs
    per forward pass), in input order."""
    out: list[RefLogps] = []
    for chunk in chunks(examples, micro_batch_size):
        packed = pack([e.chosen for e in chunk] + [e.rejected for e in chunk]).to(device)
        with autocast(device, amp):
            logps = packed_response_logps(model, packed).float().cpu()  # (2B,)
        n = len(chunk)
        out += [
            RefLogps(
                id=e.id,
                chosen=logps[i].item(),
                rejected=logps[n + i].item(),
                tokens_chosen=target_tokens(e.chosen),
                tokens_rejected=target_tokens(e.rejected),
            )
            for i, e in enumerate(chunk)
        ]
    return out


def reference_logps_of(
    examples: Sequence[DPOExample],
    reference_model: str,
    path: Path,
    micro_batch_size: int,
    info: DistInfo,
    amp: torch.dtype | None,
) -> dict[str, RefLogps]:
    """The reference's log-probs by label id: read from `path` when it holds every pair with the same token counts
    (a resumed stage), else computed on rank 0 with the reference model, written, and the model freed."""
    if info.is_main and _stored_reference(examples, path) is None:
        log.info("scoring %d pairs with the reference %s", len(examples), reference_model)
        reference = load_causal_lm(reference_model, dtype="float32", device=str(info.device))
        use_packed_attention(reference)
        write_jsonl(path, compute_reference_logps(reference, examples, micro_batch_size, info.device, amp))
        del reference  # only the policy stays in memory while training
        gc.collect()
        if info.device.type == "cuda":
            torch.cuda.empty_cache()
    barrier(info)
    stored = _stored_reference(examples, path)
    if stored is None:
        raise ValueError(f"{path}: the reference log-probs do not match the labelled pairs")
    return stored


def _stored_reference(examples: Sequence[DPOExample], path: Path) -> dict[str, RefLogps] | None:
    if not path.is_file():
        return None
    stored = {r.id: r for r in read_jsonl(path, RefLogps)}
    for e in examples:
        r = stored.get(e.id)
        if r is None or (r.tokens_chosen, r.tokens_rejected) != (target_tokens(e.chosen), target_tokens(e.rejected)):
            log.warning("%s does not match the labelled pairs (pair %s): scoring them again", path, e.id)
            return None
    return stored


def _add_lora(model: torch.nn.Module, cfg: DPOConfig) -> torch.nn.Module:
    """LoRA adapters on every linear layer of the decoder (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    disable_dropout(model)
    return model


# --- stage wrapper ---------------------------------------------------------------------------------------------


def data_parallel(cfg: RunConfig) -> str | None:
    """None: this stage runs data-parallel (a Celery task with RLAIF_TRAIN_DEVICES > 1 starts it on that many
    ranks, rlaif/service/ranks.py)."""
    return None


def run_dpo(ctx: StageContext) -> StageResult:
    """Stage wrapper: this iteration's <run>/<judge>/labels.jsonl + the policy (SFT or the previous DPO) ->
    <run>/<stage>/model, against the frozen reference (the run's SFT model).

    A finished stage (model folder with a manifest) is not trained again: a redelivered task returns its result.
    """
    out_dir = ctx.out_dir
    if read_manifest(out_dir / MODEL_DIR) is not None:
        log.info("%s/%s already has a complete model; skipping training", ctx.run_id, ctx.name)
        remove_resume_states(out_dir, STEPS_DIR)  # (left behind if a worker died right after the save)
        meta = read_meta(out_dir / MODEL_DIR)
        return StageResult(
            stage=ctx.name,
            outputs=[MODEL_DIR, METRICS_FILE, REF_LOGPS_FILE],
            counts=meta.get("counts", {}),
            metrics=meta.get("metrics", {}),
        )
    labels = read_jsonl(ctx.path("labels", LABELS_FILE), LabelRecord)
    policy_model, reference_model = ctx.model("policy"), ctx.model("reference")
    meta = checkpoint_meta(
        "dpo", policy_model, ctx.cfg, ctx.constitution_document(), judge_model=ctx.cfg.judge_model,
        counts={"labels": len(labels)}, run_id=ctx.run_id, policy_optimization="dpo", reference_model=reference_model,
    )  # fmt: skip
    return train_dpo(
        labels, policy_model, ctx.cfg.dpo, out_dir, ctx.cfg.seed, reference_model=reference_model, meta=meta,
        on_step=ctx.hooks.on_step,
    )  # fmt: skip
