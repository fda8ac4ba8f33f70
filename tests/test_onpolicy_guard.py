"""The live on-policy guard (flowdppo.onpolicy) and the convention presets in real runs.

The guard is tested by breaking rollout/update agreement on purpose: a LoRA'd TinyFlowPolicy (the embedded
world's SD3-transformer policy) whose no-grad path — the one rollout uses — runs with its adapters
disabled, i.e. samples from the frozen base while the update trains the adapter.  peft's LoRA starts with
B = 0, so iteration 0 is still on-policy; from iteration 1 on the rollout misses the trained adapter and
the guard must fire.  The same policy without the defect logs exactly 0 on every iteration (CPU).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch

from flowdppo import onpolicy
from flowdppo.config import make_config
from flowdppo.policy.tiny import TinyFlowPolicy, build_transformer
from flowdppo.prompts import PromptItem
from flowdppo.runlog import read_jsonl
from flowdppo.trainer import Components, train

from flowdppo.testing.toy import BrightnessReward, toy_components  # noqa: E402

RUN = ["prompts_per_iter=4", "group_size=4", "num_minibatches=2", "eval_every=0", "rewards=brightness",
       "progress=false", "threads=1", "num_steps=4", "sde_steps_per_traj=1", "beta=0", "log_ref_kl=false",
       "lr=3e-3", "iterations=3", "lora_rank=2"]


def _fake_text(texts):
    """Deterministic token states [B, 24, 384] and pooled [B, 384] per text (no text model needed)."""
    out_s, out_p = [], []
    for t in texts:
        g = torch.Generator().manual_seed(sum(map(ord, t)) + 7 * len(t))
        out_s.append(torch.randn(24, 384, generator=g))
        out_p.append(torch.randn(384, generator=g))
    return torch.stack(out_s), torch.stack(out_p)


class RolloutSkipsAdapter(TinyFlowPolicy):
    """velocity() without autograd (rollout, evaluation) runs with the LoRA adapters off: the rollout samples
    from the frozen base while the grad-enabled update forward trains the adapter."""

    def velocity(self, x, sigma, cond, *, guidance_scale=1.0):
        if torch.is_grad_enabled():
            return super().velocity(x, sigma, cond, guidance_scale=guidance_scale)
        with self.reference():
            return super().velocity(x, sigma, cond, guidance_scale=guidance_scale)


def _components(policy_cls) -> Components:
    torch.manual_seed(0)
    policy = policy_cls(build_transformer(), _fake_text, lora_rank=2, lora_alpha=2)
    items = [PromptItem(text=f"prompt {i}", atoms=(f"b{i}",), meta={"target": (i % 8) / 8 + 0.06}) for i in range(8)]
    return Components(policy=policy, splits={"train": items}, rewards={"brightness": BrightnessReward()})


def _per_iteration(run_dir: Path, key: str) -> list[float]:
    return [r[key] for r in read_jsonl(run_dir / "metrics.jsonl") if r["epoch"] == 0 and r["minibatch"] == 0]


def test_agreeing_rollout_is_exactly_on_policy_and_never_warns(tmp_path):
    """Normal TinyFlowPolicy (LoRA): onpolicy/abs_log_ratio_max is exactly 0.0 on every iteration even at
    tolerance 0 (warn on any disagreement), while later minibatches of the same iteration do move (> 0)."""
    cfg = make_config({}, [f"run_dir={tmp_path / 'run'}", *RUN, "onpolicy_tolerance=0"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", onpolicy.OffPolicyRolloutWarning)
        train(cfg, components=_components(TinyFlowPolicy))
    recs = read_jsonl(Path(cfg.run_dir) / "metrics.jsonl")
    assert [r["onpolicy/abs_log_ratio_max"] for r in recs] == [0.0] * len(recs)
    assert min(r["abs_log_ratio_per_dim_max"] for r in recs if r["minibatch"] == 1) > 0


def test_rollout_that_skips_the_adapter_makes_the_guard_fire(tmp_path, caplog):
    """RolloutSkipsAdapter: iteration 0 is on-policy (LoRA B = 0), iterations 1 and 2 are not; the guard
    warns (OffPolicyRolloutWarning and the 'flowdppo' logger) naming the likely causes, once per bad iteration."""
    cfg = make_config({}, [f"run_dir={tmp_path / 'run'}", *RUN, "onpolicy_tolerance=1e-7"])
    with caplog.at_level(logging.WARNING, logger="flowdppo"):
        with pytest.warns(onpolicy.OffPolicyRolloutWarning, match="LoRA adapter disabled") as record:
            train(cfg, components=_components(RolloutSkipsAdapter))
    values = _per_iteration(Path(cfg.run_dir), "onpolicy/abs_log_ratio_max")
    assert values[0] == 0.0 and min(values[1:]) > 1e-7, values
    fired = [w for w in record if issubclass(w.category, onpolicy.OffPolicyRolloutWarning)]
    assert len(fired) == 2 and "iteration 1:" in str(fired[0].message)
    logged = [r for r in caplog.records if r.name == "flowdppo" and "onpolicy_tolerance" in r.getMessage()]
    assert len(logged) == 2 and all(c in logged[0].getMessage() for c in ("dtype", "dropout", "nondeterministic"))


def test_check_thresholds():
    """None disables; ≤ tolerance is silent; above it, and NaN, warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not onpolicy.check(1.0, None, iteration=0)
        assert not onpolicy.check(1e-3, 1e-3, iteration=0)
        assert not onpolicy.check(0.0, 0.0, iteration=0)
    for value in (2e-3, float("nan")):
        with pytest.warns(onpolicy.OffPolicyRolloutWarning):
            assert onpolicy.check(value, 1e-3, iteration=5)
    with pytest.raises(ValueError, match="config.onpolicy_tolerance"):
        make_config({}, ["onpolicy_tolerance=-1"])


def test_official_preset_run_records_its_resolved_conventions(tmp_path):
    """conventions=official with CPS on the toy policy: the run trains (first update on-policy, exactly), and
    config.json holds the six resolved values, so the run states which conventions produced it."""
    cfg = make_config({}, [f"run_dir={tmp_path / 'run'}", "prompts_per_iter=4", "group_size=4", "num_minibatches=2",
                           "eval_every=0", "rewards=brightness", "progress=false", "threads=1", "num_steps=6",
                           "sde_steps_per_traj=2", "iterations=2", "beta=0.01", "kernel=cps", "eta=0.7",
                           "conventions=official"])
    train(cfg, components=toy_components())
    saved = json.loads((Path(cfg.run_dir) / "config.json").read_text())
    assert {k: saved[k] for k in ("conventions", "sigma_grid", "cps_logp", "beta_units", "adv_std", "adv_eps",
                                  "kl_tie")} == dict(conventions="official", sigma_grid="official",
                                                     cps_logp="unnormalized", beta_units="mean_sq", adv_std="bessel",
                                                     adv_eps=1e-8, kl_tie="block")
    recs = read_jsonl(Path(cfg.run_dir) / "metrics.jsonl")
    assert recs[0]["ratio_min"] == 1.0 == recs[0]["ratio_max"] and recs[0]["onpolicy/abs_log_ratio_max"] == 0.0
    assert recs[-1]["kl_ref"] > 0 and all(r["kept"] + r["blocked"] == pytest.approx(1.0) for r in recs)
