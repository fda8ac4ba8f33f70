"""The conformance properties: each a function (Context) → Result, run against a user's canonical kernel and
loss (adapters.py).  Equation numbers are the paper's (arXiv 2606.11025).

Kernel properties (need only the kernel):
  std_matches_sampler   Eq. 4   the std a step reports is the std it samples with (Monte-Carlo), every step
  kernel_matches_paper  Eq. 2/3 mean and std equal the declared sampler's closed form (oracle: flowdppo.sde)
  logp_normalised       Eq. 4/6 log-prob = the normalised Gaussian log-density (oracle: torch.distributions)
  anchor_precision      Eq. 14  anchors as stored: precision, and the per-dim KL they read at δ = 1e-7
  on_policy_identity    Eq. 6/17 replay at θ = θ_old: r ≡ 1, KL ≡ 0 bit for bit; nothing masked; ∇ = policy grad.
Loss properties:
  mask_kl_exact         Eq. 14  the KL the mask compares with δ = the sampler's KL (MC) = torch.distributions
  mask_truth_table      Eq. 18  27 cells of (Â, r, KL) incl. r = 1, Â = 0 and KL = δ ties
  gradients             Eq. 18  the mask is a stop-gradient gate; blocked ⇒ ∂L = 0 exactly; finite at |log r| = 1e4
  delta_monotone        Eq. 18  raising δ never blocks more
  loss_normalisation    Eq. 17  the masked surrogate is averaged over ALL samples (masked ones count as 0)

Statistics (_base.py): Monte-Carlo comparisons at 6 standard errors, each result stating its seed,
sample count and false-alarm bound; everything else is deterministic (dyadic inputs, exact ties).
The kernel properties live in kernel_properties.py, the loss properties in loss_properties.py.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ._base import SAMPLERS, Context, Settings, train_steps  # noqa: F401  (the public names of the runner)
from .adapters import Subject
from .kernel_properties import (anchor_precision, kernel_matches_paper, logp_normalised, on_policy_identity,
                                std_matches_sampler)
from .loss_properties import delta_monotone, gradients, loss_normalisation, mask_kl_exact, mask_truth_table
from .report import FAIL, Report, Result

PROPERTIES: tuple[tuple[str, Callable[[Context], Result]], ...] = (
    ("std_matches_sampler", std_matches_sampler),
    ("kernel_matches_paper", kernel_matches_paper),
    ("logp_normalised", logp_normalised),
    ("anchor_precision", anchor_precision),
    ("on_policy_identity", on_policy_identity),
    ("mask_kl_exact", mask_kl_exact),
    ("mask_truth_table", mask_truth_table),
    ("gradients", gradients),
    ("delta_monotone", delta_monotone),
    ("loss_normalisation", loss_normalisation),
)
PROPERTY_NAMES: tuple[str, ...] = tuple(n for n, _ in PROPERTIES)


def run_properties(ctx: Context, only: Optional[list[str]] = None) -> list[Result]:
    """Run the properties (all, or those named in `only`) and return their results in table order.

    A property whose call into the user's code raises is reported as FAIL with the exception, so one broken
    function does not hide the other verdicts."""
    if only:
        unknown = sorted(set(only) - set(PROPERTY_NAMES))
        if unknown:
            raise ValueError(f"--only {unknown}: unknown properties. Fix: choose from {PROPERTY_NAMES}")
    results = []
    with torch.random.fork_rng(devices=[]):
        for name, fn in PROPERTIES:
            if only and name not in only:
                continue
            torch.manual_seed(ctx.settings.seed)     # codes that ignore the generator still run reproducibly
            try:
                results.append(fn(ctx))
            except Exception as e:                   # noqa: BLE001
                results.append(Result(name=name, equation="", status=FAIL, error=math.inf, tolerance=None,
                                      error_unit="—", meaning=f"raised {type(e).__name__}: {e}"))
    return results


def check(subject: Subject, settings: Optional[Settings] = None, *, only: Optional[list[str]] = None,
          kernel_is_reference: bool = False) -> Report:
    """Run the properties on `subject` and return the Report (use `.assert_ok()` inside a pytest test)."""
    settings = settings or Settings()
    ctx = Context(subject=subject, settings=settings, kernel_is_reference=kernel_is_reference)
    results = run_properties(ctx, only=only)
    header = [f"flowdppo conformance — {subject.name}",
              f"  settings: sampler={settings.sampler} η={settings.eta} steps={settings.num_steps} "
              f"shift={settings.shift} "
              f"dtype={settings.dtype} seed={settings.seed}"] + [f"  notes: {n}" for n in subject.notes]
    return Report(results=results, header=header)
