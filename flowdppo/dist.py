"""torch.distributed helpers.  A run launched by `torchrun` has RANK/WORLD_SIZE set; otherwise everything
here is a no-op for a single process.

Two ways to hold the trainable weights (config.parallel):

* replicate (LoRA, small models): every rank holds a full replica of the trainable parameters; gradients
  are averaged with one all-reduce per optimizer step (what DDP does, without hooking the policy's
  forward), so parameters stay bit-identical across ranks (docs/failure_modes.md: step-0 σ0).
* fsdp (full fine-tuning): FSDP2 (`torch.distributed.fsdp.fully_shard`) shards every transformer block and
  the root of the trainable transformer — and of its frozen reference copy — over the ranks; gradients are
  reduce-scattered (averaged) in backward, parameters and AdamW state are DTensor shards.

Checkpoints hold FULL tensors in both modes (`gather_full_state` / `shard_optimizer_state`), so a run
saved at one world size and mode resumes at any other.  Rewards are all-gathered so advantages use
statistics of the GLOBAL batch (the paper's global std).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as td
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    fsdp: bool = False   # trainable weights sharded with FSDP2 (gradients reduced in backward)

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
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(local_device(device)))
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank=td.get_rank(), world_size=td.get_world_size())


def shutdown() -> None:
    """Leave the process group cleanly: a barrier, then destroy it."""
    if td.is_initialized():
        td.barrier()
        td.destroy_process_group()


def end_rank_process(code: int = 0) -> None:
    """For a torchrun worker whose work is done and saved: leave the group, flush, and end the process
    without interpreter finalisation (os._exit).  A finished gloo rank otherwise aborts now and then while
    the interpreter tears down ("terminate called without an active exception", SIGABRT → torchrun reports
    the run failed): measured on 2-rank trainer runs here, 1/25 even after barrier + destroy, 0/40 with
    this.  A no-op (returns) in a single process."""
    import sys
    was_distributed = td.is_initialized()
    shutdown()
    if was_distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def local_device(device: str) -> str:
    """This process's device: under torchrun a bare "cuda" means cuda:LOCAL_RANK (one GPU per rank)."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def all_gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally-shaped tensors from all ranks along dim 0 (rank order)."""
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    td.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average .grad over ranks in one flat all-reduce (missing grads count as zeros).  A no-op under FSDP,
    whose backward already reduce-scattered the (averaged) gradients into each rank's shard."""
    if not info.enabled or info.fsdp:
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
    """Over ranks, by each key's reduction (flowdppo.metrics.reduction): mean, or max / min for extremes."""
    if not info.enabled:
        return stats
    from .metrics import reduction
    out = {}
    for k, v in stats.items():
        v = v.detach().clone().float()
        how = reduction(k)
        if how == "max":
            td.all_reduce(v, op=td.ReduceOp.MAX)
        elif how == "min":
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


# ----------------------------------------------------------------------------------------------------
# FSDP2 (full fine-tuning)
# ----------------------------------------------------------------------------------------------------
# ModuleList attributes holding the repeated blocks of the transformers we train (diffusers SD3/SD3.5,
# FLUX.1, FLUX.2: transformer_blocks + single_transformer_blocks).  Each block becomes one FSDP unit, so
# at most one block's full weights are gathered at a time besides the root's own (embeddings, heads).
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def fsdp_shard(module: nn.Module, device: str) -> nn.Module:
    """Shard `module` in place over all ranks with FSDP2: one unit per transformer block, then the root.
    Works for frozen modules too (the full-fine-tuning reference copy)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(torch.device(device).type, (td.get_world_size(),))
    for name in BLOCK_LISTS:
        for block in getattr(module, name, None) or ():
            fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


@contextlib.contextmanager
def gathered_for_inference(roots: Sequence[nn.Module], enabled: bool = True) -> Iterator[None]:
    """Inference passes (rollout, evaluation) over FSDP-sharded modules: all-gather each unit once, at its
    first forward, and keep it until the pass ends — instead of once per forward (num_steps × chunks
    times).  Costs the full weights of `roots` for the duration of the pass (still less than a replica
    with its gradients and AdamW state).  A no-op when disabled or for unsharded modules."""
    from torch.distributed.fsdp import FSDPModule

    roots = [r for r in roots if isinstance(r, FSDPModule)] if enabled else []
    for r in roots:
        r.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for r in roots:
            r.set_reshard_after_forward(True)
            r.set_reshard_after_forward(False, recurse=False)   # FSDP2's default for a root module
            for m in r.modules():
                if isinstance(m, FSDPModule):
                    m.reshard()


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def local_numel(params: Sequence[torch.Tensor]) -> int:
    """Elements this rank actually stores (a DTensor's local shard; a plain tensor whole)."""
    return sum((p.to_local() if _is_dtensor(p) else p).numel() for p in params)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (collective for a DTensor; identity otherwise)."""
    return t.full_tensor() if _is_dtensor(t) else t


def gather_full_state(state: Any, info: DistInfo) -> Any:
    """A (nested) state dict with every DTensor replaced by its full tensor on CPU — kept on rank 0 only
    (other ranks get None leaves).  Collective: every rank calls it with the same structure, and the
    tensors are gathered one at a time, so at most one full tensor is in flight besides rank 0's copy."""
    if isinstance(state, dict):
        return {k: gather_full_state(v, info) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(gather_full_state(v, info) for v in state)
    if isinstance(state, torch.Tensor):
        full = full_tensor(state).detach()
        return full.to("cpu", copy=True) if info.is_main else None
    return state


def shard_optimizer_state(optimizer: torch.optim.Optimizer, full: dict) -> dict:
    """The inverse of gather_full_state for an optimizer: full per-parameter state tensors (saved at any
    world size) cut into the DTensor layout of this optimizer's (sharded) parameters, ready for
    optimizer.load_state_dict.  Scalars (AdamW's step) and plain-tensor parameters pass through."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for idx, entry in full["state"].items():
        p = params[int(idx)]
        state[idx] = {k: (distribute_tensor(v.to(p.device, p.dtype), p.device_mesh, p.placements)
                          if _is_dtensor(p) and isinstance(v, torch.Tensor) and v.shape == p.shape else v)
                      for k, v in entry.items()}
    return {"state": state, "param_groups": full["param_groups"]}
