"""torch.distributed helpers.  A run launched by `torchrun` has RANK/WORLD_SIZE set; otherwise everything
here is a no-op for a single process.

Design: every rank holds a full replica of the trainable parameters; gradients are averaged with one
all-reduce per optimizer step (what DDP does, without hooking the policy's forward), so parameters stay
bit-identical across ranks (anchors F10).  Rewards are all-gathered so advantages use statistics of the
GLOBAL batch (the paper's global std).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank=td.get_rank(), world_size=td.get_world_size())


def all_gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally-shaped tensors from all ranks along dim 0 (rank order)."""
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    td.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average .grad over ranks in one flat all-reduce (missing grads count as zeros)."""
    if not info.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    td.all_reduce(flat, op=td.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def reduce_stats(stats: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Mean over ranks, except *_max (max) and *_min (min)."""
    if not info.enabled:
        return stats
    out = {}
    for k, v in stats.items():
        v = v.detach().clone().float()
        if k.endswith("_max"):
            td.all_reduce(v, op=td.ReduceOp.MAX)
        elif k.endswith("_min"):
            td.all_reduce(v, op=td.ReduceOp.MIN)
        else:
            td.all_reduce(v, op=td.ReduceOp.SUM)
            v /= info.world_size
        out[k] = v
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        td.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]
