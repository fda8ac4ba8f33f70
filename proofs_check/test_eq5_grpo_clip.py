"""Eq. 5: Flow-GRPO's clipped surrogate max(−Â·r, −Â·clip(r, 1−ε, 1+ε)), against a per-sample loop.

Oracle: a Python loop of Eq. 5 for the loss, and the case analysis of its gradient (zero exactly when
the clipped branch is active: Â > 0 ∧ r > 1+ε or Â < 0 ∧ r < 1−ε, which is also `clip_frac_gradient`).
Log-ratios are kept away from the clip edges by ≥ 1e-9 relative, where the subgradient is a convention.
Float64; rtol 1e-12 (float32 stats at 1e-6).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from flowdppo import losses
from proofs_check._common import make_batch, run


@given(adv=st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=20),
       log_ratio_scale=st.floats(1e-6, 0.5), clip_range=st.sampled_from([1e-5, 1e-4, 1e-3, 0.2]),
       seed=st.integers(0, 2**31 - 1))
def test_flow_grpo_clip_matches_a_loop(adv, log_ratio_scale, clip_range, seed):
    """Loss, gradient w.r.t. log π, clip_frac and clip_frac_gradient equal the per-sample loop."""
    gen = torch.Generator().manual_seed(seed)
    lr = (log_ratio_scale * torch.randn(len(adv), generator=gen, dtype=torch.float64)).tolist()
    r = [math.exp(x) for x in lr]
    assume(all(abs(ri - (1 + clip_range)) > 1e-9 and abs(ri - (1 - clip_range)) > 1e-9 for ri in r))
    batch = make_batch(adv, lr, [0.01] * len(adv))
    loss, stats, grad = run(losses.flow_grpo_clip, batch, clip_range=clip_range)
    clip_frac = clip_grad = 0
    for i, (a, ri) in enumerate(zip(adv, r)):
        clipped = min(max(ri, 1 - clip_range), 1 + clip_range)
        assert float(loss[i]) == pytest.approx(max(-a * ri, -a * clipped), rel=1e-12, abs=1e-300)
        zero_grad = (a > 0 and ri > 1 + clip_range) or (a < 0 and ri < 1 - clip_range)
        assert float(grad[i]) == pytest.approx(0.0 if zero_grad else -a * ri, rel=1e-12, abs=1e-300)
        clip_frac += abs(ri - 1) > clip_range
        clip_grad += zero_grad and a != 0
    assert float(stats["clip_frac"]) == pytest.approx(clip_frac / len(adv), abs=1e-6)
    assert float(stats["clip_frac_gradient"]) == pytest.approx(clip_grad / len(adv), abs=1e-6)


def test_flow_grpo_clip_rejects_a_nonpositive_clip_range():
    batch = make_batch([1.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="clip_range"):
        losses.flow_grpo_clip(**batch, clip_range=0.0)
