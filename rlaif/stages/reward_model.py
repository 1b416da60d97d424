"""Stage 5, the preference model: a scalar reward trained on the AI-labelled comparisons.

Bai et al. 2022, sec. 4.1 (RL-CAI trains a preference model on AI feedback) with the soft-label variant: the
judge's P(A) is used as the target instead of a hard choice, loss -[p log s(r_a - r_b) + (1-p) log s(r_b - r_a)]
(`rlaif.rl.losses.bradley_terry_loss`). The backbone is the SFT model loaded as
AutoModelForSequenceClassification(num_labels=1), whose reward is the head applied at the *last real token*
of each chat-templated (prompt, response + EOS). Training packs each micro-batch into one padding-free row and
reads the head at each sequence's last position. Scoring (and anyone loading the folder) uses transformers'
pooling on padded batches: the last token that is not the pad id. The SmolLM2 tokenizer pads with EOS, which
would skip our final EOS, so the reward model gets its own pad token (distinct from EOS); a test checks that
both paths read the true last token. The head starts at std 1/sqrt(d+1)
("The N Implementation Details of RLHF with PPO", reward head init). After training, rewards of the training
responses are normalised to mean 0 / std 1 (same source, detail "reward normalisation"): gain and bias go into
config.json (`reward_gain`, `reward_bias`) and meta.json, and `reward_score_fn` applies them, so PPO sees
normalised scores. With `reward_model.lora_rank > 0` the backbone is frozen and only LoRA adapters (peft) and
the score head train (the head as a peft `modules_to_save` copy); the export is still the merged sequence
classifier, with the adapter in model/adapter/, and step states hold only what trains.

    rlaif reward-model --run-id demo
    torchrun --nproc_per_node 2 -m rlaif reward-model --run-id demo
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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
from rlaif.config import RewardModelConfig, RunConfig
from rlaif.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, no_sync, wrap_ddp
from rlaif.metrics_log import MetricsLog
from rlaif.modeling import ModelError, disable_dropout, load_tokenizer, resolve_model
from rlaif.preference_sets import read_human_pairs
from rlaif.records import HumanPair, LabelRecord
from rlaif.rl.losses import bradley_terry_loss
from rlaif.stages import LABELS_FILE, METRICS_FILE, MODEL_DIR, STEPS_DIR, StageResult
from rlaif.stages.contract import StageContext, StepCallback
from rlaif.store import read_jsonl, read_manifest
from rlaif.training import (
    LossModule,
    autocast,
    autocast_dtype,
    global_batches,
    make_optimizer,
    make_scheduler,
    plan_batches,
    rank_micro_batches,
    seed_everything,
    seeded_permutation,
    split_holdout,
    tokenize_chat,
    use_packed_attention,
)

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[str], list[str]], torch.Tensor]


class PairExample(NamedTuple):
    """A tokenised comparison: chat ids of (prompt, response_a) and (prompt, response_b), and P(a better)."""

    ids_a: list[int]
    ids_b: list[int]
    p_a: float


class PairBatch(NamedTuple):
    """Micro-batch of B comparisons packed into one row: the B a sides, then the B b sides, back to back.

    No padding: position_ids restart at 0 for each sequence and transformers builds a block-diagonal causal
    mask from them (attention_mask None), so each sequence sees only itself.
    """

    input_ids: torch.Tensor  # (1, L), L = total tokens of the 2B sequences
    position_ids: torch.Tensor  # (1, L)
    last_index: torch.Tensor  # (2B,) position in the row of each sequence's last token (its EOS)
    p_a: torch.Tensor  # (B,)


class RewardModel(NamedTuple):
    """A loaded reward model: reward = gain x raw head output + bias (mean 0, std 1 on the SFT samples)."""

    model: torch.nn.Module
    tokenizer: Any
    gain: float
    bias: float
    max_length: int


def train_reward_model(
    labels: list[LabelRecord],
    sft_model: str,
    cfg: RewardModelConfig,
    out_dir: Path,
    seed: int,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_step: StepCallback | None = None,
    human_pairs: Sequence[HumanPair] | None = None,
) -> StageResult:
    """Train a reward model from `sft_model` on soft-labelled pairs; writes out_dir/model, steps, metrics.jsonl.

    `on_step(step, total_steps, metrics)` runs after every optimizer step (heartbeat hook; raising in it stops training like a
    crash, and the next call resumes from the newest step state). `human_pairs` (the run's preference set,
    `rlaif.preference_sets.read_human_pairs`) join the training data as hard labels, p = 1 for `chosen`, as many as
    reward_model.human_mix says: the hybrid preference model of Bai et al. 2022 sec. 4.1.
    """
    # --- setup ----------------------------------------------------------------------------------------------
    info = init_distributed()
    seed_everything(seed)
    out_dir = Path(out_dir)
    steps_dir = out_dir / STEPS_DIR
    tokenizer = reward_tokenizer(sft_model)

    train_idx, eval_idx = split_holdout(len(labels), cfg.eval_fraction, seed)
    mixed = _human_mix(human_pairs, len(train_idx), cfg, seed)
    train_data = [tokenize_pair(tokenizer, labels[i], cfg.max_length) for i in train_idx]
    train_data += [tokenize_human_pair(tokenizer, pair, cfg.max_length) for pair in mixed]
    eval_data = [tokenize_pair(tokenizer, labels[i], cfg.max_length) for i in eval_idx]
    plan = plan_batches(len(train_data), cfg.batch_size, cfg.micro_batch_size, info.world_size, "reward_model")
    total_steps = plan.steps_per_epoch * cfg.epochs
    lengths = [max(len(p.ids_a), len(p.ids_b)) for p in train_data]

    model = load_reward_backbone(sft_model, tokenizer.pad_token_id, info.device)
    attention = use_packed_attention(model)  # restored before saving
    if cfg.lora_rank > 0:
        model = _add_lora(model, cfg)
    model.train()
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, total_steps, cfg.warmup_ratio)
    start_step = load_latest_step_state(steps_dir, model, optimizer, scheduler) or 0
    # metrics.jsonl, TensorBoard, MLflow; a resumed run rewrites what came after its step state. Rank 0 writes.
    metrics_log = MetricsLog(out_dir, "reward_model", cfg, meta, start_step, enabled=info.is_main)
    loss_module = wrap_ddp(LossModule(model, pair_loss_sum), info)
    amp = autocast_dtype(cfg.dtype, info.device)
    log.info(
        "reward model from %s on %d pairs (%d human, %d held out): %d steps of %d pairs, %d micro-batches of %d per "
        "rank x %d ranks, start at step %d, autocast %s",
        sft_model, len(train_data), len(mixed), len(eval_data), total_steps, plan.batch_size, plan.accumulation,
        cfg.micro_batch_size, info.world_size, start_step, amp,
    )  # fmt: skip

    # --- loop -----------------------------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=start_step, desc="reward model", disable=not (progress and info.is_main))
    metrics: dict[str, float] = {}
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, plan.steps_per_epoch)
        batch = global_batches(len(train_data), plan.batch_size, seed, epoch)[index]
        micro_batches = rank_micro_batches(batch, lengths, info.rank, info.world_size, cfg.micro_batch_size)
        started, started_cpu = time.perf_counter(), time.process_time()
        loss_sum, correct, decisive, margin_sum = _train_step(
            loss_module, train_data, micro_batches, plan.batch_size, info, amp
        )
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, correct, decisive, margin_sum = all_reduce_sum([loss_sum, correct, decisive, margin_sum], info)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
        metrics = {
            "step": step + 1,
            "epoch": epoch,
            "loss/train": loss_sum / plan.batch_size,
            "reward/accuracy_train": correct / max(decisive, 1),
            "reward/margin_train": margin_sum / plan.batch_size,
            "optim/lr": lr,
            "perf/pairs_per_s": plan.batch_size / seconds,
            "perf/step_s": seconds,
            "perf/step_cpu_s": cpu_seconds,  # all threads; well below step_s x threads = a contended CPU
        }
        if (step + 1) % plan.steps_per_epoch == 0 and eval_data:
            stats = evaluate_pairs(model, eval_data, cfg.micro_batch_size, info, amp)
            metrics.update({"loss/eval": stats["loss"], "reward/accuracy_eval": stats["accuracy"]})
        metrics_log.log(metrics)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
            if info.is_main:
                save_step_state(steps_dir, step + 1, model, optimizer, scheduler, {"metrics": metrics},
                                trainable_only=cfg.lora_rank > 0)  # fmt: skip
            barrier(info)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss/train']:.3f}")
        if on_step is not None:
            on_step(step + 1, total_steps, metrics)
    bar.close()
    metrics_log.close()

    # --- normalise and save ---------------------------------------------------------------------------------
    model.eval()
    model.set_attn_implementation(attention)
    # Normalised over the AI-labelled (policy-sampled) responses only: PPO scores the policy's samples, and human
    # responses, written elsewhere, would shift the mean away from what PPO sees.
    responses = sorted({(labels[i].prompt, r) for i in train_idx for r in (labels[i].response_a, labels[i].response_b)})
    mean, std = reward_moments(model, tokenizer, responses, cfg.max_length, cfg.micro_batch_size * 2, info)
    gain, bias = 1.0 / std, -mean / std
    model.config.reward_gain, model.config.reward_bias = gain, bias
    counts = {
        "train_pairs": len(train_data),
        "human_pairs": len(mixed),
        "eval_pairs": len(eval_data),
        "normalisation_responses": len(responses),
        "steps": total_steps,
    }
    final = {k: v for k, v in metrics.items() if k.startswith(("loss/", "reward/accuracy"))}
    if info.is_main:
        full_meta = {**(meta or {}), "counts": {**(meta or {}).get("counts", {}), **counts}, "metrics": final}
        full_meta.setdefault("stage", "reward_model")
        full_meta.setdefault("base_model", sft_model)
        full_meta["max_length"] = cfg.max_length
        full_meta["reward_normalisation"] = {"gain": gain, "bias": bias, "raw_mean": mean, "raw_std": std}
        save_hf_checkpoint(model, tokenizer, out_dir / MODEL_DIR, full_meta)
        remove_resume_states(out_dir, STEPS_DIR)  # the finished model supersedes the resume states
    barrier(info)
    return StageResult(
        stage="reward_model", outputs=[MODEL_DIR, METRICS_FILE], counts=counts, metrics=final,
        extra={"reward_gain": gain, "reward_bias": bias},
    )  # fmt: skip


def _human_mix(pairs: Sequence[HumanPair] | None, n_train: int, cfg: RewardModelConfig, seed: int) -> list[HumanPair]:
    """The human pairs mixed into training: all of them when reward_model.human_mix is null, else
    round(human_mix x n_train) of them, a seeded sample kept in file order."""
    pairs = list(pairs or [])
    if cfg.human_mix is None:
        return pairs
    if cfg.human_mix <= 0 or not pairs:
        return []
    wanted = round(cfg.human_mix * n_train)
    if wanted > len(pairs):
        log.warning("reward_model.human_mix wants %d human pairs, only %d exist: using all", wanted, len(pairs))
    order = seeded_permutation(len(pairs), seed, 3)[:wanted]
    return [pairs[i] for i in sorted(order)]


def _train_step(
    loss_module: torch.nn.Module,
    data: list[PairExample],
    micro_batches: list[list[int]],
    global_pairs: int,
    info: DistInfo,
    amp: torch.dtype | None,
) -> tuple[float, int, int, float]:
    """Forward/backward over this rank's micro-batches: (loss sum, correct, decisive pairs, margin sum).

    Each micro-batch adds loss_sum / global_pairs, so the gradient is that of the mean over the global batch;
    x world_size undoes DDP's averaging over ranks.
    """
    loss_total, correct, decisive, margin_total = 0.0, 0, 0, 0.0
    for i, micro in enumerate(micro_batches):
        batch = pack_pairs([data[j] for j in micro], info.device)  # padding-free: no compute on padding
        with no_sync(loss_module, sync=i == len(micro_batches) - 1):
            with autocast(info.device, amp):
                loss_sum, margin = loss_module(batch)
            (loss_sum * info.world_size / global_pairs).backward()
        loss_total += loss_sum.item()
        c, d = _agreement(margin, batch.p_a)
        correct, decisive, margin_total = correct + c, decisive + d, margin_total + margin.sum().item()
    return loss_total, correct, decisive, margin_total


def pair_loss_sum(model: torch.nn.Module, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed soft Bradley-Terry loss, detached margins r_a - r_b) of a micro-batch; one forward for both sides."""
    rewards = packed_rewards(model, batch).float()  # (2B,)
    n = batch.p_a.shape[0]
    margin = rewards[:n] - rewards[n:]  # (B,)
    return bradley_terry_loss(margin, batch.p_a) * n, margin.detach()


def packed_rewards(model: torch.nn.Module, batch: PairBatch) -> torch.Tensor:
    """Raw head output at the last token of each packed sequence, (2B,): the backbone runs once over the row and
    the (d -> 1) head reads only the 2B last positions."""
    classifier = _classifier(model)
    backbone = getattr(classifier, classifier.base_model_prefix)
    hidden = backbone(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state
    # use_cache=False: with a cache transformers would not build the block-diagonal mask (sequences would mix).
    return classifier.score(hidden[0, batch.last_index]).squeeze(-1)


def _classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers classifier: the model itself, or the one inside a peft wrapper (its LoRA layers and
    trainable head copy sit in place in it, so its backbone and `score` are the adapted ones)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def pooled_rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw head output at each sequence's last real token, (N,). Pooling is transformers' own (last token that
    is not the pad id); the reward tokenizer's pad id differs from EOS, so that is the true last token."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)


def _agreement(margin: torch.Tensor, p_a: torch.Tensor) -> tuple[int, int]:
    """(pairs where the reward agrees with the label's side, pairs whose label has a side: p != 0.5)."""
    decisive = p_a != 0.5
    agree = (margin > 0) == (p_a > 0.5)
    return int((agree & decisive).sum()), int(decisive.sum())


@torch.no_grad()
def evaluate_pairs(
    model: torch.nn.Module,
    data: list[PairExample],
    micro_batch_size: int,
    info: DistInfo,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean soft BT loss and accuracy (on pairs with p != 0.5) of raw rewards over `data`, dealt across ranks."""
    was_training = model.training
    model.eval()
    mine = list(range(info.rank, len(data), info.world_size))
    loss_sum, correct, decisive = 0.0, 0, 0
    for start in range(0, len(mine), micro_batch_size):
        batch = pack_pairs([data[i] for i in mine[start : start + micro_batch_size]], info.device)
        with autocast(info.device, amp):
            loss, margin = pair_loss_sum(model, batch)
        loss_sum += loss.item()
        c, d = _agreement(margin, batch.p_a)
        correct, decisive = correct + c, decisive + d
    model.train(was_training)
    loss_sum, correct, decisive = all_reduce_sum([loss_sum, correct, decisive], info)
    return {"loss": loss_sum / max(len(data), 1), "accuracy": correct / max(decisive, 1), "pairs": float(len(data))}


# --- tokens ----------------------------------------------------------------------------------------------------


def reward_tokenizer(model_name: str) -> Any:
    """The policy's tokenizer with a pad token distinct from EOS (see the module docstring)."""
    tokenizer = load_tokenizer(model_name)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = _distinct_pad_token(tokenizer)
    return tokenizer


def _distinct_pad_token(tokenizer: Any) -> str:
    """A special token that is neither EOS nor BOS: unk, '<|endoftext|>', or another special token."""
    avoid = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    candidates = [tokenizer.unk_token, "<|endoftext|>", *tokenizer.all_special_tokens]
    for token in candidates:
        if token is not None and token in tokenizer.get_vocab() and tokenizer.convert_tokens_to_ids(token) not in avoid:
            return token
    raise ModelError("the tokenizer has no special token other than EOS/BOS to pad with; the reward model needs one")


def tokenize_pair(tokenizer: Any, label: LabelRecord, max_length: int) -> PairExample:
    return PairExample(
        tokenize_chat(tokenizer, label.prompt, label.response_a, max_length).input_ids,
        tokenize_chat(tokenizer, label.prompt, label.response_b, max_length).input_ids,
        label.p_a,
    )


def tokenize_human_pair(tokenizer: Any, pair: HumanPair, max_length: int) -> PairExample:
    """A human comparison as a hard label: side a is `chosen`, p = 1 (the loss is then -log s(r_chosen - r_rejected),
    the plain Bradley-Terry loss of a human preference)."""
    return PairExample(
        tokenize_chat(tokenizer, pair.prompt, pair.chosen, max_length).input_ids,
        tokenize_chat(tokenizer, pair.prompt, pair.rejected, max_length).input_ids,
        1.0,
    )


def _pad(rows: Sequence[list[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, T) ids and attention mask."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids.to(device), attention_mask.to(device)


def pack_pairs(pairs: Sequence[PairExample], device: torch.device) -> PairBatch:
    """Pack the a sides then the b sides of `pairs` into one row (see PairBatch)."""
    rows = [p.ids_a for p in pairs] + [p.ids_b for p in pairs]
    input_ids = torch.tensor([[token for row in rows for token in row]], dtype=torch.long, device=device)
    position_ids = torch.tensor([[i for row in rows for i in range(len(row))]], dtype=torch.long, device=device)
    last_index = torch.tensor([len(row) for row in rows], device=device).cumsum(0) - 1
    p_a = torch.tensor([p.p_a for p in pairs], dtype=torch.float32, device=device)
    return PairBatch(input_ids, position_ids, last_index, p_a)


# --- model -----------------------------------------------------------------------------------------------------


def load_reward_backbone(model_name: str, pad_token_id: int, device: torch.device) -> torch.nn.Module:
    """The SFT model as a 1-output sequence classifier (fp32), head ~ N(0, 1/(d+1)), dropout off."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(model_name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, pad_token_id=pad_token_id, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {model_name!r} from {path} as a reward model: {exc}") from exc
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ModelError(f"{model_name!r}: {type(model).__name__} has no linear `score` head to train as a reward")
    hidden = head.weight.shape[1]
    torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
    disable_dropout(model)
    return model.to(device)


def _add_lora(model: torch.nn.Module, cfg: RewardModelConfig) -> torch.nn.Module:
    """LoRA adapters on every linear layer of the backbone (peft); the adapters and the score head train."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS",
        modules_to_save=["score"],
    )  # fmt: skip
    model = get_peft_model(model, lora)
    disable_dropout(model)
    return model


def load_reward_model(path: str | Path, device: str | None = None) -> RewardModel:
    """A trained reward model folder (from this stage) with its normalisation, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    meta = read_meta(Path(path))
    tokenizer = load_tokenizer(str(path))
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(target)
    model.eval()
    if tokenizer.pad_token_id != model.config.pad_token_id:
        raise ModelError(
            f"{path}: tokenizer pad id {tokenizer.pad_token_id} != config pad_token_id {model.config.pad_token_id}"
        )
    gain = float(getattr(model.config, "reward_gain", 1.0))
    bias = float(getattr(model.config, "reward_bias", 0.0))
    return RewardModel(model, tokenizer, gain, bias, int(meta.get("max_length", 1024)))


@torch.no_grad()
def raw_rewards(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    max_length: int,
    batch_size: int,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Un-normalised rewards of (prompt, response) pairs, (N,) float32 on CPU, in input order.

    Sequences are scored longest first so each batch pads little; the order is restored at the end.
    """
    device = next(model.parameters()).device
    rows = [tokenize_chat(tokenizer, p, r, max_length).input_ids for p, r in pairs]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = torch.empty(len(rows), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = _pad([rows[i] for i in chunk], tokenizer.pad_token_id, device)
        with autocast(device, amp):
            out[chunk] = pooled_rewards(model, input_ids, attention_mask).float().cpu()
    return out


def reward_moments(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    max_length: int,
    batch_size: int,
    info: DistInfo,
) -> tuple[float, float]:
    """(mean, std) of raw rewards over `pairs`, scored in fp32 and dealt across ranks; std uses unbiased=False."""
    mine = [pairs[i] for i in range(info.rank, len(pairs), info.world_size)]
    rewards = raw_rewards(model, tokenizer, mine, max_length, batch_size).double()
    total, squares, count = all_reduce_sum([rewards.sum().item(), (rewards**2).sum().item(), len(mine)], info)
    mean = total / count
    std = math.sqrt(max(squares / count - mean**2, 0.0))
    if not std > 1e-8:
        raise ValueError(f"reward normalisation: all {int(count)} training responses get the same reward {mean:.4g}")
    return mean, std


def reward_score_fn(
    path: str | Path, batch_size: int = 8, device: str | None = None, dtype: str = "float32"
) -> ScoreFn:
    """`score(prompts, responses) -> (N,) float32 tensor` of normalised rewards, for PPO (style guide 11).

    dtype "bfloat16" scores under bf16 autocast (faster on bf16 hardware; scores differ in the ~3rd digit).
    """
    rm = load_reward_model(path, device)
    amp = autocast_dtype(dtype, next(rm.model.parameters()).device)

    def score(prompts: list[str], responses: list[str]) -> torch.Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"reward score: {len(prompts)} prompts but {len(responses)} responses")
        raw = raw_rewards(
            rm.model, rm.tokenizer, list(zip(prompts, responses, strict=True)), rm.max_length, batch_size, amp
        )
        return rm.gain * raw + rm.bias

    return score


def evaluate_reward_model(
    path: str | Path, pairs: Sequence[HumanPair | LabelRecord], batch_size: int = 8
) -> dict[str, float]:
    """Accuracy and soft BT loss (on raw rewards) of a trained reward model on labelled pairs.

    Human pairs (HumanPair) count as p = 1 for `chosen`; LabelRecords keep their soft p_a.
    """
    rm = load_reward_model(path)
    sides: list[tuple[str, str]] = []
    labels: list[float] = []
    for pair in pairs:
        if isinstance(pair, HumanPair):
            sides += [(pair.prompt, pair.chosen), (pair.prompt, pair.rejected)]
            labels.append(1.0)
        else:
            sides += [(pair.prompt, pair.response_a), (pair.prompt, pair.response_b)]
            labels.append(pair.p_a)
    if not labels:
        raise ValueError("evaluate_reward_model: no pairs given")
    rewards = raw_rewards(rm.model, rm.tokenizer, sides, rm.max_length, batch_size)
    margin = rewards[0::2] - rewards[1::2]
    p = torch.tensor(labels)
    correct, decisive = _agreement(margin, p)
    return {
        "accuracy": correct / max(decisive, 1),
        "loss": float(bradley_terry_loss(margin, p)),
        "pairs": float(len(labels)),
    }


# --- stage wrapper ---------------------------------------------------------------------------------------------


def data_parallel(cfg: RunConfig) -> str | None:
    """None: this stage runs data-parallel (a Celery task with RLAIF_TRAIN_DEVICES > 1 starts it on that many
    ranks, rlaif/service/ranks.py)."""
    return None


def run_reward_model(ctx: StageContext) -> StageResult:
    """Stage wrapper: this iteration's <run>/<judge>/labels.jsonl + the SFT model (the backbone) -> <run>/<stage>/model.

    A finished stage (model folder with a manifest) is not trained again: a redelivered task returns its result.
    """
    out_dir = ctx.out_dir
    if read_manifest(out_dir / MODEL_DIR) is not None:
        log.info("%s/%s already has a complete reward model; skipping training", ctx.run_id, ctx.name)
        remove_resume_states(out_dir, STEPS_DIR)  # (left behind if a worker died right after the save)
        meta = read_meta(out_dir / MODEL_DIR)
        return StageResult(
            stage=ctx.name,
            outputs=[MODEL_DIR, METRICS_FILE],
            counts=meta.get("counts", {}),
            metrics=meta.get("metrics", {}),
        )
    labels = read_jsonl(ctx.path("labels", LABELS_FILE), LabelRecord)
    sft_model = ctx.model("base")
    meta = checkpoint_meta(
        "reward_model", sft_model, ctx.cfg, ctx.constitution_document(), judge_model=ctx.cfg.judge_model,
        counts={"labels": len(labels)}, run_id=ctx.run_id,
    )  # fmt: skip
    return train_reward_model(
        labels,
        sft_model,
        ctx.cfg.reward_model,
        out_dir,
        ctx.cfg.seed,
        meta=meta,
        on_step=ctx.hooks.on_step,
        human_pairs=read_human_pairs(ctx.store, ctx.run_id),  # the run's preference set, pinned at creation
    )
