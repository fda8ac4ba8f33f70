"""Settings, run context and helpers shared by the kernel and the loss properties.

Statistics: every Monte-Carlo comparison is made at Z_TOL = 6 standard errors (two-sided false-alarm
probability 2.0e-9 per comparison for a Gaussian statistic); each MC result states its seed, sample
count and the run's false-alarm bound.  Every random draw comes from a torch.Generator seeded from
(seed, property, step), so runs are reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from .. import sde
from .adapters import KernelOut, Subject
from .report import FAIL, PASS, SKIP, Result

Z_TOL = 6.0
FALSE_ALARM_PER_CHECK = math.erfc(Z_TOL / math.sqrt(2.0))   # ≈ 1.97e-9
STORAGE_DELTA = 1e-7             # the paper's Flow-DPPO threshold (per-dim KL)
STORAGE_TOL = 0.01               # the stored anchors may move the KL read at δ by ≤ 1% of δ
DET_RTOL = 1e-3                  # deterministic comparisons of fp32 quantities
SYNTH = (0.5, 0.25, 1.0)         # (σ, σ_next, η) of the synthetic loss batches: every kernel's std is dyadic
EQ = {"flow_sde": "Eq. 2", "cps": "Eq. 3", "dance_sde": "Eq. 2,s=η", "custom": "—"}
LABEL = {"flow_sde": "Flow-SDE", "cps": "CPS", "dance_sde": "Dance-SDE", "custom": "custom"}
SAMPLERS: tuple[str, ...] = (*sde.SDE_KERNELS, "custom")


@dataclass(frozen=True)
class Settings:
    """What the runner is told about the implementation and how hard to look.

    sampler: which paper kernel the user's step implements (custom: none — kernel_matches_paper skips).
    eta, num_steps, shift: the σ grid (SD3-style static shift) and noise level the steps are taken on;
      the default is the SD3 setting of the published recipes (10 steps, shift 3, η = 0.7).
    dtype: the compute dtype the functions are called in.  mc_samples × mc_dims draws per step."""
    sampler: str = "flow_sde"
    eta: float = 0.7
    num_steps: int = 10
    shift: float = 3.0
    dtype: str = "float32"
    seed: int = 0
    mc_samples: int = 2048
    mc_dims: int = 64
    kl_reduction: str = "auto"

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r}: choose one of {SAMPLERS}")
        if self.kl_reduction not in ("auto", "per_dim", "sum"):
            raise ValueError(f"--kl-reduction {self.kl_reduction!r}: choose auto, per_dim or sum")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype {self.dtype!r}: choose float32 or float64")
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"--eta {self.eta}: must lie in (0, 1]")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class Context:
    subject: Subject
    settings: Settings
    kernel_is_reference: bool = False    # the kernel is flowdppo.sde (no --kernel given)
    cache: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------
def train_steps(s: Settings) -> list[tuple[int, float, float]]:
    """(index, σ, σ_next) of every step with a positive std, starting at σ = 1 (step 0)."""
    grid = sde.shifted_sigmas(s.num_steps, s.shift).tolist()
    out = []
    for i, (a, b) in enumerate(zip(grid[:-1], grid[1:])):
        positive = (float(sde.transition_std(s.sampler, a, b, s.eta)) > 0) if s.sampler in sde.SDE_KERNELS else b > 0
        if positive:
            out.append((i, a, b))
    return out


def _gen(s: Settings, prop: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * s.seed + 1009 * prop + step)


def _randn(gen, *shape, dtype) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _std_like(std, mean: Tensor) -> Tensor:
    """The reported std broadcast to the mean's shape ([B] or [B, 1, …] or scalar)."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if std.ndim == 1 and mean.ndim > 1 and std.shape[0] == mean.shape[0]:
        std = std.reshape(-1, *([1] * (mean.ndim - 1)))
    return std.broadcast_to(mean.shape)


def _std_b(std, mean: Tensor) -> Tensor:
    """The reported std as the loss gets it: a tensor broadcastable to the mean ([B] → [B, 1, …])."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if std.ndim == 1 and mean.ndim > 1 and std.shape[0] == mean.shape[0]:
        std = std.reshape(-1, *([1] * (mean.ndim - 1)))
    return std


def _scalar(std: Tensor) -> float:
    return float(std.double().reshape(-1).median())


def _call_kernel(ctx: Context, **kw) -> KernelOut:
    s = ctx.settings
    return ctx.subject.kernel(eta=s.eta, **kw)


def _step_name(i: int, sig: float, sn: float) -> str:
    return f"step {i} σ={sig:.4f}→{sn:.4f}"


def _known_stds(s: Settings, sig: float, sn: float) -> dict[str, float]:
    """Stds a step is known to be confused with, from flowdppo.sde (the one home of transition maths)."""
    out = {f"the {LABEL[k]} std": float(sde.transition_std(k, sig, sn, s.eta)) for k in sde.SDE_KERNELS}
    out["the Flow-SDE pre-factor η·√(σ/(1−σ)) — the std without its √(−dt)"] = float(
        sde.flow_sde_noise_scale(sig, sn, s.eta))
    out["the CPS std without its sin(ηπ/2) (σ_next alone)"] = float(
        sde.transition_std("cps", sig, sn, s.eta)) / sde.cps_mixing(s.eta)[1]
    return out


def explain_std(used: list[float], true: list[float], steps, s: Settings, *, rtol: float = 2e-3,
                rtol_true: Optional[float] = None) -> str:
    """Name the pattern of a wrong std (used vs true per step), or '' if they agree.

    `used` is deterministic (compared with known stds at rtol); `true` may be a Monte-Carlo estimate,
    compared at rtol_true (default rtol)."""
    rtol_true = rtol if rtol_true is None else rtol_true
    ratios = [u / t for u, t in zip(used, true)]
    bad = [k for k, q in enumerate(ratios) if abs(q - 1.0) > rtol_true]
    if not bad:
        return ""
    if bad == [0]:
        return (f"only the σ = 1 step is off (std {ratios[0]:.3g}× the sampler's; steps ≥ 1 agree): the σ = 1 "
                "rule "
                "(1 − σ replaced by 1 − σ_next there) differs")
    known = [_known_stds(s, sig, sn) for _, sig, sn in steps]
    for name in known[0]:
        cand = [kn[name] for kn in known]
        if all(c > 0 and abs(u / c - 1.0) <= rtol for u, c in zip(used, cand)):
            if not all(abs(t / c - 1.0) <= rtol_true for t, c in zip(true, cand)):
                return f"it equals {name} at every step"
    lo, hi = min(ratios), max(ratios)
    if hi / lo - 1.0 <= 2.0 * rtol_true:
        return f"a constant factor {ratios[0]:.4g} at every step"
    return f"the factor varies from {lo:.3g} to {hi:.3g} over the steps"


def _result(name, eq, ok, error, tol, unit, meaning, details=(), stat=None, status=None) -> Result:
    return Result(name=name, equation=eq, status=status or (PASS if ok else FAIL), error=error, tolerance=tol,
                  error_unit=unit, meaning=meaning, details=list(details), stat=stat)


def _skip(name, eq, why) -> Result:
    return Result(name=name, equation=eq, status=SKIP, error=None, tolerance=None, error_unit="—", meaning=why)


def _stat(s: Settings, samples: int, comparisons: int) -> dict:
    return {"seed": s.seed, "samples_per_step": samples, "z_tol": Z_TOL,
            "false_alarm": f"≤ {comparisons * FALSE_ALARM_PER_CHECK:.1e} ({comparisons} comparisons × 2.0e-9)"}
