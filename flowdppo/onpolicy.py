"""The live on-policy guard: does the update see the same policy the rollout sampled from?

The first minibatch after a rollout is scored with the weights that produced the rollout, so its
log-ratio (Eq. 6) must be exactly 0: the trainer replays each forward at the rollout's micro-batch
geometry, in fp32 on the anchor path.  On CPU it is 0 bit for bit; compiled or batch-shape-dependent GPU
kernels leave ~1e-5 per dim.  Anything much larger means the rollout and the update ran different
functions, and every ratio, KL and mask decision of the iteration is then measured against the wrong
anchor: a rollout engine that ignored the LoRA weights once sampled from the frozen base while the
logged gradient norm and KL blew up, and nothing warned.

`check` is called by the trainer once per iteration with the largest per-dim |log r| of that minibatch
(logged as `onpolicy/abs_log_ratio_max`); above config.onpolicy_tolerance it warns through `warnings`
(category OffPolicyRolloutWarning) and the `flowdppo` logger (stderr unless logging is configured).
"""
from __future__ import annotations

import logging
import warnings
from typing import Optional

LOG = logging.getLogger("flowdppo")

LIKELY_CAUSES = (
    "the rollout ignored the trained weights (LoRA adapter disabled or not synced, a stale copy, the "
    "reference model used for sampling)",
    "rollout and update differ in dtype, autocast or torch.compile (one compiled, the other eager)",
    "dropout or another train-mode layer is active in one of the two passes",
    "nondeterministic or batch-shape-dependent kernels (rollout chunks differ from the update's micro-batches)",
)


class OffPolicyRolloutWarning(UserWarning):
    """The first minibatch after a rollout is not on-policy (|log r| above config.onpolicy_tolerance)."""


def message(value: float, tolerance: float, iteration: int) -> str:
    causes = "".join(f"\n  - {c}" for c in LIKELY_CAUSES)
    return (f"iteration {iteration}: the first minibatch after the rollout has max per-dim |log r| = {value:.3e} "
            f"> onpolicy_tolerance = {tolerance:.3e}, but it should be ~0 (π_θ = π_old there). The rollout and "
            f"the update are not computing the same policy; ratios, KLs and mask decisions of this run are "
            f"measured against the wrong anchor. Likely causes:{causes}\nFix the rollout path, or raise "
            f"config.onpolicy_tolerance if this level is expected from the kernels.")


def check(value: float, tolerance: Optional[float], *, iteration: int) -> bool:
    """Warn loudly when `value` (max per-dim |log r| of an on-policy minibatch) exceeds `tolerance`.

    tolerance None disables the check; a NaN value warns.  Returns True when it warned."""
    if tolerance is None or value <= tolerance:
        return False
    text = message(value, tolerance, iteration)
    LOG.warning(text)
    warnings.warn(text, OffPolicyRolloutWarning, stacklevel=2)
    return True
