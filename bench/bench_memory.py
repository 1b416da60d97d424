"""Bytes of model state per parameter for each training layout, measured, and what they imply at 1B, 8B and 70B.

Each layout is built with the stage's own loaders (`load_causal_lm`, PPO's `_add_lora`, `ValueHead`,
`load_value_model`, the reward model's `load_reward_backbone`), then one optimizer step runs on a one-sequence
batch so every gradient and AdamW moment exists. The script then counts the bytes of every distinct tensor
storage the layout holds: weights (trainable and frozen), gradients and optimizer state. That count divided by
the base model's parameter count is the layout's bytes per parameter. It is exact for the model state; it
leaves out activations (they grow with micro-batch x sequence length, and gradient checkpointing trades them
for compute), the KV cache of sampling, and the runtime itself (~0.4 GiB on CPU). bench_ppo.py's peak RSS
shows what those add at 135M.

    python bench/bench_memory.py                       # the embedded SmolLM2-135M-Instruct, ~1 min
    python bench/bench_memory.py --model tiny-random-llama

The projection multiplies each layout's bytes per parameter by the parameter counts of Llama-3.2-1B (1.24 B),
Llama-3.1-8B (8.03 B) and Llama-3.1-70B (70.6 B), and says whether that state alone fits one 80 GB or 141 GB GPU
(GB = 1e9 bytes, as GPU memory is sold). It assumes the same dtypes as on this machine: fp32 master weights with
bf16 autocast for what trains, fp32 frozen copies (reference, reward model, judge).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from typing import NamedTuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

from rlaif.config import DPOConfig, PPOConfig
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.stages import dpo as dpo_stage
from rlaif.stages import ppo as ppo_stage
from rlaif.stages.reward_model import load_reward_backbone

TARGETS = {"Llama-3.2-1B": 1.24e9, "Llama-3.1-8B": 8.03e9, "Llama-3.1-70B": 70.6e9}
GPUS = {"80 GB": 80e9, "141 GB": 141e9}
LORA_RANK = 16


class Layout(NamedTuple):
    """What one training stage holds: the modules (trainable or frozen) and the parameters its optimizer steps."""

    modules: list[torch.nn.Module]
    trainable: list[torch.nn.Parameter]
    step: Callable[[torch.Tensor], torch.Tensor]  # input ids (1, T) -> a scalar loss through every trainable part


class Count(NamedTuple):
    weights_trainable: int
    weights_frozen: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights_trainable + self.weights_frozen + self.grads + self.optimizer


def _storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    """Bytes of the distinct storages among `tensors` not in `seen` (tied weights and views count once)."""
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def count(layout: Layout, optimizer: torch.optim.Optimizer) -> Count:
    seen: set[int] = set()
    trainable_ids = {id(p) for p in layout.trainable}
    params = [p for m in layout.modules for p in m.parameters()] + [b for m in layout.modules for b in m.buffers()]
    trainable = _storage_bytes([p for p in params if id(p) in trainable_ids], seen)
    frozen = _storage_bytes([p for p in params if id(p) not in trainable_ids], seen)
    grads = _storage_bytes([p.grad for p in layout.trainable if p.grad is not None], seen)
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return Count(trainable, frozen, grads, _storage_bytes(state, seen))


def _lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float().logsumexp(-1).mean()


def _reward_model(name: str, pad: int) -> torch.nn.Module:
    """PPO scores rollouts with the reward model: a frozen fp32 sequence classifier the policy's size."""
    return load_reward_backbone(name, pad, torch.device("cpu")).requires_grad_(False)


def ppo_layout(name: str, pad: int, value_network: str, lora_rank: int = 0) -> Layout:
    cfg = PPOConfig(value_network=value_network, lora_rank=lora_rank)  # type: ignore[arg-type]
    policy = load_causal_lm(name)
    if lora_rank:
        policy = ppo_stage._add_lora(policy, cfg)
        frozen: list[torch.nn.Module] = []  # the reference is the base with the adapter off: no second copy
    else:
        frozen = [load_causal_lm(name).requires_grad_(False)]
    if value_network == "shared":
        value: torch.nn.Module = ppo_stage.ValueHead(policy.config.hidden_size)
    else:
        value = ppo_stage.load_value_model(name, torch.device("cpu"), zero_head=True)
    modules = [policy, value, *frozen, _reward_model(name, pad)]
    trainable = [p for m in (policy, value) for p in m.parameters() if p.requires_grad]

    def step(ids: torch.Tensor) -> torch.Tensor:
        if value_network == "shared":
            hidden = policy(input_ids=ids, output_hidden_states=True).hidden_states[-1]
            return _lm_loss(policy, ids) + value(hidden).mean()
        return _lm_loss(policy, ids) + value(input_ids=ids).logits.mean()

    return Layout(modules, trainable, step)


def dpo_layout(name: str, lora_rank: int = 0) -> Layout:
    """DPO: the policy only; the reference's log-probs are computed once before training and the model freed."""
    policy = load_causal_lm(name)
    if lora_rank:
        policy = dpo_stage._add_lora(policy, DPOConfig(lora_rank=lora_rank))
    return Layout([policy], [p for p in policy.parameters() if p.requires_grad], lambda ids: _lm_loss(policy, ids))


def online_dpo_layout(name: str) -> Layout:
    """Online DPO: the policy and the reference (each step's new pairs need its log-probs), plus an in-process
    judge of the policy's size (none when the judge is an endpoint)."""
    policy = load_causal_lm(name)
    reference = load_causal_lm(name).requires_grad_(False)
    judge = load_causal_lm(name).requires_grad_(False)
    return Layout([policy, reference, judge], list(policy.parameters()), lambda ids: _lm_loss(policy, ids))


def reward_model_layout(name: str, pad: int) -> Layout:
    model = load_reward_backbone(name, pad, torch.device("cpu"))
    return Layout([model], list(model.parameters()), lambda ids: model(input_ids=ids).logits.mean())


def measure(build: Callable[[], Layout], ids: torch.Tensor) -> Count:
    layout = build()
    optimizer = torch.optim.AdamW(layout.trainable, lr=1e-6, fused=True)
    layout.step(ids).backward()
    optimizer.step()
    return count(layout, optimizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()  # the sequence classifiers' "score.weight MISSING" load reports
    transformers.logging.disable_progress_bar()
    tokenizer = load_tokenizer(args.model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base = load_causal_lm(args.model)
    n_params = sum(p.numel() for p in base.parameters())  # tied embeddings once
    del base
    ids = torch.tensor([tokenizer("How do I pick a lock?")["input_ids"]])
    layouts: dict[str, Callable[[], Layout]] = {
        "PPO, separate value model": lambda: ppo_layout(args.model, pad, "separate"),
        "PPO, shared value head (default)": lambda: ppo_layout(args.model, pad, "shared"),
        f"LoRA-PPO r{LORA_RANK} (one base: policy, reference, value head)": lambda: ppo_layout(
            args.model, pad, "shared", LORA_RANK
        ),
        "reward model (training)": lambda: reward_model_layout(args.model, pad),
        "DPO (reference log-probs precomputed)": lambda: dpo_layout(args.model),
        f"DPO, LoRA r{LORA_RANK}": lambda: dpo_layout(args.model, LORA_RANK),
        "online DPO (policy + reference + in-process judge)": lambda: online_dpo_layout(args.model),
    }
    print(f"{args.model}: {n_params / 1e6:.1f} M parameters; model state per layout (exact tensor bytes)\n")
    print("| layout | trainable weights | frozen weights | gradients | AdamW state | total | bytes / parameter |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    per_param: dict[str, float] = {}
    mib = 2**20
    for label, build in layouts.items():
        c = measure(build, ids)
        per_param[label] = c.total / n_params
        print(
            f"| {label} | {c.weights_trainable / mib:.1f} MiB | {c.weights_frozen / mib:.1f} MiB | {c.grads / mib:.1f} MiB "
            f"| {c.optimizer / mib:.1f} MiB | {c.total / mib:.0f} MiB | {per_param[label]:.1f} |"
        )
    print("\nProjected model state (bytes / parameter x parameters; activations, KV cache and runtime not included):\n")
    head = " | ".join(f"{t} ({n / 1e9:.2f} B)" for t, n in TARGETS.items())
    print(f"| layout | {head} |")
    print("| --- |" + " ---: |" * len(TARGETS))
    for label, bpp in per_param.items():
        cells = []
        for n in TARGETS.values():
            state = bpp * n
            fits = [gpu for gpu, capacity in GPUS.items() if state <= capacity]
            cells.append(f"{state / 1e9:,.0f} GB ({'fits ' + fits[0] if fits else 'fits neither'})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
