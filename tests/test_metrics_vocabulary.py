"""The log holds exactly the documented vocabulary (flowdppo.metrics): for each config below, every key a
run logs — training record, per-step block, evaluation record — is in the set `metrics.expected_*_keys`
computes for that config, and every key of that set is logged.  No placeholder matches "anything": the
families (one key per reward, per counterfactual ε/δ, per quantile) are expanded into concrete keys first.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowdppo import metrics
from flowdppo.config import Config, make_config
from flowdppo.losses import POLICY_LOSSES
from flowdppo.runlog import read_jsonl
from flowdppo.trainer import train

from flowdppo.testing.toy import toy_components  # noqa: E402

SMALL = ["iterations=2", "prompts_per_iter=2", "group_size=4", "num_minibatches=2", "num_steps=4",
         "sde_steps_per_traj=2", "threads=1", "progress=false", "tensorboard=false", "checkpoint_every=0",
         "eval_every=0", "rewards=brightness"]
CONFIGS = {
    "flow_dppo": [],
    "flow_dppo_symmetric": ["loss=flow_dppo_symmetric"],
    "flow_dppo_predictive": ["loss=flow_dppo_predictive", "predictive_step_size=1e-3"],
    "flow_grpo": ["loss=flow_grpo"],
    "grpo_guard": ["loss=grpo_guard"],
    "no_trust_region": ["loss=no_trust_region"],
    "beta0_no_ref_log": ["beta=0", "log_ref_kl=false"],
    "beta0_ref_log": ["beta=0", "log_ref_kl=true"],
    "skip_nonfinite_and_log_rewards": ["on_nonfinite=skip", "log_rewards=brightness"],
}


def test_every_loss_has_its_vocabulary_entry():
    assert set(metrics.LOSS_KEYS) == set(POLICY_LOSSES)


def _check(records: list[dict], cfg: Config, latent_dim: int) -> None:
    want_top, want_step = metrics.expected_step_keys(cfg, latent_dim), metrics.expected_per_step_keys(cfg)
    seen_top, seen_step = set(), set()
    for r in records:
        assert set(r) <= want_top, f"undocumented: {sorted(set(r) - want_top)}"
        seen_top |= set(r)
        for block in r["per_step"].values():
            assert set(block) <= want_step, f"undocumented per-step: {sorted(set(block) - want_step)}"
            seen_step |= set(block)
    assert seen_top == want_top, f"documented for this config but never logged: {sorted(want_top - seen_top)}"
    assert seen_step == want_step, f"documented per-step but never logged: {sorted(want_step - seen_step)}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_records_hold_exactly_the_documented_keys(tmp_path, name):
    cfg = make_config({}, [f"run_dir={tmp_path / 'run'}", *SMALL, *CONFIGS[name]])
    comps = toy_components()
    if "log_rewards=brightness" not in CONFIGS[name]:
        comps.log_rewards = {}
        cfg = cfg.replace(log_rewards=())
    train(cfg, components=comps)
    d = json.loads((tmp_path / "run" / "run.json").read_text())["latent_dim"]
    _check(read_jsonl(tmp_path / "run" / "metrics.jsonl"), cfg, d)


def test_a_key_outside_the_vocabulary_is_caught():
    cfg = make_config({}, SMALL[:-1])
    rec = {k: 0.0 for k in metrics.expected_step_keys(cfg, 16)}
    rec["per_step"] = {"3": {k: 0.0 for k in metrics.expected_per_step_keys(cfg)}}
    assert metrics.undocumented_step_keys(rec, cfg, 16) == []
    rec["reward/typo_mean"] = 1.0
    rec["per_step"]["3"]["clip_frac"] = 0.0            # a clip statistic in a flow_dppo run
    assert metrics.undocumented_step_keys(rec, cfg, 16) == ["reward/typo_mean", "per_step.3.clip_frac"]


def test_embedded_world_evaluation_records_hold_exactly_the_documented_keys(tmp_path):
    """One iteration of the embedded world with a tiny evaluation: each split's record has exactly
    expected_eval_keys (mixed-layout keys only where the split mixes 3- and 4-digit layouts)."""
    from flowdppo import world
    from flowdppo.world.data import BLANK_CLASS
    from flowdppo.world.rewards import target_classes
    cfg = Config(run_dir=str(tmp_path / "run"), iterations=1, eval_every=1, eval_prompts=2, eval_samples_per_prompt=2,
                 eval_probe_samples_per_prompt=2, threads=1, progress=False, tensorboard=False, checkpoint_every=0)
    train(cfg)
    splits = world.prompt_splits(version=2)
    evals = read_jsonl(tmp_path / "run" / "eval.jsonl")
    assert {e["split"] for e in evals} == {"test", "ood", "transfer"}
    for e in evals:
        items = cfg.eval_items(splits[e["split"]])
        sizes = {int((target_classes([it]) != BLANK_CLASS).sum()) for it in items}
        assert set(e) == metrics.expected_eval_keys(cfg, mixed_layouts=len(sizes) > 1), e["split"]


def test_docs_metrics_md_is_in_sync():
    path = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    assert path.read_text() == metrics.markdown(), "regenerate: python -m flowdppo.metrics > docs/metrics.md"


def test_every_documented_key_has_a_meaning():
    for table in (metrics.STEP_METRICS, metrics.STEP_FAMILIES, metrics.EVAL_METRICS, metrics.WORLD_EVAL_METRICS,
                  metrics.WORLD_MIXED_EVAL_METRICS):
        for key, text in table.items():
            assert isinstance(text, str) and len(text) > 10, key
