"""Trainer invariants on the toy policy (flowdppo/testing/toy.py): on-policy identity, rollout == replay, micro-batch
split invariance, smoke runs of every loss × sampler, exact resume after SIGKILL, errors, metric vocabulary."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowdppo import sde
from flowdppo.config import make_config
from flowdppo.losses import POLICY_LOSSES
from flowdppo.metrics import undocumented_step_keys
from flowdppo.rollout import rollout
from flowdppo.runlog import read_jsonl
from flowdppo.trainer import Components, build_components, minibatch_assignment, policy_loss_fn, train, update_minibatch
from flowdppo import dist

from flowdppo.testing.toy import BrightnessReward, toy_components  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["prompts_per_iter=4", "group_size=4", "num_minibatches=2", "eval_every=0", "rewards=brightness",
         "progress=false", "threads=1", "num_steps=6", "sde_steps_per_traj=2", "beta=0"]


def _cfg(tmp_path, *extra):
    return make_config({}, [f"run_dir={tmp_path / 'run'}", *SMALL, *extra])


def _strip_times(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("time/")}


@pytest.mark.parametrize("kernel", ["flow_sde", "cps", "dance_sde"])
@pytest.mark.parametrize("loss", sorted(POLICY_LOSSES))
def test_first_update_is_exactly_on_policy(tmp_path, loss, kernel):
    """First optimizer step after a rollout: r ≡ 1, exact KL ≡ 0, nothing masked/clipped (docs/failure_modes.md: on-policy identity)."""
    extra = ["predictive_step_size=1e-3"] if loss == "flow_dppo_predictive" else []
    cfg = _cfg(tmp_path, f"loss={loss}", f"kernel={kernel}", "iterations=1", "eta=0.7", *extra)
    train(cfg, components=toy_components())
    first = read_jsonl(Path(cfg.run_dir) / "metrics.jsonl")[0]
    assert first["ratio_min"] == 1.0 and first["ratio_max"] == 1.0
    assert first["kl_sum_max"] == 0.0 and first["log_ratio_abs_mean"] == 0.0
    if "kept" in first:
        assert first["kept"] == 1.0 and first["kl_exceeded"] == 0.0
    if "clip_frac" in first:
        assert first["clip_frac"] == 0.0
    assert math.isfinite(first["loss"]) and first["grad_norm"] > 0


def _toy_rollout(chunks, kernel="flow_sde", comps=None):
    comps = comps or toy_components()
    items = comps.splits["train"][:4]
    cond = comps.policy.encode_prompts([i.text for i in items])
    rep = [i for i in items for _ in range(4)]
    traj = rollout(comps.policy, cond, torch.arange(4).repeat_interleave(4), rep, sigmas=sde.shifted_sigmas(6), sde_indices=[0, 2], kernel=kernel,
                   eta=0.7, guidance_scale=1.0, seed=3, iteration=0, global_indices=list(range(16)), chunks=chunks)
    return comps, traj


def test_rollout_logp_equals_replay_logp():
    """The log-prob recorded while sampling equals sde.step's replay of the stored action (docs/failure_modes.md: rollout/replay parity),
    and the sampled trajectory does not depend on how the batch is chunked."""
    comps, traj = _toy_rollout([list(range(16))])
    _, traj2 = _toy_rollout([list(range(0, 16, 2)), list(range(1, 16, 2))], comps=comps)
    assert torch.allclose(traj.final, traj2.final, atol=1e-6)
    for t, k in enumerate(traj.sde_indices):
        s, sn = float(traj.sigmas[k]), float(traj.sigmas[k + 1])
        v = comps.policy.velocity(traj.x[:, t], torch.full((16,), s), traj.cond_rows(torch.arange(16)))
        st = sde.step("flow_sde", x=traj.x[:, t], v=v, sigma=s, sigma_next=sn, eta=0.7, x_next=traj.x_next[:, t])
        assert torch.equal(st.logp_per_dim, traj.old_logp_per_dim[:, t])
        assert torch.equal(st.mean, traj.old_mean[:, t])


def test_micro_batch_split_invariance(tmp_path):
    """Gradient of one minibatch is the same whether it runs as one forward or as 4 micro-batches."""
    grads = []
    for micro in (0, 2):
        comps, traj = _toy_rollout([list(range(16))])
        # move the policy off the anchor so the ratio/mask path is exercised
        with torch.no_grad():
            for p in comps.policy.trainable_parameters():
                p.add_(1e-2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        cfg = _cfg(tmp_path, f"micro_batch_size={micro}", "num_minibatches=2", "delta=1e-7")
        params = comps.policy.trainable_parameters()
        opt = torch.optim.SGD(params, lr=0.0)
        adv = torch.linspace(-1, 1, 16)
        rows = list(range(8))
        update_minibatch(comps.policy, traj, rows, adv, cfg, policy_loss_fn(cfg), params, opt, dist.DistInfo())
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("world", ["toy", "embedded"])
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_batched_replay_gives_the_per_step_loss_and_gradient(tmp_path, world, guidance):
    """config.batched_replay (all trained steps in one forward, one backward) = the per-step replay: the same
    logged loss and statistics and the same gradient, to float summation order (rtol 1e-5, atol 1e-6 of the largest
    gradient element), on the toy policy and
    on the embedded world's SD3 transformer, with and without CFG, off the anchor and with β > 0."""
    from flowdppo.config import Config
    base = toy_components() if world == "toy" else build_components(Config(threads=1))
    outs, grads = [], []
    for batched in (False, True):
        comps, traj = _toy_rollout([list(range(16))], comps=base)
        traj.ref_mean = traj.old_mean + 1e-3      # a reference off the anchor: the β term has a gradient
        cfg = _cfg(tmp_path, f"batched_replay={str(batched).lower()}", "num_minibatches=2", "delta=1e-7",
                   "beta=0.1", f"guidance_scale={guidance}", "micro_batch_size=4")
        params = comps.policy.trainable_parameters()
        snapshot = [p.detach().clone() for p in params]
        with torch.no_grad():     # move the policy off the anchor so the ratio/mask path is exercised
            for p in params:
                p.add_(1e-2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        opt = torch.optim.SGD(params, lr=0.0)
        out = update_minibatch(comps.policy, traj, list(range(0, 16, 2)), torch.linspace(-1, 1, 16), cfg,
                               policy_loss_fn(cfg), params, opt, dist.DistInfo())
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in params]))
        with torch.no_grad():
            for p, s0 in zip(params, snapshot):
                p.copy_(s0)
    scale = float(grads[0].abs().max())     # float summation noise is relative to the gradient's size
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6 * scale), (grads[0] - grads[1]).abs().max()
    assert grads[0].abs().max() > 0
    for k in ("loss", "policy_loss", "kl_ref_loss", "kept", "kl_exceeded"):
        assert math.isclose(outs[0][k], outs[1][k], rel_tol=1e-5, abs_tol=1e-9), k


def test_minibatch_assignment_is_world_size_invariant():
    """Global minibatches formed by 2 ranks equal those of 1 rank, in every epoch; each row used once."""
    for epoch in range(3):
        one = minibatch_assignment(32, 4, seed=1, iteration=5, epoch=epoch, first_global=0)
        r0 = minibatch_assignment(16, 4, seed=1, iteration=5, epoch=epoch, first_global=0)
        r1 = minibatch_assignment(16, 4, seed=1, iteration=5, epoch=epoch, first_global=16)
        for j in range(4):
            assert sorted(one[j]) == sorted(r0[j] + [16 + i for i in r1[j]])
        assert sorted(i for mb in one for i in mb) == list(range(32))


@pytest.mark.parametrize("loss,kernel", [(l, "flow_sde") for l in sorted(POLICY_LOSSES)] + [("flow_dppo", "cps"),
                                                                                           ("flow_grpo", "cps")])
def test_smoke_run_every_loss(tmp_path, loss, kernel):
    """Three iterations × 2 epochs with β > 0 and CFG: finite logs, documented keys, trust-region invariants."""
    extra = ["predictive_step_size=1e-3"] if loss == "flow_dppo_predictive" else []
    cfg = _cfg(tmp_path, f"loss={loss}", f"kernel={kernel}", "iterations=3", "num_inner_epochs=2", "beta=0.01",
               "log_rewards=brightness",
               "guidance_scale=1.5", "lr=3e-3", "delta=1e-6", "eval_every=2", "eval_prompts=2",
               "eval_samples_per_prompt=2", *extra)
    train(cfg, components=toy_components())
    recs = read_jsonl(Path(cfg.run_dir) / "metrics.jsonl")
    assert len(recs) == 3 * 2 * 2
    d = json.loads((Path(cfg.run_dir) / "run.json").read_text())["latent_dim"]
    for r in recs:
        assert not undocumented_step_keys(r, cfg, d), undocumented_step_keys(r, cfg, d)
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
        if "blocked" in r:
            assert abs(r["blocked"] + r["kept"] - 1) < 1e-6
            assert abs(r["blocked_pos"] + r["blocked_neg"] - r["blocked"]) < 1e-6
            if loss != "flow_dppo_predictive":
                assert r["blocked"] <= r["kl_exceeded"] + 1e-6
    assert max(r["kl_ref"] for r in recs) > 0
    assert all(r["reward_log/brightness_mean"] == r["reward/brightness_mean"] for r in recs)
    assert "cf/clip_fire@0.00035" in recs[0] and "cf/mask_fire@1e-06" in recs[0]  # the run's own δ and ε(δ)
    evals = read_jsonl(Path(cfg.run_dir) / "eval.jsonl")
    assert [e["iteration"] for e in evals] == [0, 0, 2, 2, 3, 3]
    assert (Path(cfg.run_dir) / "samples" / "test_iter00003.png").exists()


def test_toy_learns(tmp_path):
    """Flow-DPPO raises the toy reward (seed 0, deterministic): mean of last 5 iterations > first 5 + 0.02."""
    cfg = _cfg(tmp_path, "iterations=40", "lr=3e-3", "delta=1e-4")
    train(cfg, components=toy_components())
    recs = [r for r in read_jsonl(Path(cfg.run_dir) / "metrics.jsonl") if r["minibatch"] == 0]
    first = sum(r["reward/brightness_mean"] for r in recs[:5]) / 5
    last = sum(r["reward/brightness_mean"] for r in recs[-5:]) / 5
    assert last > first + 0.02, (first, last)


_SCRIPT = """
import sys
from flowdppo.testing.toy import toy_components
from flowdppo.config import make_config
from flowdppo.trainer import train
args = sys.argv[1:]
resume = args[0] == "resume"
cfg = make_config({{}}, args[1:])
train(cfg, resume=resume, components=toy_components())
"""


def _run(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    code = _SCRIPT.format(tests=str(Path(__file__).parent))
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_resume_is_exact(tmp_path):
    """A run SIGKILLed mid-iteration and resumed logs exactly the rows of an uninterrupted run (no missing or
    duplicated rows) and ends with identical weights."""
    common = [*SMALL, "iterations=5", "checkpoint_every=2", "num_inner_epochs=2", "lr=3e-3", "beta=0.01",
              "eval_every=2", "eval_prompts=2", "eval_samples_per_prompt=2"]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    assert _run(["new", f"run_dir={ref_dir}", *common]).returncode == 0
    # 4 optimizer steps per iteration; step 14 is inside iteration 3, after the checkpoint at iteration 2's end
    killed = _run(["new", f"run_dir={cut_dir}", *common], {"FLOWDPPO_KILL_AFTER_STEP": "14"})
    assert killed.returncode == -9, killed.stderr
    assert len(read_jsonl(cut_dir / "metrics.jsonl")) == 14
    res = _run(["resume", f"run_dir={cut_dir}", *common])
    assert res.returncode == 0, res.stderr
    a = [_strip_times(r) for r in read_jsonl(ref_dir / "metrics.jsonl")]
    b = [_strip_times(r) for r in read_jsonl(cut_dir / "metrics.jsonl")]
    assert len(a) == len(b) == 20 and a == b
    ea = read_jsonl(ref_dir / "eval.jsonl"); eb = read_jsonl(cut_dir / "eval.jsonl")
    assert ea == eb
    sa = torch.load(ref_dir / "checkpoint.pt", weights_only=False)["policy"]
    sb = torch.load(cut_dir / "checkpoint.pt", weights_only=False)["policy"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_with_different_config_is_refused(tmp_path):
    cfg = _cfg(tmp_path, "iterations=1")
    train(cfg, components=toy_components())
    with pytest.raises(ValueError, match=r"config\.|differs.*lr"):
        train(cfg.replace(lr=5e-4), resume=True, components=toy_components())
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, components=toy_components())


@pytest.mark.parametrize("override,field", [
    ("delat=1e-5", "delta"),
    ("delta=-1e-5", "config.delta"),
    ("kernel=cps eta=1.5", "config.eta"),
    ("sde_window=0,1", "config.sde_window"),
    ("group_size=1 std_scope=group", "config.group_size"),
    ("num_minibatches=3", "config.num_minibatches"),
    ("lr=abc", "config.lr"),
    ("compile=true", "config.compile"),
    ("offload_text_encoders=true", "config.offload_text_encoders"),
])
def test_config_errors_name_field_and_fix(override, field):
    with pytest.raises(ValueError) as e:
        make_config({}, override.split())
    msg = str(e.value)
    assert field in msg and ("Fix" in msg or "Did you mean" in msg), msg


def test_fsdp_without_full_finetuning_modules_is_refused_before_anything_is_written(tmp_path):
    cfg = _cfg(tmp_path, "iterations=1", "parallel=fsdp")
    with pytest.raises(ValueError, match=r"config\.parallel='fsdp'.*Fix: set lora_rank=0"):
        train(cfg, components=toy_components())   # the toy policy has no fsdp_roots()
    assert not (Path(cfg.run_dir) / "config.json").exists()


def test_reward_kwargs_reach_the_reward_constructor(tmp_path):
    cfg = make_config({"reward_kwargs": {"jpeg": {"quality": 50}}},
                      [f"run_dir={tmp_path}", "rewards=tifa", "log_rewards=jpeg", "reward_kwargs.jpeg.per_megapixel=true"])
    comps = build_components(cfg)
    assert comps.log_rewards["jpeg"].quality == 50 and comps.log_rewards["jpeg"].per_megapixel is True
    with pytest.raises(ValueError, match=r"config\.reward_kwargs\.jpeg.*Fix"):
        build_components(make_config({}, ["rewards=jpeg", "reward_kwargs.jpeg.qualty=3"]))
    with pytest.raises(ValueError, match=r"config\.reward_kwargs: arguments for \['pickscore'\]"):
        make_config({}, ["rewards=tifa", "reward_kwargs.pickscore.model=/x"])


def test_nan_reward_raises(tmp_path):
    class NaNReward(BrightnessReward):
        def __call__(self, images, items):
            out = super().__call__(images, items)
            out[3] = float("nan")
            return out
    comps = toy_components()
    comps = Components(policy=comps.policy, splits=comps.splits, rewards={"bad": NaNReward()})
    with pytest.raises(ValueError, match="reward 'bad' returned NaN"):
        train(_cfg(tmp_path, "iterations=1", "rewards=bad"), components=comps)


def test_cli_reports_config_errors_cleanly():
    out = subprocess.run([sys.executable, "-m", "flowdppo", "train", "delta=-1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "config.delta" in out.stderr and "Traceback" not in out.stderr


def test_eval_from_skips_the_early_periodic_evaluations(tmp_path):
    """eval_every=1, eval_from=2, 3 iterations: the embedded world is evaluated at iterations 2 and 3 only
    (the end is always evaluated), so a campaign need not re-evaluate the shared base in every run; with
    sample_figures=false the grids are saved but no before/after figure is drawn."""
    cfg = make_config({}, [f"run_dir={tmp_path / 'run'}", "iterations=3", "eval_every=1", "eval_from=2",
                           "eval_prompts=2", "eval_samples_per_prompt=2", "eval_probe_samples_per_prompt=2",
                           "prompts_per_iter=2", "group_size=2", "num_minibatches=1", "num_steps=4",
                           "sde_steps_per_traj=1", "threads=1", "progress=false", "checkpoint_every=0",
                           "sample_figures=false"])
    train(cfg)
    its = sorted({e["iteration"] for e in read_jsonl(tmp_path / "run" / "eval.jsonl")})
    assert its == [2, 3]
    samples = {p.name for p in (tmp_path / "run" / "samples").iterdir()}
    assert {"test_iter00003.png", "test_iter00003.json"} <= samples         # grids and sidecars are kept
    assert not any(n.startswith("before_after") for n in samples)           # sample_figures=false: no figure


@pytest.mark.parametrize("micro", [0, 8])
def test_overlapped_reward_scoring_gives_the_same_run(tmp_path, micro):
    """config.overlap_rewards (each rollout chunk scored in a background thread while the next is generated)
    logs the same run as scoring the whole batch after the rollout: the embedded world's rewards score each
    image on its own, so every reward, advantage and update agrees (floats to 1e-6: the classifier sees
    chunk-sized batches)."""
    from flowdppo.config import Config
    recs = []
    for overlap in (False, True):
        cfg = Config(run_dir=str(tmp_path / f"run{overlap}"), iterations=2, eval_every=0, threads=1, progress=False,
                     checkpoint_every=0, prompts_per_iter=4, group_size=4, num_minibatches=2, micro_batch_size=micro,
                     overlap_rewards=overlap, seed=3)
        train(cfg)
        recs.append([_strip_times(r) for r in read_jsonl(tmp_path / f"run{overlap}" / "metrics.jsonl")])
    assert len(recs[0]) == len(recs[1]) > 0
    for a, b in zip(*recs):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-9), k
            elif k != "per_step":
                assert a[k] == b[k], k


def test_chunk_scorer_returns_rows_in_order_and_raises_a_chunks_error():
    from flowdppo.rewards.base import ChunkScorer
    from flowdppo.prompts import PromptItem

    class Index:
        name = "index"

        def __call__(self, images, items):
            if any(i.text == "bad" for i in items):
                return torch.full((len(items),), float("nan"))
            return torch.tensor([float(i.text) for i in items])

    items = [PromptItem(str(i)) for i in range(6)]
    sc = ChunkScorer({"index": Index()}, items, decode=lambda x: x)
    for rows in ([4, 5], [0, 2], [1, 3]):
        sc.submit(rows, torch.tensor(rows, dtype=torch.float32).view(-1, 1))
    images, rewards = sc.collect()
    assert rewards[:, 0].tolist() == [0, 1, 2, 3, 4, 5] and images[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    sc = ChunkScorer({"index": Index()}, [PromptItem("bad"), PromptItem("1")], decode=lambda x: x)
    sc.submit([0, 1], torch.zeros(2, 1))
    with pytest.raises(ValueError, match="NaN"):
        sc.collect()
