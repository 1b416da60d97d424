"""Data parallelism for the training stages, without a second copy of their logic.

The same stage function runs in one process or under `torchrun --nproc_per_node N`: `init_distributed()` reads
the torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK) when it is set, and otherwise describes a single
process. Ranks use gloo on CPU and nccl on GPUs. Each global batch is dealt across ranks
(`rlaif.training.rank_micro_batches`), the loss module is wrapped in DistributedDataParallel (gradients are
averaged across ranks), metrics are summed with `all_reduce_sum`, and only rank 0 writes files.

    torchrun --nproc_per_node 2 -m rlaif sft --run-id demo
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import NamedTuple

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


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
