"""Stage 6, RL-CAI: PPO on the policy against a score function, with a per-token KL penalty to the SFT model.

Bai et al. 2022, sec. 4 ("Constitutional AI: Reinforcement Learning from AI Feedback"): the SL-CAI model is
fine-tuned by RL against the preference model trained on AI labels. The loop follows cleanrl's ppo.py and
lm-human-preferences as described in "The N Implementation Details of RLHF with PPO" (Huang et al. 2022);
the numbered comments in `rollout()` name those details. Policy and frozen reference start from the SFT model.
The value model starts from the reward model (backbone with its scalar head applied at every token) or, without
one, from the policy with a zero-initialised head (std=0). With `ppo.value_network = "shared"` it is instead a
zero-initialised scalar head on the policy's own transformer, as in lm-human-preferences: half the trainable
weights and optimizer state, and one forward pass gives both log-probs and values. Dropout is off throughout.
With `ppo.lora_rank > 0` (LoRA-PPO) one base model is in memory: the policy is a LoRA adapter on it (peft), the
reference is the same base with the adapter switched off (`AdapterDisabled`, peft `disable_adapter()`), and the
value function is the shared head on it (`ppo.value_network = "shared"` is required; a separate value adapter is
not implemented). Only the adapter and the value head train; step states and kept-best files hold only them, and
the export is the merged policy with the adapter in model/adapter/.
Each update rolls out `ppo.batch_size` episodes and trains on them for `ppo.ppo_epochs` epochs of
`ppo.num_minibatches` minibatches, each accumulated over micro-batches, under bf16 autocast where the hardware
has it (`ppo.dtype`), optionally with gradient checkpointing. Step states every `ppo.checkpoint_every` updates
make it resumable: a resumed run ends with the same weights and metrics as an uninterrupted one with the same seed.

Data-parallel under torchrun (rlaif/distributed.py; gloo on CPU, nccl on GPUs), with the same global batch and
the same minibatches as one process: each rank samples and scores its slice of each update's episodes (every
episode's sampling is seeded by its position in the update's batch, not by rank), the episodes are gathered
so that whitening, the KL controller and every metric see the whole batch, each rank runs its share of every
minibatch's micro-batches, and the gradients are summed over ranks before each optimizer step. Rank 0 writes.

Goodhart monitors (rlaif/evaluation/monitors.py, `eval.monitor`) run after every update: with
`monitor.early_stop` PPO stops once a monitor (KL, length drift, repeated boilerplate) has alerted for
`monitor.patience` updates in a row, and with `monitor.keep_best` set to a metric the saved policy is the one
that sampled the best rollout by that metric (among rollouts without an alert), not the last one.

    rlaif ppo --run-id demo --policy-model <sft model folder> --reward-model <reward model folder>
    torchrun --nproc-per-node 2 -m rlaif ppo --run-id demo     # two data-parallel ranks
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from rlaif.checkpoints import (
    checkpoint_meta,
    load_latest_step_state,
    load_weights,
    read_step_extra,
    remove_resume_states,
    save_hf_checkpoint,
    save_step_state,
    save_weights,
)
from rlaif.config import MonitorConfig, PPOConfig, RunConfig, exact_div
from rlaif.distributed import (
    DistInfo,
    all_reduce_grads,
    all_reduce_max,
    all_reduce_tensor_sum,
    barrier,
    broadcast_object,
    broadcast_parameters,
    gather_rows,
    init_distributed,
)
from rlaif.evaluation.monitors import best_step, boilerplate, early_stop_decision
from rlaif.generation.backend_choice import rollout_backend
from rlaif.generation.common import check_context, context_length, derive_seed
from rlaif.generation.vllm_rollout import VLLMRolloutSampler, rollout_sampler
from rlaif.metrics_log import MetricsLog
from rlaif.modeling import (
    ModelError,
    disable_dropout,
    enable_activation_checkpointing,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)
from rlaif.records import PromptItem, SFTExample
from rlaif.rl.advantages import gae, masked_mean, masked_var, masked_whiten
from rlaif.rl.kl import kl_per_token, make_kl_controller
from rlaif.rl.losses import clipped_value_loss, entropy_from_logits, ppo_policy_loss
from rlaif.rl.sequences import (
    forward_logits,
    logprobs_from_logits,
    position_ids_from_mask,
    sample_responses,
    truncate_at_stop_token,
)
from rlaif.rl.types import PPOStats, Rollout
from rlaif.scorers import ScoreFn
from rlaif.stages import (
    METRICS_FILE,
    MODEL_DIR,
    PROMPTS_FILE,
    SFT_DATA_FILE,
    STEPS_DIR,
    StageResult,
)
from rlaif.stages.contract import StageContext, StepCallback
from rlaif.stages.reward_model import reward_score_fn
from rlaif.store import StoreError, read_jsonl, read_manifest
from rlaif.training import (
    IGNORE_INDEX,
    Batch,
    TokenizedExample,
    append_metrics,
    autocast,
    autocast_dtype,
    chat_prompt_ids,
    collate,
    epoch_order,
    masked_lm_loss_sum,
    seed_everything,
    target_tokens,
    tokenize_chat,
    truncate_metrics,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"  # the episodes of every `ppo.sample_every`-th update: prompt, response, score, kl
BEST_DIR = "best"  # policy weights kept for monitor.keep_best while training (deleted with steps/ at the end)
# Metrics that PPO logs itself and that monitor.keep_best can pick by (eval/judge_score comes from evaluation).
KEEP_BEST_METRICS = ("objective/scores", "objective/rlhf_reward")


def train_ppo(
    prompts: Sequence[str],
    policy_model: str,
    score_fn: ScoreFn,
    cfg: PPOConfig,
    out_dir: Path,
    seed: int,
    value_model: str | None = None,
    ptx_examples: Sequence[SFTExample] | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_step: StepCallback | None = None,
    monitor: MonitorConfig | None = None,
) -> StageResult:
    """PPO of `policy_model` on `prompts`; writes out_dir/model (HF folder), out_dir/steps, out_dir/metrics.jsonl.

    `value_model` is the reward model folder the value model starts from (None: the policy with a zero head).
    `ptx_examples` are the SFT examples of the PPO-ptx loss (needed when ppo.ptx_coef > 0). `on_step(update, num_updates,
    metrics)` is called after every update (and after that update's checkpoint): a worker heartbeats from it,
    and an exception raised in it stops training like a crash (resume picks up from the newest step state).
    `meta` (lineage from `checkpoint_meta`) is extended with counts and final metrics.

    `monitor` (the run's `eval.monitor`; None = defaults: no early stop, keep the last policy) is checked after
    every update. An early stop and the kept update are reported in the result's `extra` and in meta.json.
    Metric record k describes the rollout of update k, sampled by the policy *before* update k trained on it;
    keep-best therefore keeps that policy (for k = 1, the starting policy), whose behaviour the record measured.

    Under torchrun every rank calls this with the same arguments (see the module docstring); `ppo.batch_size` is
    the global batch, and the run gives the weights and metrics of one process up to float rounding.
    """
    # --- setup ----------------------------------------------------------------------------------------------
    info = init_distributed()
    ranks = _rank_split(cfg, info.world_size)
    seed_everything(seed)  # the same seed on every rank: LoRA's random init is the same everywhere
    out_dir = Path(out_dir)
    steps_dir, samples_path = out_dir / STEPS_DIR, out_dir / SAMPLES_FILE
    best_dir = out_dir / BEST_DIR
    monitor = monitor or MonitorConfig()
    keep_best = monitor.keep_best in KEEP_BEST_METRICS
    if monitor.keep_best != "last" and not keep_best:
        log.warning("eval.monitor.keep_best=%s is not logged during PPO: keeping the last policy", monitor.keep_best)
    device = info.device
    tokenizer = load_tokenizer(policy_model)
    prompts, queries, dropped = _encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    ptx_data = _tokenize_ptx(tokenizer, ptx_examples, cfg)

    policy = load_causal_lm(policy_model, dtype="float32", device=str(device))
    check_context(queries, cfg.response_length, context_length(policy.config, tokenizer))
    lora = cfg.lora_rank > 0
    if lora:  # one base model: the policy is an adapter on it, the reference is it with the adapter off
        policy = _add_lora(policy, cfg)
        ref_policy: Reference = AdapterDisabled(policy)
    else:
        ref_policy = load_causal_lm(policy_model, dtype="float32", device=str(device)).requires_grad_(False)
    if cfg.value_network == "shared":
        value_net: ValueNet = ValueHead(policy.config.hidden_size).to(device)
    else:
        value_net = load_value_model(value_model or policy_model, device, zero_head=value_model is None)
    model = torch.nn.ModuleDict({"policy": policy, "value": value_net})  # one optimizer, one step state
    if cfg.gradient_checkpointing:
        for net in (policy, value_net):
            if not isinstance(net, ValueHead):  # a head has no layers to recompute
                enable_activation_checkpointing(net)
    # Adam eps 1e-5 as in lm-human-preferences (the N-details blog: TF's default, not PyTorch's 1e-8). Fused: one
    # kernel per step instead of ~10 elementwise passes, each with a parameter-sized temporary.
    trainable = [p for p in model.parameters() if p.requires_grad]  # everything, or the adapter and value head
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0, fused=True)
    lr_factor = functools.partial(_lr_factor, num_updates=cfg.num_updates, anneal=cfg.anneal_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    kl_ctl = make_kl_controller(cfg.kl_coef, cfg.adaptive_kl, cfg.kl_target, cfg.kl_horizon)
    # Every rank loads the same step state. Its RNG states are rank 0's, which is enough: nothing in the loop
    # draws from the global RNGs (sampling, minibatch and PPO-ptx orders use generators seeded per update).
    start_update = load_latest_step_state(steps_dir, model, optimizer, scheduler) or 0
    if start_update:
        kl_ctl.load_state_dict(read_step_extra(steps_dir, start_update)["kl_ctl"])
    broadcast_parameters(trainable, info)  # identical already (same files, same seed); DDP's guarantee, kept
    # metrics.jsonl, TensorBoard, MLflow; a resumed run rewrites what came after its step state. Rank 0 writes,
    # and sends the kept records to the others: early stop and keep-best must decide alike on every rank.
    metrics_log = MetricsLog(out_dir, "ppo", cfg, meta, start_update, enabled=info.is_main)
    history = broadcast_object(list(metrics_log.kept), info)
    if info.is_main:
        truncate_metrics(samples_path, start_update)
        # Best-policy files of rolled-back updates are redone; the one the step state relies on is kept.
        _prune_best(best_dir, keep={s for s in _best_files(best_dir) if s <= start_update})
    checkpoint_best = best_step(history, monitor) if keep_best and history else None
    # ppo.rollout_backend = vllm: an in-process vLLM engine samples the rollouts (None: the policy samples them).
    if cfg.rollout_backend == "vllm" and info.world_size > 1:
        raise ValueError(
            "ppo.rollout_backend vllm runs in one process: use rollout_backend transformers under torchrun"
        )
    backend = rollout_backend(cfg.rollout_backend, cfg.num_updates, info.world_size)  # 'auto' resolved, and why
    log.info("PPO rollouts: %s", backend.reason)
    sampler = rollout_sampler(
        policy_model, policy, tokenizer.eos_token_id, tokenizer.pad_token_id, cfg, backend.backend
    )
    log.info(
        "PPO of %s (%s) on %d prompts (%d too long): %d updates of %d episodes (%d per rank x %d ranks), %d epochs "
        "x %d minibatches of %d, value model from %s, autocast %s, start at update %d",
        policy_model, f"LoRA rank {cfg.lora_rank}, reference = base without adapter" if lora else "full fine-tuning",
        len(queries), dropped, cfg.num_updates, cfg.batch_size, ranks.per_rank, info.world_size, cfg.ppo_epochs,
        cfg.num_minibatches, cfg.minibatch_size, _value_source(cfg, policy_model, value_model),
        autocast_dtype(cfg.dtype, device), start_update,
    )  # fmt: skip

    # --- loop -----------------------------------------------------------------------------------------------
    bar = tqdm(total=cfg.num_updates, initial=start_update, desc="ppo", disable=not (progress and info.is_main))
    metrics: dict[str, float] = {}
    extra: dict[str, Any] = {}
    updates_done = start_update
    for update in range(start_update, cfg.num_updates):
        indices, b_queries, b_query_mask = _query_batch(queries, update, cfg, seed, tokenizer.pad_token_id)
        b_prompts = [prompts[i] for i in indices]
        mine = ranks.rows(info.rank)  # this rank's episodes of the global batch; one process: all of them
        # One generator per episode, seeded by its row in the update's batch: the same text on any number of ranks.
        generators = [torch.Generator(device).manual_seed(derive_seed(seed, "rollout", update, row)) for row in mine]
        kl_coef = kl_ctl.value
        data = rollout(policy, ref_policy, value_net, tokenizer, b_prompts[mine.start : mine.stop],
                       b_queries[mine.start : mine.stop].to(device), b_query_mask[mine.start : mine.stop].to(device),
                       score_fn, kl_coef, cfg, generators, info, sampler)  # fmt: skip
        kl_ctl.update(data.kl.sum(1).mean().item(), cfg.batch_size)
        record = rollout_metrics(update + 1, data, kl_coef, response_texts(tokenizer, data), cfg)
        # The monitors and the keep-best metrics read only rollout metrics, so `record` decides as the full one will.
        best = best_step([*history, record], monitor) if keep_best else None
        if best == update + 1 and info.is_main:  # the best rollout so far: keep the policy that sampled it
            _save_best(policy, best_dir, update + 1, trainable_only=lora)
        ptx_batches = _ptx_batches(ptx_data, update, cfg, seed, tokenizer.pad_token_id, device)
        minibatch_generator = torch.Generator().manual_seed(derive_seed(seed, "minibatches", update))
        with training_mode(policy, value_net):
            stats = ppo_update(policy, value_net, optimizer, data, cfg, minibatch_generator, ptx_batches, info)
        if sampler is not None:  # the next rollout samples from the policy this update produced
            sampler.load_policy(policy)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        metrics = {**record, **update_metrics(stats, lr, cfg)}
        metrics_log.log(metrics)
        history.append(metrics)
        updates_done = update + 1
        decision = early_stop_decision(history, monitor)
        if (update + 1) % cfg.sample_every == 0 and info.is_main:
            log_samples(samples_path, update + 1, b_prompts, data, tokenizer, progress)
        if (update + 1) % cfg.checkpoint_every == 0 and update + 1 < cfg.num_updates and not decision.stop:
            if info.is_main:
                save_step_state(steps_dir, update + 1, model, optimizer, scheduler, {"kl_ctl": kl_ctl.state_dict()},
                                trainable_only=lora)  # fmt: skip
            barrier(info)  # on_step (a worker's heartbeat) runs once the step state is on disk
            checkpoint_best = best
        if keep_best and info.is_main:  # the current best, and the one a resume from the newest step state needs
            _prune_best(best_dir, keep={best, checkpoint_best})
        bar.update(1)
        bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
        if on_step is not None:
            on_step(update + 1, cfg.num_updates, metrics)
        if decision.stop:
            log.warning(
                "early stop after update %d of %d: %s", update + 1, cfg.num_updates, "; ".join(decision.reasons)
            )
            extra["early_stop"] = {"step": update + 1, "reasons": decision.reasons}
            break
    bar.close()
    metrics_log.close()
    if sampler is not None:
        sampler.close()
    if keep_best and history:
        kept = best_step(history, monitor)
        if info.is_main:  # only rank 0 saves the model (and only it wrote the best-policy files)
            _load_best(policy, best_dir, kept, trainable_only=lora)
        metrics = next(r for r in history if r["step"] == kept)
        log.info("keeping the policy that sampled update %d (best %s %.4f)", kept, monitor.keep_best,
                 metrics[monitor.keep_best])  # fmt: skip
        extra["keep_best"] = {"metric": monitor.keep_best, "step": kept, "value": metrics[monitor.keep_best],
                              "updates_applied": kept - 1}  # fmt: skip

    # --- save -----------------------------------------------------------------------------------------------
    counts = {
        "prompts": len(queries),
        "dropped_too_long": dropped,
        "ptx_examples": len(ptx_data),
        "updates": updates_done,
        "episodes": updates_done * cfg.batch_size,
    }
    final = {k: v for k, v in metrics.items() if k.split("/")[0] in ("objective", "policy", "loss", "val")}
    full_meta = {**(meta or {}), "counts": {**(meta or {}).get("counts", {}), **counts}, "metrics": final}
    if extra:
        full_meta["monitor"] = extra
    full_meta["rollout"] = backend.as_extra()
    full_meta.setdefault("stage", "ppo")
    full_meta.setdefault("base_model", policy_model)
    if info.is_main:
        save_hf_checkpoint(policy, tokenizer, out_dir / MODEL_DIR, full_meta)
        remove_resume_states(out_dir, STEPS_DIR, BEST_DIR)  # the finished model supersedes the resume states
    barrier(info)  # no rank returns (and reports the stage done) before the model is on disk
    return StageResult(
        stage="ppo",
        outputs=[MODEL_DIR, METRICS_FILE, SAMPLES_FILE],
        counts=counts,
        metrics=final,
        extra={**extra, **backend.as_extra()},
    )


@torch.no_grad()
def rollout(
    policy: PreTrainedModel,
    ref_policy: Reference,
    value_net: ValueNet,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    score_fn: ScoreFn,
    kl_coef: float,
    cfg: PPOConfig,
    generator: torch.Generator | Sequence[torch.Generator],
    info: DistInfo | None = None,
    sampler: VLLMRolloutSampler | None = None,
) -> Rollout:
    """Sample one response per query row, score it, and compute rewards, advantages and returns.

    queries, query_mask: (B, Q) left-padded chat prompts; `prompts` are their texts (for the score function).
    `generator`: one for the batch, or one per row (`sample_responses`). Sampling and the three forward passes
    run under `ppo.dtype` autocast, as the update's forward passes do. Data-parallel (`info` with several ranks):
    each rank passes its rows, and the returned Rollout holds every rank's rows in rank order, (world x B, ...).
    With a vLLM `sampler` the engine samples instead of the policy; the log-probs below are still the policy's.
    """
    stop_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    amp = autocast_dtype(cfg.dtype, queries.device)
    sampler_logprobs = None
    if sampler is None:
        with autocast(queries.device, amp):
            responses = sample_responses(
                policy, queries, query_mask, cfg.response_length, cfg.temperature, stop_id, generator
            )
    else:
        responses, sampler_logprobs = sampler.sample(queries, query_mask, generator)  # (B, R), (B, R)
    # 1. truncate at stop token: what was sampled after the first EOS is padding, outside every loss and reward
    responses, response_mask = truncate_at_stop_token(responses, stop_id, pad_id)  # (B, R)
    query_responses = torch.cat([queries, responses], dim=1)  # (B, Q + R)
    attention_mask = torch.cat([query_mask.long(), torch.ones_like(responses)], dim=1)
    with autocast(queries.device, amp):
        logprobs, ref_logprobs, values = _score_tokens(
            policy, ref_policy, value_net, query_responses, attention_mask, queries.shape[1], cfg
        )
    # 2. score with RM: the score function sees the decoded text, as a reward model or a rule would
    texts = decode_responses(tokenizer, responses, response_mask)
    scores = score_fn(prompts, texts).to(device=responses.device, dtype=torch.float32)  # (B,)
    if scores.shape != (len(prompts),):
        raise ValueError(
            f"score_fn returned shape {tuple(scores.shape)} for {len(prompts)} responses; want ({len(prompts)},)"
        )
    # 3. penalise missing EOS: a response cut at the length limit is penalised, so rambling does not pay
    contains_eos = ((responses == stop_id) & response_mask).any(dim=1)  # (B,)
    penalised = torch.where(contains_eos, scores, scores - cfg.missing_eos_penalty)
    # 4. per-token KL reward: -beta * KL at every token, the sequence's score added at its last token
    kl = kl_per_token(logprobs, ref_logprobs, cfg.kl_estimator) * response_mask  # (B, R)
    rewards = -kl_coef * kl
    last_token = response_mask.sum(dim=1) - 1
    rewards[torch.arange(len(prompts), device=rewards.device), last_token] += penalised
    # gather (data-parallel): from here on every rank holds the whole batch, so whitening uses the global
    # statistics and the update cuts the same minibatches, exactly as one process would
    episodes = _gather_episodes(
        (query_responses, attention_mask, logprobs, ref_logprobs, values, rewards, response_mask, scores,
         contains_eos, kl), pad_id, info,
    )  # fmt: skip
    query_responses, attention_mask, logprobs, ref_logprobs, values, rewards, response_mask, scores = episodes[:8]
    contains_eos, kl = episodes[8:]
    # 5. whiten rewards (optional): scale only, shift_mean=False, so the sign of a reward keeps its meaning
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, response_mask, shift_mean=False) * response_mask
    # 6. GAE: values are 0 after the end so the last token bootstraps from 0; advantages whitened over the batch
    values = values * response_mask
    advantages, returns = gae(rewards, values, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, response_mask, shift_mean=True) * response_mask
    return Rollout(
        query_responses=query_responses, attention_mask=attention_mask, logprobs=logprobs, ref_logprobs=ref_logprobs,
        values=values, rewards=rewards, advantages=advantages, returns=returns, response_mask=response_mask,
        scores=scores, contains_eos=contains_eos, kl=kl, sampler_logprobs=sampler_logprobs,
    )  # fmt: skip


def ppo_update(
    policy: PreTrainedModel,
    value_net: ValueNet,
    optimizer: torch.optim.Optimizer,
    data: Rollout,
    cfg: PPOConfig,
    generator: torch.Generator,
    ptx_batches: list[list[Batch]],
    info: DistInfo | None = None,
) -> PPOStats:
    """`ppo_epochs` passes over the rollout in shuffled minibatches, one optimizer step per minibatch.

    Stops the remaining epochs early when a minibatch's approx. KL exceeds `ppo.target_approxkl`.
    Data-parallel (`info` with several ranks, `data` the gathered global rollout): the minibatches are those of
    one process; rank r runs micro-batches r, r + world, ... of each, the PPO-ptx batch of minibatch m runs on
    rank m % world, and the gradients are summed over ranks before the optimizer step (each micro-batch's loss
    is already weighted by its share of the minibatch, so the sum is the minibatch's gradient).
    """
    info = info or DistInfo(0, 1, 0, data.query_responses.device)
    stats = PPOStats.empty(cfg.ppo_epochs, cfg.num_minibatches)
    micro_size = min(cfg.micro_batch_size, cfg.minibatch_size)
    weight = micro_size / cfg.minibatch_size  # each micro-batch's share of the minibatch loss
    trainable = [p for net in (policy, value_net) for p in net.parameters() if p.requires_grad]
    for epoch in range(cfg.ppo_epochs):
        b_inds = torch.randperm(cfg.batch_size, generator=generator)
        for minibatch in range(cfg.num_minibatches):
            mb_start = minibatch * cfg.minibatch_size
            minibatch_inds = b_inds[mb_start : mb_start + cfg.minibatch_size]
            micro_stats = []
            for micro_start in range(info.rank * micro_size, cfg.minibatch_size, info.world_size * micro_size):
                mb_inds = minibatch_inds[micro_start : micro_start + micro_size]
                micro_stats.append(microbatch_step(policy, value_net, data, mb_inds, cfg, weight))
            ptx_here = bool(ptx_batches) and minibatch % info.world_size == info.rank
            ptx_loss = ptx_step(policy, ptx_batches[epoch][minibatch], cfg) if ptx_here else None
            all_reduce_grads(trainable, info)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            mb_stats, ptx_loss = _minibatch_stats(micro_stats, ptx_loss, bool(ptx_batches), cfg, info)
            _record(stats, epoch, minibatch, mb_stats, ptx_loss)
            if cfg.target_approxkl is not None and stats.approxkl[epoch, minibatch] > cfg.target_approxkl:
                log.info("approx. KL %.4f > target: early stop in epoch %d", stats.approxkl[epoch, minibatch], epoch)
                return stats
    return stats


def microbatch_step(
    policy: PreTrainedModel,
    value_net: ValueNet,
    data: Rollout,
    mb_inds: torch.Tensor,
    cfg: PPOConfig,
    weight: float,
) -> torch.Tensor:
    """Forward and backward of one micro-batch (loss scaled by its share of the minibatch).

    Returns the detached statistics in PPOStats field order: approxkl, clipfrac, pg_loss, vf_loss, vf_clipfrac,
    entropy, ratio.
    """
    context = data.context_length
    mb_query_responses, mb_attention_mask = data.query_responses[mb_inds], data.attention_mask[mb_inds]
    mb_responses = mb_query_responses[:, context:]
    mb_mask = data.response_mask[mb_inds]
    device = mb_query_responses.device
    with autocast(device, autocast_dtype(cfg.dtype, device)):  # the rollout's precision, so the first ratio is 1
        logits, vpred = forward_policy_values(policy, value_net, mb_query_responses, mb_attention_mask, context)
    new_logprobs = logprobs_from_logits(logits, mb_responses, cfg.temperature)
    pg = ppo_policy_loss(new_logprobs, data.logprobs[mb_inds], data.advantages[mb_inds], mb_mask, cfg.cliprange)
    vf = clipped_value_loss(vpred, data.values[mb_inds], data.returns[mb_inds], mb_mask, cfg.cliprange_value)
    entropy_logits = logits if cfg.entropy_coef > 0 else logits.detach()  # no graph for an unused bonus
    entropy = masked_mean(entropy_from_logits(entropy_logits, cfg.temperature), mb_mask)
    loss = pg.loss + cfg.vf_coef * vf.loss - cfg.entropy_coef * entropy
    (loss * weight).backward()
    return torch.stack(
        [pg.approxkl, pg.clipfrac, pg.loss.detach(), vf.loss.detach(), vf.clipfrac, entropy.detach(), pg.ratio]
    )


def ptx_step(policy: PreTrainedModel, batch: Batch, cfg: PPOConfig) -> torch.Tensor:
    """PPO-ptx (InstructGPT): gamma x the token-mean LM loss on SFT examples, added to this minibatch's gradient."""
    n_targets = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    device = batch.input_ids.device
    with autocast(device, autocast_dtype(cfg.dtype, device)):
        loss = masked_lm_loss_sum(policy, batch) / max(n_targets, 1)
    (cfg.ptx_coef * loss).backward()
    return loss.detach()


# --- models -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def training_mode(*nets: torch.nn.Module) -> Iterator[None]:
    """train() for an update, eval() after. Dropout is off either way (disable_dropout), so the mode only switches
    transformers' gradient checkpointing (ppo.gradient_checkpointing), which runs in training mode only and
    would turn off the KV cache that sampling needs."""
    for net in nets:
        net.train()
    try:
        yield
    finally:
        for net in nets:
            net.eval()


def _add_lora(model: PreTrainedModel, cfg: PPOConfig) -> PreTrainedModel:
    """LoRA adapters on every linear layer of the decoder (peft); only the adapters train. LoRA B starts at zero,
    so the adapted policy starts equal to its base: the first rollout's KL to the reference is 0."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    disable_dropout(model)
    return model


class AdapterDisabled(torch.nn.Module):
    """The frozen reference of LoRA-PPO: the policy's own base model with its adapter switched off.

    Called like a causal LM (`forward_logits`), it runs the policy under peft's `disable_adapter()`, where every
    LoRA layer returns its base layer's output: the base model's exact log-probs, with no second copy in memory.
    """

    def __init__(self, policy: PreTrainedModel) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, **inputs: Any) -> Any:
        with self.policy.disable_adapter():
            return self.policy(**inputs)


# The KL reference: a frozen copy of the starting policy, or (LoRA) the policy's base with the adapter off.
Reference: TypeAlias = "PreTrainedModel | AdapterDisabled"


def load_value_model(name: str, device: torch.device, zero_head: bool) -> PreTrainedModel:
    """A sequence-classification model with one output, used per token as V(s_t).

    From a reward-model folder the backbone and the trained scalar head are kept (the value model starts from
    the reward model, as in lm-human-preferences). From a causal LM folder transformers adds a fresh head,
    which is zeroed (N details: value head initialised with std=0), so the first values are exactly 0.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a value model from {name!r} ({path}): {exc}") from exc
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ModelError(f"{name!r}: expected a sequence-classification model with a one-output `score` head")
    if zero_head:
        torch.nn.init.zeros_(head.weight)
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)
    disable_dropout(model)
    model.eval()
    return model.to(device)


class ValueHead(torch.nn.Module):
    """V(s_t) as a scalar head on the policy's own transformer (ppo.value_network = "shared").

    lm-human-preferences' policy is one transformer with an LM head and a scalar `value` head; the value loss
    trains the shared transformer too. Zero-initialised (N details: value head std=0): the first values are 0.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.score.weight)
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden).squeeze(-1).float()  # (B, T, d) -> (B, T)


# The value network: a sequence-classification model of its own, or a head on the policy (shared).
ValueNet: TypeAlias = "PreTrainedModel | ValueHead"


def _value_source(cfg: PPOConfig, policy_model: str, value_model: str | None) -> str:
    if cfg.value_network == "shared":
        return "a zero head on the policy's transformer (shared)"
    return value_model or f"{policy_model} (zero head)"


def forward_policy_values(
    policy: PreTrainedModel,
    value_net: ValueNet,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy logits predicting each response token (B, R, V) and the values before each one (B, R).

    Shared value head: one pass of the policy's transformer feeds both heads. The LM head runs on the same R + 1
    last positions as `forward_logits` (then drops the last), so the two paths do identical matmuls.
    """
    response_length = query_responses.shape[1] - context
    if isinstance(value_net, ValueHead):
        hidden = policy.get_decoder()(
            input_ids=query_responses,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (B, T, d)
        logits = policy.get_output_embeddings()(hidden[:, context - 1 :])[:, :-1]  # (B, R, V)
        return logits, value_net(hidden[:, context - 1 : -1])
    logits = forward_logits(policy, query_responses, attention_mask, response_length + 1)[:, :-1]  # (B, R, V)
    return logits, forward_values(value_net, query_responses, attention_mask)[:, context - 1 : -1]


def forward_values(value_net: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at every position (not only the last, as the classifier's own forward does): (B, T)."""
    backbone = getattr(value_net, value_net.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return value_net.score(hidden).squeeze(-1).float()


def _score_tokens(
    policy: PreTrainedModel,
    ref_policy: Reference,
    value_net: ValueNet,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context: int,
    cfg: PPOConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, ref_logprobs, values), each (B, R), in micro-batches of the training size.

    The same micro-batch size and the same `forward_policy_values` call as `microbatch_step`, so before the first
    optimizer step the training log-probs equal these exactly (ratio 1).
    """
    response_length = query_responses.shape[1] - context
    micro_size = min(cfg.micro_batch_size, cfg.minibatch_size)
    logprobs, ref_logprobs, values = [], [], []
    for start in range(0, query_responses.shape[0], micro_size):
        mb_query_responses = query_responses[start : start + micro_size]
        mb_attention_mask = attention_mask[start : start + micro_size]
        mb_responses = mb_query_responses[:, context:]
        logits, mb_values = forward_policy_values(policy, value_net, mb_query_responses, mb_attention_mask, context)
        logprobs.append(logprobs_from_logits(logits, mb_responses, cfg.temperature))
        values.append(mb_values)
        ref_logits = forward_logits(ref_policy, mb_query_responses, mb_attention_mask, response_length + 1)[:, :-1]
        ref_logprobs.append(logprobs_from_logits(ref_logits, mb_responses, cfg.temperature))
    return torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)


# --- data parallelism -------------------------------------------------------------------------------------------


class RankSplit(NamedTuple):
    """How an update's global batch is dealt: `per_rank` consecutive episodes per rank (rank r: rows r x per_rank
    onwards), and each minibatch's micro-batches round-robin over the ranks."""

    world_size: int
    per_rank: int

    def rows(self, rank: int) -> range:
        return range(rank * self.per_rank, (rank + 1) * self.per_rank)


def _rank_split(cfg: PPOConfig, world_size: int) -> RankSplit:
    """Check that the global batch and every minibatch's micro-batches divide over the ranks (errors name the fields).

    Equal shares keep every rank in step (each takes part in every collective) and busy for the same time.
    """
    per_rank = exact_div(
        cfg.batch_size, world_size, "ppo.batch_size", "world size",
        "ppo.batch_size = ppo.prompts_per_step x ppo.samples_per_prompt",
    )  # fmt: skip
    minibatch, micro_size = cfg.minibatch_size, min(cfg.micro_batch_size, cfg.minibatch_size)
    whole = "each rank runs whole micro-batches of every minibatch"
    if minibatch % world_size:
        raise ValueError(
            f"ppo.minibatch_size {minibatch} (ppo.batch_size {cfg.batch_size} / ppo.num_minibatches "
            f"{cfg.num_minibatches}) is not divisible by world size {world_size}: {whole}; change ppo.num_minibatches"
        )
    if (minibatch // micro_size) % world_size:
        raise ValueError(
            f"ppo.minibatch_size {minibatch} / ppo.micro_batch_size {micro_size} = {minibatch // micro_size} "
            f"micro-batches per minibatch is not divisible by world size {world_size}: {whole}; set "
            f"ppo.micro_batch_size to a divisor of {minibatch // world_size}"
        )
    return RankSplit(world_size, per_rank)


def _gather_episodes(
    episodes: tuple[torch.Tensor, ...], pad_id: int, info: DistInfo | None
) -> tuple[torch.Tensor, ...]:
    """Every rank's episodes, in rank order: the rollout's tensors as listed in `rollout()`, (B, ...) -> (W x B, ...).

    The queries already share one width (the global batch's, `_query_batch`); the responses are right-padded to
    the longest rank's, as one process's sampler would have run on: pad tokens attended (like the tokens after
    an EOS), outside the response mask, zeros in the per-token floats.
    """
    if info is None or info.world_size == 1:
        return episodes
    query_responses, attention_mask, logprobs, ref_logprobs, values, rewards, response_mask, scores, eos, kl = episodes
    width = all_reduce_max(response_mask.shape[1], info)
    extra = width - response_mask.shape[1]

    def pad(tensor: torch.Tensor, value: float | bool) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, extra), value=value)

    padded = (pad(query_responses, pad_id), pad(attention_mask, 1), *(pad(t, 0.0) for t in (logprobs, ref_logprobs,
              values, rewards)), pad(response_mask, False), scores, eos, pad(kl, 0.0))  # fmt: skip
    return tuple(gather_rows(padded, info))


def _minibatch_stats(
    micro_stats: list[torch.Tensor], ptx_loss: torch.Tensor | None, ptx: bool, cfg: PPOConfig, info: DistInfo
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The minibatch's statistics, the same on every rank: the mean over all its micro-batches (of every rank), and
    the PPO-ptx loss of the rank that ran it. Every rank must agree, or the approx-KL early stop would not."""
    micro_batches = cfg.minibatch_size // min(cfg.micro_batch_size, cfg.minibatch_size)
    if info.world_size == 1:
        return torch.stack(micro_stats).mean(dim=0), ptx_loss
    local = torch.stack(micro_stats).sum(dim=0)
    ptx_part = ptx_loss.reshape(1) if ptx_loss is not None else torch.zeros(1)
    total = all_reduce_tensor_sum(torch.cat([local, ptx_part.to(local)]), info)
    return total[:-1] / micro_batches, total[-1] if ptx else None


# --- data -------------------------------------------------------------------------------------------------------


def _encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_tokens: int
) -> tuple[list[str], list[list[int]], int]:
    """(kept prompt texts, their chat-templated token ids, number dropped for being longer than max_tokens).

    Prompts are templated exactly as SFT trained on them (`chat_prompt_ids`: user turn + assistant header).
    """
    kept_prompts, queries = [], []
    for prompt in prompts:
        ids = chat_prompt_ids(tokenizer, prompt)
        if len(ids) <= max_tokens:
            kept_prompts.append(prompt)
            queries.append(ids)
    dropped = len(prompts) - len(queries)
    if dropped:
        log.warning("left out %d of %d prompts longer than ppo.max_prompt_tokens=%d", dropped, len(prompts), max_tokens)
    if not queries:
        raise ValueError(
            f"no PPO prompts: all {len(prompts)} are longer than ppo.max_prompt_tokens={max_tokens} tokens"
        )
    return kept_prompts, queries, dropped


def _query_batch(
    queries: list[list[int]], update: int, cfg: PPOConfig, seed: int, pad_token_id: int
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Prompt indices of update `update`, each repeated samples_per_prompt times, left-padded: (B,), (B, Q), (B, Q).

    Prompts are consumed in epochs of seeded permutations (`epoch_order`), so update u draws the same prompts
    whether or not the run was resumed before it.
    """
    n = len(queries)
    positions = range(update * cfg.prompts_per_step, (update + 1) * cfg.prompts_per_step)
    orders = {epoch: epoch_order(n, seed, epoch) for epoch in {p // n for p in positions}}
    indices = [orders[p // n][p % n] for p in positions for _ in range(cfg.samples_per_prompt)]
    width = max(len(queries[i]) for i in indices)
    b_queries = torch.tensor([[pad_token_id] * (width - len(queries[i])) + queries[i] for i in indices])
    b_query_mask = torch.tensor([[0] * (width - len(queries[i])) + [1] * len(queries[i]) for i in indices])
    return indices, b_queries, b_query_mask


def _tokenize_ptx(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[SFTExample] | None, cfg: PPOConfig
) -> list[TokenizedExample]:
    """SFT examples for the PPO-ptx loss, tokenised as SFT does; empty when ppo.ptx_coef is 0."""
    if cfg.ptx_coef <= 0:
        return []
    if not examples:
        raise ValueError(f"ppo.ptx_coef is {cfg.ptx_coef} but no SFT examples were given for the PPO-ptx loss")
    max_length = cfg.max_prompt_tokens + cfg.response_length
    data = [tokenize_chat(tokenizer, e.prompt, e.response, max_length) for e in examples]
    data = [e for e in data if target_tokens(e) > 0]
    if not data:
        raise ValueError(f"PPO-ptx: every SFT example's prompt is longer than {max_length} tokens")
    return data


def _ptx_batches(
    data: list[TokenizedExample], update: int, cfg: PPOConfig, seed: int, pad_token_id: int, device: torch.device
) -> list[list[Batch]]:
    """One micro-batch of SFT examples per [epoch][minibatch] of this update, walking a seeded order of the data."""
    if not data:
        return []
    size = min(cfg.micro_batch_size, len(data))
    order = epoch_order(len(data), seed, 0)
    first = update * cfg.ppo_epochs * cfg.num_minibatches * size

    def batch(step: int) -> Batch:
        chunk = [data[order[(first + step * size + k) % len(data)]] for k in range(size)]
        return Batch(*(t.to(device) for t in collate(chunk, pad_token_id)))

    m = cfg.num_minibatches
    return [[batch(epoch * m + minibatch) for minibatch in range(m)] for epoch in range(cfg.ppo_epochs)]


def _lr_factor(update: int, num_updates: int, anneal: bool) -> float:
    """Learning-rate multiplier of update `update` (0-based): 1 - update / num_updates when annealing, else 1."""
    return 1.0 - update / num_updates if anneal else 1.0


# --- the kept best policy --------------------------------------------------------------------------------------
# monitor.keep_best needs the weights of an earlier policy when training ends. Step states (full optimizer state,
# ~3 GB on the 135M model) are too heavy to keep for that, so the policy's weights alone (~0.5 GB; with LoRA only
# the adapter) are written to best/update-<k>.safetensors when update k's rollout is the best so far. At most two
# files live at once: the current best and the best as of the newest step state, which a resume comes back to.


def _best_path(best_dir: Path, step: int) -> Path:
    return best_dir / f"update-{step:08d}.safetensors"


def _best_files(best_dir: Path) -> list[int]:
    """Updates with a kept policy in best_dir, ascending."""
    if not best_dir.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in best_dir.glob("update-*.safetensors"))


def _save_best(policy: PreTrainedModel, best_dir: Path, step: int, trainable_only: bool) -> None:
    """Write the policy's weights (trainable_only: its adapter) as the policy that sampled update `step`'s rollout
    (atomically)."""
    best_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".update-", suffix=".tmp", dir=best_dir)
    os.close(fd)
    try:
        save_weights(policy, Path(tmp), trainable_only)
        os.replace(tmp, _best_path(best_dir, step))
    finally:
        Path(tmp).unlink(missing_ok=True)


def _prune_best(best_dir: Path, keep: set[int | None]) -> None:
    for step in _best_files(best_dir):
        if step not in keep:
            _best_path(best_dir, step).unlink(missing_ok=True)


def _load_best(policy: PreTrainedModel, best_dir: Path, step: int, trainable_only: bool) -> None:
    path = _best_path(best_dir, step)
    if not path.is_file():
        raise StoreError(f"{path} is missing: cannot restore the best policy (update {step}) for monitor.keep_best")
    load_weights(policy, path, trainable_only)


# --- metrics and samples ----------------------------------------------------------------------------------------


def _record(stats: PPOStats, epoch: int, minibatch: int, values: torch.Tensor, ptx_loss: torch.Tensor | None) -> None:
    """Write one minibatch's statistics (PPOStats field order, ptx_loss last) into the (E, M) tables."""
    for table, value in zip(stats[:-1], values, strict=True):
        table[epoch, minibatch] = value
    if ptx_loss is not None:
        stats.ptx_loss[epoch, minibatch] = ptx_loss


def rollout_metrics(step: int, data: Rollout, kl_coef: float, texts: list[str], cfg: PPOConfig) -> dict[str, float]:
    """Namespaced metrics of one update's rollout (style guide 20; names as in TRL / lm-human-preferences).

    Everything the Goodhart monitors read is here, known before the update trains on the rollout.
    `val/boilerplate_fraction` is the share of the responses that contain the most repeated sentence.
    """
    mask = data.response_mask
    sequence_kl = data.kl.sum(dim=1)  # (B,)
    non_score_reward = -kl_coef * sequence_kl
    penalised = torch.where(data.contains_eos, data.scores, data.scores - cfg.missing_eos_penalty)
    value_error_var = masked_var(data.returns - data.values, mask)
    metrics = {
        "objective/kl": sequence_kl.mean(),
        "objective/kl_coef": kl_coef,
        "objective/scores": data.scores.mean(),
        "objective/non_score_reward": non_score_reward.mean(),
        "objective/rlhf_reward": (penalised + non_score_reward).mean(),
        "objective/missing_eos_frac": 1.0 - data.contains_eos.float().mean(),
        "val/explained_variance": 1.0 - value_error_var / masked_var(data.returns, mask).clamp(min=1e-8),
        "val/mean": masked_mean(data.values, mask),
        "val/mean_response_length": mask.sum(dim=1).float().mean(),
        "val/boilerplate_fraction": boilerplate(texts).fraction,
    }
    if data.sampler_logprobs is not None:  # how far the vLLM sampler's numerics are from the trainer's
        metrics["val/sampler_logprob_gap"] = masked_mean((data.sampler_logprobs - data.logprobs).abs(), mask)
    return {"step": step, "episodes": step * cfg.batch_size, **{key: float(value) for key, value in metrics.items()}}


def update_metrics(stats: PPOStats, lr: float, cfg: PPOConfig) -> dict[str, float]:
    """Namespaced metrics of one update's optimisation: means over the minibatches that ran."""
    metrics = {
        "policy/approxkl": torch.nanmean(stats.approxkl),
        "policy/clipfrac": torch.nanmean(stats.clipfrac),
        "policy/entropy": torch.nanmean(stats.entropy),
        "policy/ratio": torch.nanmean(stats.ratio),
        "policy/epochs": (~stats.approxkl.isnan()).any(dim=1).sum(),
        "loss/policy": torch.nanmean(stats.pg_loss),
        "loss/value": torch.nanmean(stats.vf_loss),
        "val/clipfrac": torch.nanmean(stats.vf_clipfrac),
        "optim/lr": lr,
    }
    if cfg.ptx_coef > 0:
        metrics["loss/ptx"] = torch.nanmean(stats.ptx_loss)
    return {key: float(value) for key, value in metrics.items()}


def decode_responses(
    tokenizer: PreTrainedTokenizerBase, responses: torch.Tensor, response_mask: torch.Tensor
) -> list[str]:
    """The text of each response up to its stop token: (B, R), (B, R) -> B strings."""
    return tokenizer.batch_decode(
        [r[m] for r, m in zip(responses, response_mask, strict=True)], skip_special_tokens=True
    )


def response_texts(tokenizer: PreTrainedTokenizerBase, data: Rollout) -> list[str]:
    """The rollout's response texts, as the score function saw them."""
    return decode_responses(tokenizer, data.query_responses[:, data.context_length :], data.response_mask)


def log_samples(
    path: Path, step: int, prompts: list[str], data: Rollout, tokenizer: PreTrainedTokenizerBase, show: bool
) -> None:
    """Append this update's episodes to samples.jsonl and print a table of the first few (rich, to stderr)."""
    sequence_kl = data.kl.sum(dim=1)
    rows = []
    for i, (prompt, text) in enumerate(zip(prompts, response_texts(tokenizer, data), strict=True)):
        rows.append({"step": step, "prompt": prompt, "response": text, "score": float(data.scores[i]),
                     "kl": float(sequence_kl[i]), "finished": bool(data.contains_eos[i])})  # fmt: skip
    for row in rows:
        append_metrics(path, row)
    if not show:
        return
    table = Table("prompt", "response", "score", "kl", title=f"PPO samples, update {step}", show_lines=True)
    for row in rows[:4]:
        table.add_row(row["prompt"][:120], row["response"][:240], f"{row['score']:.3f}", f"{row['kl']:.3f}")
    Console(stderr=True).print(table)


# --- stage wrapper ----------------------------------------------------------------------------------------------


def data_parallel(cfg: RunConfig) -> str | None:
    """Why this stage runs in one process even when a Celery task has RLAIF_TRAIN_DEVICES > 1 (None: it runs
    data-parallel on that many ranks, rlaif/service/ranks.py)."""
    if cfg.ppo.rollout_backend == "vllm":
        return "ppo.rollout_backend vllm runs in one process (one in-process engine samples every rollout)"
    return None


def run_ppo(ctx: StageContext, progress: bool = True) -> StageResult:
    """Stage wrapper: <run>/inputs/prompts.jsonl, the iteration's starting policy and its reward model ->
    <run>/<stage>/model.

    The reward model folder gives both the score function (with its stored gain/bias normalisation) and the
    value model's initial weights (ppo.value_network = "separate"). With ppo.ptx_coef > 0 the SFT data
    (<run>/critique/sft.jsonl) feeds PPO-ptx. `cfg.eval.monitor` drives early stopping and keep-best.
    A finished stage (model folder with a manifest) is not trained again: a redelivered task returns its result.
    """
    cfg, out_dir = ctx.cfg, ctx.out_dir
    if read_manifest(out_dir / MODEL_DIR) is not None:
        log.info("%s/%s already has a complete model; skipping training", ctx.run_id, ctx.name)
        remove_resume_states(out_dir, STEPS_DIR, BEST_DIR)  # (left behind if a worker died right after the save)
        return _finished_result(ctx.name, out_dir)
    prompts = [item.prompt for item in read_jsonl(ctx.path("prompts", PROMPTS_FILE), PromptItem)]
    ptx_examples = None
    if cfg.ppo.ptx_coef > 0:  # (PPO-ptx: the SFT data of the critique stage)
        ptx_examples = read_jsonl(ctx.path("sft_data", SFT_DATA_FILE), SFTExample)
    policy_model, reward_model = ctx.model("policy"), ctx.model("reward_model")
    meta = checkpoint_meta(
        "ppo", policy_model, cfg, ctx.constitution_document(), counts={"prompts_in": len(prompts)},
        run_id=ctx.run_id, reward_model=str(reward_model), policy_optimization=cfg.policy_optimization,
    )  # fmt: skip
    score_fn = reward_score_fn(reward_model)
    return train_ppo(
        prompts, policy_model, score_fn, cfg.ppo, out_dir, cfg.seed, value_model=reward_model,
        ptx_examples=ptx_examples, meta=meta, progress=progress, on_step=ctx.hooks.on_step, monitor=cfg.eval.monitor,
    )  # fmt: skip


def _finished_result(stage: str, out_dir: Path) -> StageResult:
    meta = _read_json(out_dir / MODEL_DIR / "meta.json")
    return StageResult(
        stage=stage,
        outputs=[MODEL_DIR, METRICS_FILE, SAMPLES_FILE],
        counts=meta.get("counts", {}),
        metrics=meta.get("metrics", {}),
        extra={**meta.get("monitor", {}), **meta.get("rollout", {})},
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
