"""DistributedDataParallel set-up for ``torchrun --nproc_per_node N -m robopolicy train ...``.

Without torchrun's environment variables everything runs in one process, unchanged. With them,
each rank draws its own batches (seed + rank), gradients are averaged by DDP, and rank 0 alone
logs, evaluates and writes checkpoints. CPU runs use the gloo backend, CUDA runs NCCL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # else every rank would open a context (and seed RNG) on GPU 0
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return info


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def max_replica_difference(module: torch.nn.Module) -> float:
    """Largest absolute difference between any rank's parameters and rank 0's.

    DDP keeps replicas identical by construction; this checks it at the end of training, so a
    silent divergence (e.g. a parameter outside the DDP graph) is caught and logged.
    """
    params = list(module.parameters())
    worst = torch.zeros((), device=params[0].device)
    for param in params:
        reference = param.detach().clone()
        dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (param.detach() - reference).abs().max())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
