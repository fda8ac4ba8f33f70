"""The conformance runner (flowdppo/conformance) against our implementation and deliberately wrong ones.

* Our implementation — and the same conventions written correctly in the mutants' file — pass all ten
  properties, for the three paper samplers.
* Every mutant of tests/conformance_mutants.py fails exactly the properties its registry entry lists, the
  intended one among them, and the intended failure's meaning names the mistake.
* The CLI runs end to end (exit codes, JSON), runs are reproducible bit for bit, bad usage gives a
  fix-it message, and the black-box readings the properties rely on (the mask's KL by bisection on δ,
  the normaliser from the gradient) agree with independent computations.
Statistical properties run at 6 SE (false-alarm ≤ 2e-8 per property per run, stated in each result);
the seeds are fixed, so these tests are deterministic.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import conformance_mutants as cm  # noqa: E402

from flowdppo import divergence, losses, sde  # noqa: E402
from flowdppo.conformance import (PROPERTY_NAMES, KernelOut, Settings, Subject, check, load_callable,  # noqa: E402
                                  make_kernel, make_loss)
from flowdppo.conformance import _observe as ob  # noqa: E402
from flowdppo.conformance.adapters import flowdppo_loss  # noqa: E402
from flowdppo.conformance.__main__ import build, main, parser  # noqa: E402
from flowdppo.conformance.properties import run_properties  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run(args):
    ctx, _ = build(parser().parse_args(list(args)))
    return run_properties(ctx)


@pytest.mark.parametrize("name", list(cm.CONTROLS))
def test_correct_implementations_pass_every_property(name):
    """Our flowdppo kernel + loss (Flow-SDE, CPS, Dance-SDE), and correct code in the tuple / kl_tensor /
    schedule-KL conventions: all ten properties run and pass."""
    results = _run(cm.CONTROLS[name])
    assert [r.name for r in results] == list(PROPERTY_NAMES)
    bad = [(r.name, r.status, r.meaning) for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("name", list(cm.MUTANTS))
def test_each_mutant_fails_its_intended_property_and_names_the_mistake(name):
    m = cm.MUTANTS[name]
    results = {r.name: r for r in _run(m.args)}
    failed = {n for n, r in results.items() if r.failed}
    assert m.intended in failed, (m.mistake, {n: r.meaning for n, r in results.items()})
    assert failed == set(m.fails), (m.mistake, failed, {n: results[n].meaning for n in failed})
    meaning = results[m.intended].meaning
    assert m.names in meaning, (m.mistake, meaning)
    assert not any(r.status == "SKIP" for r in results.values())


def test_the_sigma1_mutant_reports_the_published_factor():
    """The 0.99 clamp at σ = 1 on the SD3 grid (shift 3, 10 steps, η = 0.7): the loss's KL at step 0 is
    (0.7 / 1.3229)² = 0.280× the sampler's, i.e. δ is 3.57× looser there; steps ≥ 1 agree."""
    r = {x.name: x for x in _run(cm.MUTANTS["sigma1_clamp"].args)}["mask_kl_exact"]
    assert "0.28× the sampler's at step 0" in r.meaning and "3.57× looser" in r.meaning, r.meaning
    assert r.error == pytest.approx(0.72, abs=0.01)          # |0.2816 (MC) − 1|


def test_cli_end_to_end_exit_codes_and_json(tmp_path):
    """The module runs as a program: exit 0 on our implementation, 1 on a mutant, JSON with every result."""
    out = tmp_path / "r.json"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "flowdppo.conformance", "--json", str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "10 passed, 0 failed, 0 skipped" in ok.stdout
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["results"]] == list(PROPERTY_NAMES) and all(r["passed"] for r in data["results"])
    bad = subprocess.run([sys.executable, "-m", "flowdppo.conformance", *cm.MUTANTS["mean_over_kept"].args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "[FAIL] loss_normalisation" in bad.stdout and "9 passed, 1 failed" in bad.stdout


def test_runs_are_reproducible():
    """Same settings, same numbers: every random draw comes from a seeded generator."""
    a = _run(cm.MUTANTS["bf16_anchors"].args)
    b = _run(cm.MUTANTS["bf16_anchors"].args)
    assert [(r.status, r.error, r.details) for r in a] == [(r.status, r.error, r.details) for r in b]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_false_alarm_on_other_seeds(seed):
    """Our implementation passes under other seeds too (each MC property: ≤ 2e-8 false-alarm per run)."""
    results = _run(cm.CONTROLS["flowdppo_flow_sde"] + ("--seed", str(seed)))
    assert all(r.passed for r in results), [(r.name, r.meaning) for r in results if not r.passed]


def test_monte_carlo_power_a_3_percent_std_error_is_caught():
    """Power of std_matches_sampler at the default 2048×64 draws (tolerance 1.1% on the std ratio): a kernel
    that samples with 1.03× the std it reports fails, at every seed tried."""
    ours = make_kernel(sde.step, "flowdppo", sampler="flow_sde")

    def wide(*, x, v, sigma, sigma_next, eta, x_next=None, generator=None):
        out = ours(x=x, v=v, sigma=sigma, sigma_next=sigma_next, eta=eta, x_next=x_next, generator=generator)
        if x_next is None:       # draw with a 3% wider noise than reported
            out.x_next = out.mean + 1.03 * (out.x_next - out.mean)
        return out
    for seed in (0, 1):
        rep = check(Subject(kernel=wide, name="wide"), Settings(seed=seed), only=["std_matches_sampler"])
        assert rep.failed == ["std_matches_sampler"], rep.text


def test_mask_kl_by_bisection_equals_eq14():
    """The black-box reading of the KL a mask uses (bisection on δ) equals divergence.kl_per_dim to 1e-8
    (relative) for flow_dppo on random states, whatever the per-sample std."""
    gen = torch.Generator().manual_seed(0)
    loss = make_loss(losses.flow_dppo, "flowdppo")
    for _ in range(5):
        old = torch.randn(1, 3, 5, generator=gen, dtype=torch.float64)
        new = old + 0.1 * torch.randn(1, 3, 5, generator=gen, dtype=torch.float64)
        std = torch.rand((), generator=gen, dtype=torch.float64) + 0.2
        exact = float(divergence.kl_per_dim(old, new, std))
        got = ob.mask_kl(loss, mean=new, old_mean=old, std=std, sigma=0.5, sigma_next=0.25, eta=1.0,
                         kl_guess=exact * 7.3)
        assert got is not None and got.blocked_below and got.quadrant == (1.0, 1.0)
        assert got.value == pytest.approx(exact, rel=1e-8)


def test_synthetic_cells_have_exact_dyadic_kls():
    """cells(): per-dim KL = shift²/(2σ²) exactly (the tie cells rely on it) in fp32 and fp64."""
    for dtype in (torch.float32, torch.float64):
        b = ob.cells([1.0, -1.0, 0.0], [0.125, 0.0, -0.125], [0.125, 0.25, 0.5], std=0.5, sigma=0.5,
                     sigma_next=0.25, eta=1.0, dtype=dtype)
        kl = divergence.kl_per_dim(b.old_mean, b.mean, b.std)
        assert kl.tolist() == [0.03125, 0.125, 0.5]
        assert (b.logp - b.old_logp).tolist() == [0.125, 0.0, -0.125]


def test_usage_errors_name_the_option_and_the_fix(capsys):
    with pytest.raises(ValueError, match=r"--kernel 'nocolon': expected MODULE:CALLABLE.*Fix"):
        load_callable("nocolon", "--kernel")
    with pytest.raises(ValueError, match=r"no attribute 'nope'"):
        load_callable("flowdppo.sde:nope", "--kernel")
    with pytest.raises(ValueError, match=r"--adapter kl_tensor needs the KL function.*--kl"):
        make_loss(cm.correct_dppo_loss, "kl_tensor")
    with pytest.raises(ValueError, match=r"does not take the keywords.*--adapter kl_tensor"):
        make_loss(losses.flow_grpo_clip, "flowdppo")             # no δ: not a Flow-DPPO loss
    assert main(["--loss", "flowdppo.losses:flow_dppo", "--adapter", "kl_tensor"]) == 2
    assert "needs the KL function" in capsys.readouterr().err
    bad_kernel = make_kernel(lambda *a: (1, 2), "tuple", sampler="flow_sde")
    with pytest.raises(ValueError, match=r"must return \(prev_sample, log_prob, prev_sample_mean, std\)"):
        bad_kernel(x=torch.zeros(1, 2), v=torch.zeros(1, 2), sigma=0.5, sigma_next=0.25, eta=0.7)


def test_a_raising_user_function_is_reported_not_fatal():
    """A loss that raises gives FAIL results carrying the exception; the kernel properties still run."""
    def broken(*, logp, **_):
        raise RuntimeError("shape mismatch in my loss")
    rep = check(Subject(kernel=make_kernel(sde.step, "flowdppo", sampler="flow_sde"), loss=broken, name="broken"))
    assert rep.by_name("std_matches_sampler").passed
    assert rep.by_name("mask_truth_table").failed
    assert "shape mismatch in my loss" in rep.by_name("mask_truth_table").meaning
    with pytest.raises(AssertionError, match="Flow-DPPO conformance failed"):
        rep.assert_ok()


def test_kernel_out_std_shapes_are_accepted():
    """A kernel may report std as a Python float, a 0-d tensor, [B] or [B, 1, …]: all give the same verdicts."""
    ours = make_kernel(sde.step, "flowdppo", sampler="flow_sde")
    for shape in ("float", "scalar", "batch"):
        def k(*, x, v, sigma, sigma_next, eta, x_next=None, generator=None, _shape=shape):
            out = ours(x=x, v=v, sigma=sigma, sigma_next=sigma_next, eta=eta, x_next=x_next, generator=generator)
            s0 = float(out.std.reshape(-1)[0])
            std = {"float": torch.tensor(s0), "scalar": torch.tensor(s0),
                   "batch": torch.full((x.shape[0],), s0)}[_shape]
            return KernelOut(out.x_next, out.logp, out.mean, std)
        rep = check(Subject(kernel=k, loss=make_loss(losses.flow_dppo, "flowdppo"), name=shape))
        assert rep.ok, rep.text
        assert not math.isnan(rep.by_name("mask_kl_exact").error)


def _ours(loss):
    return Subject(kernel=make_kernel(sde.step, "flowdppo", sampler="flow_sde"), loss=loss, name="ours")


def test_a_delta_on_the_summed_kl_is_recognised():
    """flow_dppo with kl_reduction="sum" (δ on the paper's Eq. 14 sum): the mask's KL is detected as the sum
    over dims and every property passes (the tie δ is then D·1/8, still exact)."""
    rep = check(_ours(flowdppo_loss(losses.flow_dppo, kl_reduction="sum")))
    assert rep.ok, rep.text
    assert "sum over dims" in rep.by_name("mask_kl_exact").meaning


def test_our_symmetric_ablation_is_reported_as_blocking_corrective_updates():
    """flow_dppo_symmetric (Fig. 3's "w/o asymmetry") drops every sample beyond δ: the truth table names it,
    and nothing else fails."""
    rep = check(_ours(make_loss(losses.flow_dppo_symmetric, "flowdppo")))
    assert rep.failed == ["mask_truth_table"], rep.text
    assert "corrective updates (Â·(r − 1) < 0) are blocked" in rep.by_name("mask_truth_table").meaning


def test_a_loss_returned_as_the_objective_is_caught():
    """A loss that returns +Σ M·r·Â/B (the objective to maximise) fails loss_normalisation with that diagnosis;
    its mask is still read correctly (the truth table passes: blocking is read from a zero gradient)."""
    ours = make_loss(losses.flow_dppo, "flowdppo")
    rep = check(_ours(lambda **kw: -ours(**kw)), only=["mask_truth_table", "loss_normalisation"])
    assert rep.failed == ["loss_normalisation"], rep.text
    assert "MAXIMISE" in rep.by_name("loss_normalisation").meaning
