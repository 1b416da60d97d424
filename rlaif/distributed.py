"""Data parallelism for the training stages, without a second copy of their logic.

The same stage function runs in one process or under `torchrun --nproc_per_node N`: `init_distributed()` reads
the torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK) when it is set, and otherwise describes a single
process. Ranks use gloo on CPU and nccl on GPUs. Each global batch is dealt across ranks
(`rlaif.training.rank_micro_batches`), the loss module is wrapped in DistributedDataParallel (gradients are
averaged across ranks), metrics are summed with `all_reduce_sum`, and only rank 0 writes files.

PPO (rlaif/stages/ppo.py) uses the explicit collectives below instead of DDP: each rank rolls out its slice of
the step's prompts, `gather_rows` gives every rank the whole rollout (so whitening, the KL controller and the
metrics see the global batch), each rank runs its share of every minibatch's micro-batches, and
`all_reduce_grads` sums the gradients before the identical optimizer step on every rank.

    torchrun --nproc_per_node 2 -m rlaif sft --run-id demo
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")
# Gradients are summed in flat buckets of this many elements (100 MB of fp32, DDP's default bucket is 25 MB):
# one collective per bucket instead of one per parameter tensor, without a second full copy of the gradients.
GRAD_BUCKET_NUMEL = 25_000_000


class DistInfo(NamedTuple):
    """Where this process sits in the data-parallel group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by the torchrun environment, or describe a single process.

    Idempotent: a second call (the next stage in the same process) reuses the group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return DistInfo(0, 1, 0, chosen)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    chosen = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, chosen)
    return DistInfo(rank, world_size, local_rank, chosen)


def wrap_ddp(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around `module` when there is more than one rank, else `module` itself."""
    if info.world_size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of `values` over ranks (float64, so token counts and loss sums stay exact enough)."""
    if info.world_size == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_max(value: int, info: DistInfo) -> int:
    """The largest `value` over ranks (e.g. the longest response length, to pad every rank's rows to)."""
    if info.world_size == 1:
        return int(value)
    tensor = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_reduce_tensor_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise sum over ranks of a float tensor (a new tensor; the input is left as it is)."""
    if info.world_size == 1:
        return tensor.clone()
    summed = tensor.detach().to(device=info.device, dtype=torch.float64)  # float64: sums of means stay exact enough
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.to(device=tensor.device, dtype=tensor.dtype)


def gather_rows(tensors: Sequence[torch.Tensor], info: DistInfo) -> list[torch.Tensor]:
    """Each tensor's rows from every rank, concatenated in rank order: (N, ...) per rank -> (world_size x N, ...).

    Every rank must pass tensors of the same shapes (pad them first). Bool tensors travel as uint8, which gloo
    and nccl both reduce and gather.
    """
    if info.world_size == 1:
        return list(tensors)
    gathered = []
    for tensor in tensors:
        wire = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        wire = wire.to(info.device).contiguous()
        parts = [torch.empty_like(wire) for _ in range(info.world_size)]
        dist.all_gather(parts, wire)
        whole = torch.cat(parts, dim=0).to(tensor.device)
        gathered.append(whole.bool() if tensor.dtype == torch.bool else whole)
    return gathered


def all_reduce_grads(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum the gradients of `params` over ranks, in place (a sum, not DDP's mean: see the caller's loss weights).

    A parameter without a gradient on this rank contributes zeros and gets the summed gradient, so every rank's
    optimizer steps the same parameters and the replicas stay identical.
    """
    if info.world_size == 1:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in params], GRAD_BUCKET_NUMEL):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_parameters(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Rank 0's values of `params` on every rank (as DDP does at wrap time): the replicas start identical."""
    if info.world_size == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's `obj` (picklable) on every rank, e.g. the metric history that only rank 0 reads from disk."""
    if info.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _buckets(tensors: list[torch.Tensor], numel: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of tensors of one dtype and device with at most `numel` elements each (or one tensor)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for tensor in tensors:
        last = buckets[-1] if buckets else None
        fits = last is not None and size + tensor.numel() <= numel
        if fits and (last[0].dtype, last[0].device) == (tensor.dtype, tensor.device):
            last.append(tensor)
            size += tensor.numel()
        else:
            buckets.append([tensor])
            size = tensor.numel()
    return buckets


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
    if info.world_size > 1:
        dist.barrier()


def no_sync(module: torch.nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation (one sync per step)."""
    import contextlib

    if sync or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()


def shutdown_distributed() -> None:
    """Leave the process group (end of a torchrun command); a no-op in a single process."""
    if dist.is_initialized():
        dist.destroy_process_group()
