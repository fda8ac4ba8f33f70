"""Calling conventions → the two canonical callables the conformance properties talk to.

The properties never call a user's function directly.  They call

    kernel(*, x, v, sigma, sigma_next, eta, x_next=None, generator=None) -> KernelOut
        x, v          [B, *latent]  state x_σ and model output (velocity v = ε − x0)
        sigma, *_next  Python floats, one reverse step σ → σ_next < σ
        x_next=None   sample the next state with `generator`; given: score that x_next (replay)
        KernelOut     x_next [B, *latent], logp [B], mean [B, *latent], std (broadcastable to mean)

    loss(*, logp, old_logp, mean, old_mean, std, sigma, sigma_next, eta, advantages, delta) -> 0-d tensor
        logp, old_logp [B]; mean, old_mean [B, *latent]; std broadcastable; advantages [B]; delta float.
        The returned scalar is what the trainer MINIMISES for one trained step (already reduced over
        the batch); it may depend on the inputs only as the user's code makes it.

An adapter wraps one calling convention into that shape and does nothing else: no maths, no fixing.
Built-in conventions (describe yours with `--kernel-adapter` / `--adapter`, or write a 5-line adapter):

Kernels
  "flowdppo"  flowdppo.sde.step: fn(kernel_name, *, x, v, sigma, sigma_next, eta, x_next, generator) → an
              object with x_next, mean, std, logp_per_dim, logp_sum.  The kernel name is the `sampler`
              setting; `logp_reduction` picks logp_per_dim or logp_sum.
  "tuple"     the scheduler-step shape most published samplers use:
              fn(model_output, sigma, sigma_next, sample, eta, prev_sample=None, generator=None)
                  → (prev_sample, log_prob, prev_sample_mean, std)
              positional arguments in that order; `prev_sample` given means "score this sample".  The
              fourth element is taken to BE the transition std of the sampled Gaussian — a code that
              returns the Flow-SDE pre-factor there is then reported, because that is what its consumers
              divide by.

Losses
  "flowdppo"  flowdppo.losses convention: fn(*, logp, old_logp, mean, old_mean, std, advantages, delta)
              → (per_sample_loss [B], stats).  The per-sample loss is reduced by the mean over all B
              samples — what flowdppo.trainer does (sum / (rows·T)) — so the normalisation property
              reports the trainer's reduction, not the loss function's.
  "kl_tensor" the "log-probs, old log-probs, advantages and a KL tensor" shape:
              fn(log_prob, old_log_prob, advantages, kl, delta) → scalar loss, (loss, stats) or a [B] loss
              (a [B] loss is reduced by the mean over all samples, and the report says so).  The KL comes
              from the user's own KL function (`kl_fn`), in one of two conventions:
                "std"       kl_fn(mean, old_mean, std) → [B]            (the std handed over by the kernel)
                "schedule"  kl_fn(mean, old_mean, sigma, sigma_next, eta) → [B]  (σ_t recomputed in the loss)
              Our own exact KL in the "std" convention is flowdppo.divergence:kl_per_dim.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..sde import SDE_KERNELS

KERNEL_ADAPTERS: tuple[str, ...] = ("flowdppo", "tuple")
LOSS_ADAPTERS: tuple[str, ...] = ("flowdppo", "kl_tensor")
KL_ADAPTERS: tuple[str, ...] = ("std", "schedule")


@dataclass
class KernelOut:
    """One step as the properties see it.  logp [B] in the kernel's own reduction (sum or per-dim mean)."""
    x_next: Tensor
    logp: Tensor
    mean: Tensor
    std: Tensor


@dataclass
class Subject:
    """The implementation under test: a canonical kernel, an optional canonical loss, the anchor store.

    `store` is applied to every anchor (old mean, old log-prob) between rollout and update — the
    trajectory buffer.  The identity stores fp32 (or whatever the kernel returned); `dtype_store`
    emulates a buffer kept in another dtype.  `notes` are printed in the report header."""
    kernel: Callable[..., KernelOut]
    loss: Optional[Callable[..., Tensor]] = None
    store: Callable[[Tensor], Tensor] = field(default=lambda t: t)
    name: str = "subject"
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# Loading user callables
# ----------------------------------------------------------------------------------------------------
def load_callable(spec: str, option: str) -> Callable:
    """`MODULE:NAME` (importable module) or `path/to/file.py:NAME` → the callable.  NAME may be dotted."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{option} {spec!r}: expected MODULE:CALLABLE or path/to/file.py:CALLABLE. "
                         f"Fix: e.g. {option} mypackage.sampler:sde_step")
    mod_name, attr = spec.rsplit(":", 1)
    if mod_name.endswith(".py") or "/" in mod_name or "\\" in mod_name:
        path = Path(mod_name).resolve()
        if not path.is_file():
            raise ValueError(f"{option} {spec!r}: no file {path}. Fix: give a path relative to the current "
                             "directory or an importable module name")
        key = f"_conformance_user_{abs(hash(str(path)))}"
        if key in sys.modules:
            module = sys.modules[key]
        else:
            ispec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(ispec)
            sys.modules[key] = module
            sys.path.insert(0, str(path.parent))   # let the file import its neighbours
            try:
                ispec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(f"{option} {spec!r}: cannot import {mod_name!r} ({e}). Fix: run from the "
                             "directory that contains it, set PYTHONPATH, or give a file path") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{option} {spec!r}: {mod_name} has no attribute {attr!r}. Fix: check the name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{option} {spec!r}: {attr} is not callable")
    return obj


# ----------------------------------------------------------------------------------------------------
# Kernel adapters
# ----------------------------------------------------------------------------------------------------
def _as_logp(lp: Any, batch: int, option: str) -> Tensor:
    lp = torch.as_tensor(lp)
    if lp.ndim > 1:                       # per-element log-probs: leave the reduction to the caller's mean
        raise ValueError(f"{option}: the kernel returned a log-prob of shape {tuple(lp.shape)}; expected [B] "
                         "(one log π per sample). Fix: reduce over latent dims (mean or sum) in the kernel")
    return lp.reshape(batch) if lp.ndim == 1 else lp.expand(batch)


def flowdppo_kernel(fn: Callable, *, sampler: str, logp_reduction: str = "per_dim") -> Callable[..., KernelOut]:
    """flowdppo.sde.step (or anything with its signature and Step fields) bound to one kernel name."""
    if logp_reduction not in ("per_dim", "sum"):
        raise ValueError(f"logp_reduction={logp_reduction!r}: the flowdppo kernel returns both; choose per_dim or sum")

    def kernel(*, x, v, sigma, sigma_next, eta, x_next=None, generator=None) -> KernelOut:
        st = fn(sampler, x=x, v=v, sigma=sigma, sigma_next=sigma_next, eta=eta, x_next=x_next, generator=generator)
        lp = st.logp_per_dim if logp_reduction == "per_dim" else st.logp_sum
        return KernelOut(x_next=st.x_next, logp=_as_logp(lp, x.shape[0], "--kernel"), mean=st.mean, std=st.std)
    return kernel


def tuple_kernel(fn: Callable) -> Callable[..., KernelOut]:
    """fn(model_output, sigma, sigma_next, sample, eta, prev_sample=None, generator=None)
    → (prev_sample, log_prob, prev_sample_mean, std)."""
    def kernel(*, x, v, sigma, sigma_next, eta, x_next=None, generator=None) -> KernelOut:
        out = fn(v, sigma, sigma_next, x, eta, x_next, generator)
        if not isinstance(out, (tuple, list)) or len(out) != 4:
            raise ValueError("--kernel-adapter tuple: the kernel must return (prev_sample, log_prob, "
                             f"prev_sample_mean, std), got {type(out).__name__}. Fix: wrap it, or write an adapter")
        nxt, lp, mean, std = out
        return KernelOut(x_next=nxt, logp=_as_logp(lp, x.shape[0], "--kernel"), mean=mean,
                         std=torch.as_tensor(std, dtype=mean.dtype, device=mean.device))
    return kernel


def make_kernel(fn: Callable, adapter: str, *, sampler: str, logp_reduction: str = "per_dim"):
    if adapter == "flowdppo":
        if sampler not in SDE_KERNELS:
            raise ValueError(f"--kernel-adapter flowdppo with --sampler {sampler!r}: the flowdppo step takes the "
                             "kernel's name. Fix: choose --sampler flow_sde, cps or dance_sde")
        return flowdppo_kernel(fn, sampler=sampler, logp_reduction=logp_reduction)
    if adapter == "tuple":
        return tuple_kernel(fn)
    raise ValueError(f"--kernel-adapter {adapter!r}: unknown. Fix: choose one of {KERNEL_ADAPTERS}, or wrap your "
                     "kernel into the tuple convention")


# ----------------------------------------------------------------------------------------------------
# Loss adapters
# ----------------------------------------------------------------------------------------------------
def _scalar_loss(out: Any, batch: int, notes: Optional[list[str]]) -> Tensor:
    """(loss, stats) / loss → a 0-d loss; a [B] loss is averaged over all samples (and noted once)."""
    loss = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(loss, Tensor):
        raise ValueError(f"--loss: expected a tensor (or (tensor, stats)), got {type(loss).__name__}")
    if loss.ndim == 0:
        return loss
    if loss.shape == (batch,):
        if notes is not None and not any(n.startswith("per-sample loss") for n in notes):
            notes.append("per-sample loss [B]: reduced here by the mean over all samples (as flowdppo.trainer "
                         "does); the normalisation property then describes that reduction")
        return loss.mean()
    raise ValueError(f"--loss: returned a loss of shape {tuple(loss.shape)}; expected a scalar or [B={batch}]")


def flowdppo_loss(fn: Callable, *, notes: Optional[list[str]] = None, **hyper) -> Callable[..., Tensor]:
    """flowdppo.losses convention (keyword-only, per-sample loss + stats)."""
    def loss(*, logp, old_logp, mean, old_mean, std, sigma, sigma_next, eta, advantages, delta) -> Tensor:
        out = fn(logp=logp, old_logp=old_logp, mean=mean, old_mean=old_mean, std=std, advantages=advantages,
                 delta=delta, **hyper)
        return _scalar_loss(out, logp.shape[0], notes)
    return loss


def kl_function(kl_fn: Callable, adapter: str) -> Callable[..., Tensor]:
    """A user KL function in the "std" or "schedule" convention → kl(mean, old_mean, std, sigma, sigma_next, eta)."""
    if adapter == "std":
        return lambda mean, old_mean, std, sigma, sigma_next, eta: kl_fn(mean, old_mean, std)
    if adapter == "schedule":
        return lambda mean, old_mean, std, sigma, sigma_next, eta: kl_fn(mean, old_mean, sigma, sigma_next, eta)
    raise ValueError(f"--kl-adapter {adapter!r}: unknown. Fix: choose one of {KL_ADAPTERS}")


def kl_tensor_loss(fn: Callable, kl_fn: Callable, *, kl_adapter: str = "std",
                   notes: Optional[list[str]] = None) -> Callable[..., Tensor]:
    """fn(log_prob, old_log_prob, advantages, kl, delta) with kl from the user's KL function."""
    kl_of = kl_function(kl_fn, kl_adapter)

    def loss(*, logp, old_logp, mean, old_mean, std, sigma, sigma_next, eta, advantages, delta) -> Tensor:
        kl = kl_of(mean, old_mean, std, sigma, sigma_next, eta)
        return _scalar_loss(fn(logp, old_logp, advantages, kl, delta), logp.shape[0], notes)
    return loss


def make_loss(fn: Callable, adapter: str, *, kl_fn: Optional[Callable] = None, kl_adapter: str = "std",
              notes: Optional[list[str]] = None) -> Callable[..., Tensor]:
    if adapter == "flowdppo":
        names = ("logp", "old_logp", "mean", "old_mean", "std", "advantages", "delta")
        if not accepts_keywords(fn, names):
            raise ValueError(f"--adapter flowdppo: {getattr(fn, '__name__', fn)!r} does not take the keywords "
                             f"{names}. Fix: use --adapter kl_tensor for fn(log_prob, old_log_prob, advantages, kl, "
                             "delta), or wrap your loss")
        return flowdppo_loss(fn, notes=notes)
    if adapter == "kl_tensor":
        if kl_fn is None:
            raise ValueError("--adapter kl_tensor needs the KL function your trainer feeds the loss. Fix: pass "
                             "--kl MODULE:CALLABLE (or --kl flowdppo.divergence:kl_per_dim to use the exact Eq. 14)")
        return kl_tensor_loss(fn, kl_fn, kl_adapter=kl_adapter, notes=notes)
    raise ValueError(f"--adapter {adapter!r}: unknown. Fix: choose one of {LOSS_ADAPTERS}")


# ----------------------------------------------------------------------------------------------------
# Anchor storage
# ----------------------------------------------------------------------------------------------------
def dtype_store(dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """A trajectory buffer kept in `dtype`: round trip to it and back to the compute dtype."""
    return lambda t: t.to(dtype).to(t.dtype)


def accepts_keywords(fn: Callable, names: tuple[str, ...]) -> bool:
    """Whether fn can be called with these keyword arguments (used to give a clear adapter hint)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params for n in names)
