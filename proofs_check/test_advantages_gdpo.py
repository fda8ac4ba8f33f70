"""§2.1 (Eq. 5) group-relative advantages and GDPO, against naive Python loops (docs/failure_modes.md: advantage conventions).

  group:  Â_pg = (R_pg − mean_g R_p·) / max(std_g R_p·, eps)          std = population std (ddof 0)
  global: Â_pg = (R_pg − mean_g R_p·) / max(std over ALL rewards, eps)
  GDPO:   a_k = per-group normalised reward k; s = Σ_k w_k a_k; Â = (s − mean s) / max(std s, eps)
  then optional clipping to [−clip, clip].
Oracle: loops over prompts and samples with `statistics.mean` / `statistics.pstdev` (exact rational
arithmetic, correctly rounded).  A constant group (zero std) gives exactly 0, never NaN.  Float64;
rtol 1e-9, atol 1e-9 + 8·ε_mach·max|R|/eps: a one-ulp rounding of a mean is magnified by 1/eps when a
group's std is below the floor.
"""
from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import advantages as adv_mod

reward_values = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(-10.0, 10.0))


@st.composite
def reward_grids(draw, k=None):
    p, g = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    shape = (p, g) if k is None else (p, g, k)
    n = math.prod(shape)
    values = draw(st.lists(reward_values, min_size=n, max_size=n))
    if draw(st.booleans()):                       # force one constant group (zero std)
        const = values[0]
        stride = n // p
        values[:stride] = [const] * stride
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def _atol(rewards, eps):
    return 1e-9 + 8 * torch.finfo(torch.float64).eps * float(rewards.abs().max()) / eps


def naive_group(rewards, std_scope, eps, clip):
    rows = rewards.tolist()
    flat = [x for row in rows for x in row]
    out = []
    for row in rows:
        mean = statistics.mean(row)
        std = statistics.pstdev(row) if std_scope == "group" else statistics.pstdev(flat)
        adv = [(x - mean) / max(std, eps) for x in row]
        if clip is not None:
            adv = [min(max(a, -clip), clip) for a in adv]
        out.append(adv)
    return torch.tensor(out, dtype=torch.float64)


def naive_gdpo(rewards, weights, eps, clip):
    p, g, k = rewards.shape
    summed = [[0.0] * g for _ in range(p)]
    for kk in range(k):
        for pp in range(p):
            row = [float(rewards[pp, gg, kk]) for gg in range(g)]
            mean, std = statistics.mean(row), statistics.pstdev(row)
            for gg in range(g):
                summed[pp][gg] += weights[kk] * (row[gg] - mean) / max(std, eps)
    flat = [x for row in summed for x in row]
    mean, std = statistics.mean(flat), statistics.pstdev(flat)
    out = [[(x - mean) / max(std, eps) for x in row] for row in summed]
    if clip is not None:
        out = [[min(max(a, -clip), clip) for a in row] for row in out]
    return torch.tensor(out, dtype=torch.float64)


@given(rewards=reward_grids(), std_scope=st.sampled_from(["group", "global"]),
       eps=st.sampled_from([1e-8, 1e-6, 1e-4]), clip=st.sampled_from([None, 1.0, 5.0]))
def test_group_advantages_match_a_loop(rewards, std_scope, eps, clip):
    got = adv_mod.group_advantages(rewards, std_scope=std_scope, eps=eps, clip=clip)
    torch.testing.assert_close(got, naive_group(rewards, std_scope, eps, clip), rtol=1e-9, atol=_atol(rewards, eps))
    assert bool(torch.isfinite(got).all())
    constant = (rewards == rewards[:, :1]).all(dim=1)
    assert bool(torch.all(got[constant] == 0))           # exactly 0, whatever eps is


@given(rewards=reward_grids(k=3), weights=st.one_of(st.none(), st.lists(st.floats(0.0, 2.0), min_size=3, max_size=3)),
       eps=st.sampled_from([1e-8, 1e-6]), clip=st.sampled_from([None, 5.0]))
def test_gdpo_advantages_match_a_loop(rewards, weights, eps, clip):
    got = adv_mod.gdpo_advantages(rewards, weights=weights, eps=eps, clip=clip)
    w = [1.0, 1.0, 1.0] if weights is None else weights
    torch.testing.assert_close(got, naive_gdpo(rewards, w, eps, clip), rtol=1e-9,
                               atol=_atol(rewards, eps) * (1 + sum(w)))
    assert bool(torch.isfinite(got).all())


def test_constant_rewards_give_zero_advantages_not_nan():
    """Every scope, and GDPO, on an all-constant batch: exactly 0."""
    r = torch.full((3, 4), 0.7, dtype=torch.float64)
    for scope in ("group", "global"):
        assert bool(torch.all(adv_mod.group_advantages(r, std_scope=scope) == 0))
    assert bool(torch.all(adv_mod.gdpo_advantages(r.unsqueeze(-1).repeat(1, 1, 2)) == 0))


def test_bad_inputs_fail_loudly():
    """NaN rewards, G = 1 with group std, a non-positive clip and mismatched weights raise ValueError."""
    with pytest.raises(ValueError, match="NaN"):
        adv_mod.group_advantages(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="group_size"):
        adv_mod.group_advantages(torch.ones(3, 1), std_scope="group")
    with pytest.raises(ValueError, match="clip"):
        adv_mod.group_advantages(torch.rand(2, 3), clip=0.0)
    with pytest.raises(ValueError, match="weights"):
        adv_mod.gdpo_advantages(torch.rand(2, 3, 2), weights=[1.0])
