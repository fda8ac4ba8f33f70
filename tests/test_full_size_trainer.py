"""The trainer end to end on tiny random-weight SD3, FLUX.1 and FLUX.2-klein pipelines loaded from disk by
path (the real `flowdppo train --model <path>` route): one rollout → reward → update iteration per model,
only LoRA weights change, and save → resume equals an uninterrupted run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flowdppo.testing.tiny_pipelines import TINY_RESOLUTION, build_tiny_flux, build_tiny_flux2_klein, build_tiny_sd3
from flowdppo.config import make_config
from flowdppo.runlog import read_jsonl
from flowdppo.trainer import build_components, train

BUILDERS = {"sd3": build_tiny_sd3, "flux": build_tiny_flux, "flux2_klein": build_tiny_flux2_klein}
PROMPTS = ["a red cat", "two dogs on a sofa", "a blue car", "three apples", "a green bird", "a tall tower"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_size")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    paths = {}
    for fam, build in BUILDERS.items():
        build(root / fam)
        paths[fam] = root / fam
    return root, paths


def _args(root: Path, model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model={model}", f"prompts={root / 'prompts.txt'}", f"run_dir={run_dir}", "rewards=jpeg",
            f"resolution={TINY_RESOLUTION}", "lora_rank=4", "dtype=float32", "prompts_per_iter=2", "group_size=2",
            "num_minibatches=2", "num_steps=4", "sde_steps_per_traj=1", "eval_every=0", "progress=false",
            "threads=1", "lr=1e-2", "beta=0.01", *extra]


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_one_iteration_only_lora_changes(setup, tmp_path, family):
    root, paths = setup
    cfg = make_config({}, _args(root, paths[family], tmp_path / "run", "iterations=1", "guidance_scale=1.5"))
    comps = build_components(cfg)
    core = comps.policy.transformer if hasattr(comps.policy, "transformer") else None
    before = {n: p.detach().clone() for n, p in core.named_parameters()}
    train(cfg, components=comps)
    changed = {n for n, p in core.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed, "no parameter changed"
    assert all("lora" in n for n in changed), sorted(changed)[:5]
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(recs) == 2 and recs[0]["ratio_max"] == 1.0 and recs[0]["kl_sum_max"] == 0.0
    header = json.loads((tmp_path / "run" / "run.json").read_text())
    assert header["latent_dim"] == int(torch.tensor(comps.policy.latent_shape).prod())


def test_save_resume_equals_uninterrupted(setup, tmp_path):
    root, paths = setup
    full = make_config({}, _args(root, paths["sd3"], tmp_path / "full", "iterations=2", "checkpoint_every=1"))
    train(full)
    half = make_config({}, _args(root, paths["sd3"], tmp_path / "half", "iterations=1", "checkpoint_every=1"))
    train(half)
    resumed = make_config({}, _args(root, paths["sd3"], tmp_path / "half", "iterations=2", "checkpoint_every=1"))
    train(resumed, resume=True)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["policy"]
    b = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=False)["policy"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [strip(r) for r in read_jsonl(tmp_path / "full" / "metrics.jsonl")] == \
        [strip(r) for r in read_jsonl(tmp_path / "half" / "metrics.jsonl")]


def test_compile_and_text_encoder_offload_reach_the_policy(setup, tmp_path):
    """config.compile / config.offload_text_encoders are passed to the adapter (compilation itself is lazy:
    nothing is compiled until the first forward, which this test does not run)."""
    root, paths = setup
    cfg = make_config({}, _args(root, paths["sd3"], tmp_path / "run", "compile=true", "offload_text_encoders=true"))
    policy = build_components(cfg).policy
    assert policy.offload_text_encoders is True
    assert getattr(policy._core, "_compiled_call_impl", None) is not None
    plain = build_components(make_config({}, _args(root, paths["sd3"], tmp_path / "run2"))).policy
    assert plain.offload_text_encoders is False and getattr(plain._core, "_compiled_call_impl", None) is None
