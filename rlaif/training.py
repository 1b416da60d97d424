"""Small pure helpers shared by the SFT and reward-model loops (no trainer class: each loop reads top to bottom).

* seeding, AdamW with decay only on matrices, linear warm-up then linear decay;
* data order as a function of (seed, epoch), so a resumed run skips exactly the batches it consumed;
* global batches split across data-parallel ranks and into length-grouped micro-batches;
* chat-templated tokenisation with the prompt masked out of the labels, and right-padded collation;
* bf16 autocast where the hardware does bf16 fast; metrics appended to metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from rlaif.config import exact_div

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt and padding)


# --- seeding, optimiser, schedule ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay on matrices only (not on norms and biases, GPT-2 practice)."""

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel per parameter group instead of ~10 elementwise passes (a tenth of a CPU step unfused).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused
    )


def warmup_linear_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier of optimizer step `step` (0-based): (step+1)/warmup during warm-up, then linear decay.

    Never 0 while training: the first step already moves (HF's schedule wastes step 0 at lr 0), the last step
    uses 1/(total - warmup) of the peak.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over round(warmup_ratio x total_steps) steps, then linear decay to 0 at total_steps."""
    import functools

    warmup = round(warmup_ratio * total_steps)
    factor = functools.partial(warmup_linear_factor, total_steps=total_steps, warmup_steps=warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- data order and batching -------------------------------------------------------------------------------------


class BatchPlan(NamedTuple):
    """How one global batch is cut: `batch_size` = world_size x accumulation x micro_batch_size (last may be short)."""

    batch_size: int
    per_rank: int
    accumulation: int
    steps_per_epoch: int


def plan_batches(n_items: int, batch_size: int, micro_batch_size: int, world_size: int, what: str) -> BatchPlan:
    """Check the batch sizes divide; `what` is the config section ("sft", "reward_model") named in errors."""
    if n_items < 1:
        raise ValueError(f"{what}: no training items")
    per_rank = exact_div(batch_size, world_size, f"{what}.batch_size", "the world size")
    micro = min(micro_batch_size, per_rank)
    accumulation = exact_div(per_rank, micro, f"{what}.batch_size per rank", f"{what}.micro_batch_size")
    return BatchPlan(batch_size, per_rank, accumulation, math.ceil(n_items / batch_size))


def seeded_permutation(n_items: int, *keys: int) -> list[int]:
    """A permutation of range(n_items) that depends only on the non-negative integer keys."""
    import numpy as np

    return np.random.default_rng(list(keys)).permutation(n_items).tolist()


def epoch_order(n_items: int, seed: int, epoch: int) -> list[int]:
    """The training order of an epoch: a function of (seed, epoch) only, so resume can replay it."""
    return seeded_permutation(n_items, seed, 0, epoch)


def global_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches of item indices; the last batch is filled up from the epoch's start.

    Every batch has exactly `batch_size` items, so every rank always gets the same number of micro-batches
    (DDP needs that) and the loss normalisation is the same for every step.
    """
    order = epoch_order(n_items, seed, epoch)
    steps = math.ceil(n_items / batch_size)
    padded = [order[i % n_items] for i in range(steps * batch_size)]
    return [padded[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def rank_micro_batches(
    batch: Sequence[int], lengths: Sequence[int], rank: int, world_size: int, micro: int
) -> list[list[int]]:
    """This rank's share of a global batch, cut into micro-batches of similar length.

    Sorting the batch by length before dealing it round-robin gives every rank a similar token count, and
    micro-batches of similar lengths (little padding where a batch is padded rather than packed). The loss is
    normalised over the whole global batch, so the grouping does not change it.
    """
    by_length = sorted(batch, key=lambda i: (-lengths[i], i))
    mine = by_length[rank::world_size]
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]


def split_holdout(n_items: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, eval indices): a seeded random slice of round(fraction x n) items, at least 1 when
    fraction > 0 and there are 2 or more items."""
    if fraction <= 0 or n_items < 2:
        return list(range(n_items)), []
    n_eval = min(n_items - 1, max(1, round(fraction * n_items)))
    order = seeded_permutation(n_items, seed, 1)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


# --- tokenisation and collation --------------------------------------------------------------------------------


class TokenizedExample(NamedTuple):
    """prompt + response token ids; `labels` is IGNORE_INDEX on the prompt, the token id on the response."""

    input_ids: list[int]
    labels: list[int]


class Batch(NamedTuple):
    """A right-padded micro-batch. All tensors (B, T)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in self))


class PackedBatch(NamedTuple):
    """A micro-batch packed into one row ("padding-free"). All tensors (1, L), L = total tokens.

    The sequences are concatenated and position_ids restart at 0 for each one; with no attention mask,
    transformers builds a block-diagonal causal mask from them, so no token attends across sequences and no
    compute is spent on padding.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in self))


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a one-turn chat up to and including the assistant header (what generation starts from)."""
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def response_ids(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Token ids of an assistant response followed by EOS (the chat template's end-of-turn token)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: cannot mark the end of a response")
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_chat(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int) -> TokenizedExample:
    """Chat-templated prompt + response + EOS, cut to max_length from the right; prompt positions get no loss.

    The prompt is tokenised exactly as generation sees it (template with the assistant header), and the
    response separately, so training and sampling agree on every token.
    """
    prompt_part = chat_prompt_ids(tokenizer, prompt)
    ids = (prompt_part + response_ids(tokenizer, response))[:max_length]
    labels = [IGNORE_INDEX] * min(len(prompt_part), len(ids)) + ids[len(prompt_part) :]
    return TokenizedExample(ids, labels)


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> Batch:
    """Right-pad to the longest example; padding has attention 0 and label IGNORE_INDEX."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return Batch(input_ids, attention_mask, labels)


def pack(examples: Sequence[TokenizedExample]) -> PackedBatch:
    """Concatenate into one row with per-sequence positions (see PackedBatch). The first label of each sequence is
    IGNORE_INDEX, so the last token of one sequence is never trained to predict the start of the next."""
    input_ids = [token for e in examples for token in e.input_ids]
    labels = [label for e in examples for label in [IGNORE_INDEX, *e.labels[1:]]]
    positions = [p for e in examples for p in range(len(e.input_ids))]
    as_row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
    return PackedBatch(as_row(input_ids), as_row(labels), as_row(positions))


def target_tokens(example: TokenizedExample) -> int:
    """Positions that carry loss: labels shifted by one, so the first label (never a target) is excluded."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


# --- compute ---------------------------------------------------------------------------------------------------


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `dtype` ("auto"/"float32"/"bfloat16"), or None for plain fp32."""

    from rlaif.modeling import pick_dtype

    if dtype == "auto" and device.type not in ("cpu", "cuda"):
        return None
    chosen = pick_dtype(dtype)
    return chosen if chosen != torch.float32 else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast over fp32 master weights (matmuls in bf16, reductions and the optimizer in fp32)."""

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


PACKED_ATTENTION = "rlaif_packed_sdpa"


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal sdpa run separately on each sequence of a packed row; anything else goes to transformers' sdpa.

    On a packed row transformers' sdpa gets an (L, L) block-diagonal mask, and the CPU kernels do the full
    L x L work whatever the mask: a third of a reward-model step at L ~ 700. Per sequence, the work is
    sum(n_i^2) and the mask-free `is_causal` kernel is used. query (1, H, L, D), key/value (1, H_kv, L, D).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if not _is_packed_row(position_ids, query, key):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    bounds = [*torch.nonzero(position_ids[0] == 0).flatten().tolist(), query.shape[2]]
    lengths = [end - start for start, end in itertools.pairwise(bounds)]
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    # On CPU the plain math kernel beats the flash kernel on chat-length sequences (~2x forward + backward).
    kernels = sdpa_kernel(SDPBackend.MATH) if query.device.type == "cpu" else contextlib.nullcontext()
    # split, not slicing: the backward of a split is one cat, of each slice a zero-filled full-size gradient.
    with kernels:
        out = [
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
            for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2), strict=True)
        ]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None  # (1, L, H, D) like transformers' sdpa


def _is_packed_row(position_ids: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> bool:
    """One row, no cache, positions that count 0, 1, 2, ... and restart at 0 (never left padding's 1, 1, 0, 1)."""
    if position_ids is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return False
    pos = position_ids[0]
    return bool(pos[0] == 0) and bool(((pos[1:] == pos[:-1] + 1) | (pos[1:] == 0)).all())


def use_packed_attention(model: torch.nn.Module) -> str:
    """Switch `model` to packed_sdpa_attention; returns the previous implementation, to restore before saving."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # padded batches still get sdpa's mask
    previous = model.config._attn_implementation
    model.set_attn_implementation(PACKED_ATTENTION)
    return previous


def masked_lm_loss_sum(model: torch.nn.Module, batch: Batch | PackedBatch) -> torch.Tensor:
    """Sum of next-token cross-entropies over target positions (labels != IGNORE_INDEX) of a causal LM.

    Runs the decoder, then the LM head on the target positions only: the prompt's logits are never made,
    which saves the (T, vocab) matmul and memory on every prompt token. The sum (not the mean) lets the
    caller normalise over a whole global batch.
    """
    import torch.nn.functional as F

    if isinstance(batch, PackedBatch):
        inputs = {"position_ids": batch.position_ids}
    else:
        inputs = {"attention_mask": batch.attention_mask}
    # use_cache=False: with a cache, transformers does not build the packed block-diagonal mask.
    hidden = model.get_decoder()(input_ids=batch.input_ids, use_cache=False, **inputs).last_hidden_state  # (B, T, d)
    targets = batch.labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
    mask = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V)
    return F.cross_entropy(logits.float(), targets[mask], reduction="sum")


class LossModule(torch.nn.Module):
    """`loss_fn(model, batch)` as a module, so DistributedDataParallel sees the whole computation as one forward
    (DDP syncs gradients only for computations that go through its own forward call)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Any):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Any:
        return self.loss_fn(self.model, batch)


# --- metrics ---------------------------------------------------------------------------------------------------


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line of namespaced metrics."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def truncate_metrics(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Keep the records with step <= last_step (a resumed run rewrites the rest); returns the kept records."""
    from rlaif.store import atomic_write_text

    if not path.exists():
        return []
    kept = [
        r
        for r in (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        if r.get("step", 0) <= last_step
    ]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return kept


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
