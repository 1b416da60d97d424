"""Pure helpers of the training loops: schedule, data order, sharding, tokenisation with prompt masking."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.modeling import load_tokenizer
from rlaif.training import (
    IGNORE_INDEX,
    TokenizedExample,
    append_metrics,
    chat_prompt_ids,
    collate,
    epoch_order,
    global_batches,
    make_optimizer,
    make_scheduler,
    plan_batches,
    rank_micro_batches,
    split_holdout,
    target_tokens,
    tokenize_chat,
    truncate_metrics,
    warmup_linear_factor,
)


def test_warmup_then_linear_decay_by_hand() -> None:
    # total 10 steps, warm-up 2: steps 0,1 -> 1/2, 2/2; then (10 - s) / 8 for s = 2..9 -> 8/8 ... 1/8.
    factors = [warmup_linear_factor(s, total_steps=10, warmup_steps=2) for s in range(10)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    # No warm-up: the first step runs at the peak rate (never at lr 0).
    assert warmup_linear_factor(0, total_steps=4, warmup_steps=0) == 1.0


def test_scheduler_drives_optimizer_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = make_optimizer(torch.nn.ParameterList([param]), learning_rate=0.1)
    scheduler = make_scheduler(optimizer, total_steps=10, warmup_ratio=0.2)  # round(0.2 * 10) = 2 warm-up steps
    seen = []
    for _ in range(3):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1])


def test_weight_decay_only_on_matrices() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    groups = make_optimizer(model, 1e-3, weight_decay=0.1).param_groups
    assert [(g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in groups] == [
        (0.1, [(3, 3)]),
        (0.0, [(3,), (3,), (3,)]),
    ]


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    assert epoch_order(10, seed=3, epoch=1) == epoch_order(10, seed=3, epoch=1)
    assert epoch_order(10, seed=3, epoch=1) != epoch_order(10, seed=3, epoch=2)
    assert sorted(epoch_order(10, seed=3, epoch=1)) == list(range(10))


def test_global_batches_are_full_and_cover_the_epoch() -> None:
    batches = global_batches(10, batch_size=4, seed=0, epoch=0)
    # ceil(10 / 4) = 3 batches of exactly 4; the last is topped up with 2 items from the epoch's start.
    assert [len(b) for b in batches] == [4, 4, 4]
    flat = [i for b in batches for i in b]
    assert set(flat) == set(range(10))
    assert flat[10:] == flat[:2]


def test_rank_micro_batches_deal_the_whole_batch_by_length() -> None:
    lengths = [5, 50, 7, 40, 6, 30, 8, 20]
    batch = list(range(8))
    ranks = [rank_micro_batches(batch, lengths, rank, world_size=2, micro=2) for rank in (0, 1)]
    # Sorted by length: 1(50) 3(40) 5(30) 7(20) 6(8) 2(7) 4(6) 0(5); rank 0 takes every other one.
    assert ranks[0] == [[1, 5], [6, 4]]
    assert ranks[1] == [[3, 7], [2, 0]]
    assert sorted(i for r in ranks for mb in r for i in mb) == batch


def test_plan_batches_checks_divisibility() -> None:
    plan = plan_batches(n_items=10, batch_size=8, micro_batch_size=2, world_size=2, what="sft")
    assert (plan.per_rank, plan.accumulation, plan.steps_per_epoch) == (4, 2, 2)
    with pytest.raises(ValueError, match="sft.batch_size 6 is not divisible by the world size 4"):
        plan_batches(10, batch_size=6, micro_batch_size=2, world_size=4, what="sft")
    with pytest.raises(
        ValueError, match="reward_model.batch_size per rank 6 is not divisible by reward_model.micro_batch_size 4"
    ):
        plan_batches(10, batch_size=6, micro_batch_size=4, world_size=1, what="reward_model")
    with pytest.raises(ValueError, match="sft: no training items"):
        plan_batches(0, batch_size=4, micro_batch_size=2, world_size=1, what="sft")


def test_split_holdout_is_seeded_and_disjoint() -> None:
    train, held = split_holdout(20, 0.1, seed=5)
    assert len(held) == 2 and not set(train) & set(held) and len(train) + len(held) == 20
    assert split_holdout(20, 0.1, seed=5) == (train, held)
    assert split_holdout(1, 0.5, seed=0) == ([0], [])  # one item cannot be split
    assert split_holdout(5, 0.0, seed=0) == ([0, 1, 2, 3, 4], [])


def test_tokenize_chat_masks_the_prompt(tiny_model: str) -> None:
    tokenizer = load_tokenizer(tiny_model)
    prompt_ids = chat_prompt_ids(tokenizer, "Hi there")
    example = tokenize_chat(tokenizer, "Hi there", "Hello!", max_length=512)
    response = tokenizer("Hello!", add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt_ids + response + [tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + response + [tokenizer.eos_token_id]
    # The prompt is the chat template up to the assistant header, exactly what generation starts from.
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert target_tokens(example) == len(response) + 1
    cut = tokenize_chat(tokenizer, "Hi there", "Hello!", max_length=len(prompt_ids) + 1)
    assert cut.input_ids == prompt_ids + response[:1] and target_tokens(cut) == 1


def test_collate_pads_right_with_no_loss_on_padding() -> None:
    batch = collate(
        [TokenizedExample([5, 6, 7], [IGNORE_INDEX, 6, 7]), TokenizedExample([8], [IGNORE_INDEX])], pad_token_id=2
    )
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_truncate_metrics_keeps_steps_up_to_the_resume_point(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        append_metrics(path, {"step": step, "loss/train": math.log(step + 1)})
    assert [r["step"] for r in truncate_metrics(path, 2)] == [1, 2]
    assert path.read_text().count("\n") == 2
