"""The policy protocol: what rollout and the trainer need from a flow model, nothing more.

A policy is a velocity field v_θ(x_σ, σ, c) in σ-space (σ = 1 noise, σ = 0 data) plus prompt encoding
and decoding.  Conversion from σ to a model's own timestep (SD3/FLUX: t = 1000·σ) happens inside
`velocity`, at the model-call boundary — never in the math (flowdppo.sde).

Conditions are a dict of batch-first tensors (`Cond`).  When classifier-free guidance may be used,
`encode_prompts` also returns the unconditional embeddings under keys prefixed "uncond_", and
`velocity(..., guidance_scale=w)` returns v_u + w·(v_c − v_u).  w = 1 skips the unconditional pass.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

Cond = dict[str, Tensor]


@runtime_checkable
class Policy(Protocol):
    latent_shape: tuple[int, ...]   # per-sample latent shape (C, H, W); D = prod(latent_shape)

    def encode_prompts(self, prompts: Sequence[str]) -> Cond: ...
    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond, *, guidance_scale: float = 1.0) -> Tensor: ...
    def decode(self, x: Tensor) -> Tensor: ...          # latents → images [B, C, H, W] in [0, 1]
    def trainable_parameters(self) -> list[nn.Parameter]: ...
    def reference(self) -> ContextManager[None]: ...    # inside: velocity() is the frozen base π_ref
    def trainable_state_dict(self) -> dict[str, Tensor]: ...
    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None: ...
    # Optional: fsdp_roots() -> list[nn.Module] — for full fine-tuning, the trainable transformer (whose
    # state_dict() is trainable_state_dict()) and its frozen reference, to be sharded with FSDP2 under
    # config.parallel = "fsdp"/"auto"; [] or absent: the policy is replicated across ranks.


def cond_index(cond: Cond, idx) -> Cond:
    """Select rows (an index tensor, list or slice) of every condition tensor."""
    return {k: v[idx] for k, v in cond.items()}


def cond_repeat(cond: Cond, repeats: int) -> Cond:
    """Repeat each prompt's conditions `repeats` times consecutively ([P, …] → [P·repeats, …])."""
    return {k: v.repeat_interleave(repeats, dim=0) for k, v in cond.items()}


def cfg_combine(v_uncond: Tensor, v_cond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: v_u + w·(v_c − v_u)."""
    return v_uncond + guidance_scale * (v_cond - v_uncond)


@contextlib.contextmanager
def swapped_modules(owner: nn.Module, attr: str, replacement: nn.Module) -> Iterator[None]:
    """Temporarily replace owner.<attr> (used for a frozen full-fine-tuning reference)."""
    original = getattr(owner, attr)
    setattr(owner, attr, replacement)
    try:
        yield
    finally:
        setattr(owner, attr, original)


def split_cond(cond: Cond) -> tuple[Cond, Cond]:
    """(conditional, unconditional) parts of a Cond; the unconditional keys lose their prefix."""
    pos = {k: v for k, v in cond.items() if not k.startswith("uncond_")}
    neg = {k[len("uncond_"):]: v for k, v in cond.items() if k.startswith("uncond_")}
    return pos, neg


def sigma_batch(sigma, batch: int, like: Tensor) -> Tensor:
    """σ as a [B] tensor on like's device (float32)."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=like.device)
    return s.expand(batch) if s.ndim == 0 else s
