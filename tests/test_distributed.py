"""Two CPU processes (gloo) via torchrun: parameters identical across ranks after every optimizer step
(docs/failure_modes.md: step-0 σ0), and a 2-rank run matches a 1-rank run of the same global batch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from flowdppo.runlog import read_jsonl

TESTS = Path(__file__).parent

_SCRIPT = '''
import hashlib, sys
import torch, torch.distributed as td
from flowdppo.testing.toy import toy_components
from flowdppo.config import make_config
from flowdppo.trainer import train

mismatches = []
def check(step, policy):
    if not td.is_initialized():
        return
    flat = torch.cat([p.detach().reshape(-1) for p in policy.trainable_parameters()])
    digest = torch.tensor(list(hashlib.sha256(flat.numpy().tobytes()).digest()[:8]), dtype=torch.int64)
    parts = [torch.empty_like(digest) for _ in range(td.get_world_size())]
    td.all_gather(parts, digest)
    if not all(torch.equal(parts[0], p) for p in parts):
        mismatches.append(step)

cfg = make_config({{}}, sys.argv[1:])
train(cfg, components=toy_components(), on_step=check)
if mismatches:
    raise SystemExit(f"parameters differ across ranks after steps {{mismatches}}")
from flowdppo.dist import end_rank_process
end_rank_process(0)
'''

ARGS = ["prompts_per_iter=4", "group_size=4", "num_minibatches=2", "num_inner_epochs=2", "iterations=3",
        "rewards=brightness", "progress=false", "threads=1", "num_steps=6", "sde_steps_per_traj=2", "lr=3e-3",
        "eval_every=0", "beta=0.01", "delta=1e-6"]


def _launch(nproc: int, run_dir: Path) -> subprocess.CompletedProcess:
    script = run_dir.parent / f"dist_{nproc}.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), f"run_dir={run_dir}", *ARGS]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_two_ranks_stay_identical_and_match_one_rank(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _launch(1, one)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _launch(2, two)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    s1 = torch.load(one / "checkpoint.pt", weights_only=False)["policy"]
    s2 = torch.load(two / "checkpoint.pt", weights_only=False)["policy"]
    # float32 gradient sums in a different order: agreement to ~1e-6 relative after 12 AdamW steps
    for k in s1:
        assert torch.allclose(s1[k], s2[k], rtol=1e-4, atol=1e-6), k
    m1, m2 = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert len(m1) == len(m2) == 12
    for a, b in zip(m1, m2):
        assert a["reward/brightness_mean"] == b["reward/brightness_mean"] or \
            abs(a["reward/brightness_mean"] - b["reward/brightness_mean"]) < 1e-5
        assert abs(a["kl_per_dim_mean"] - b["kl_per_dim_mean"]) <= 1e-3 * abs(a["kl_per_dim_mean"]) + 1e-9


# ----------------------------------------------------------------------------------------------------
# FSDP2: full fine-tuning of the embedded world's transformer, sharded over 2 gloo ranks
# ----------------------------------------------------------------------------------------------------
_FSDP_SCRIPT = '''
import hashlib, json, sys
from pathlib import Path
import torch, torch.distributed as td
from flowdppo import dist
from flowdppo.config import make_config
from flowdppo.trainer import train

seen = []
def check(step, policy):
    """Every rank's view of the full weights is identical; each rank stores only its shard."""
    if not td.is_initialized():
        return
    params = policy.trainable_parameters()
    flat = torch.cat([dist.full_tensor(p.detach()).reshape(-1) for p in params])
    digest = torch.tensor(list(hashlib.sha256(flat.numpy().tobytes()).digest()[:8]), dtype=torch.int64)
    parts = [torch.empty_like(digest) for _ in range(td.get_world_size())]
    td.all_gather(parts, digest)
    seen.append({{"step": step, "identical": all(torch.equal(parts[0], p) for p in parts),
                  "local": dist.local_numel(params), "total": flat.numel()}})

cfg = make_config({{}}, sys.argv[1:])
train(cfg, resume="--resume" in sys.argv[1:2] or Path(cfg.run_dir, "config.json").exists(), on_step=check)
if td.is_initialized():
    Path(cfg.run_dir, f"shards_rank{{td.get_rank()}}.json").write_text(json.dumps(seen))
dist.end_rank_process(0)
'''

FSDP_ARGS = ["prompts_per_iter=4", "group_size=2", "num_steps=6", "sde_steps_per_traj=2", "num_minibatches=2",
             "eval_every=1", "eval_prompts=2", "eval_samples_per_prompt=2", "progress=false", "threads=1",
             "beta=0.1"]


def _launch_world(nproc: int, run_dir: Path, iterations: int) -> None:
    script = run_dir.parent / "fsdp_world.py"
    script.write_text(_FSDP_SCRIPT.format())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), f"run_dir={run_dir}", f"iterations={iterations}", *FSDP_ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]


def _close_checkpoints(a: Path, b: Path, atol: float) -> None:
    sa, sb = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (a, b))
    assert sa["iteration"] == sb["iteration"] and sa["opt_step"] == sb["opt_step"]
    assert sa["policy"].keys() == sb["policy"].keys()
    for k in sa["policy"]:
        assert torch.allclose(sa["policy"][k].float(), sb["policy"][k].float(), rtol=0, atol=atol), k
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(oa["state"][i][name], ob["state"][i][name], rtol=1e-3, atol=1e-8), (i, name)


def test_fsdp_full_finetune_matches_one_rank_and_resumes_across_world_sizes(tmp_path):
    """Full fine-tuning of the embedded transformer (0.63 M weights, lr 1e-4, β 0.1 with the sharded frozen
    reference, 2 iterations × 2 AdamW steps):
    the 2-rank FSDP2 run shards weights and optimizer state (each rank stores ≈ half), every rank sees the
    same full weights after every step, and its checkpoint (full tensors) matches the 1-rank run's.  A
    checkpoint written by either world size resumes on the other to the same end point.

    Tolerance: weights agree to 2e-5 absolute (measured: 2.7e-6; float32 gradient sums in another order
    after AdamW's normalisation, on weights moved ~4e-4 by the 4 steps); rewards/KL/eval to 1e-4 relative."""
    one, two, two_then_one, one_then_two = (tmp_path / n for n in ("one", "two", "two_then_one", "one_then_two"))
    _launch_world(1, one, 2)
    _launch_world(2, two, 2)
    assert json.loads((two / "run.json").read_text())["fsdp"] is True
    assert json.loads((one / "run.json").read_text())["fsdp"] is False
    for rank in (0, 1):
        seen = json.loads((two / f"shards_rank{rank}.json").read_text())
        assert len(seen) == 4 and all(s["identical"] for s in seen)
        assert all(0.45 * s["total"] <= s["local"] <= 0.55 * s["total"] for s in seen), seen[0]
    _close_checkpoints(one, two, atol=2e-5)
    m1, m2 = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert len(m1) == len(m2) == 4
    for a, b in zip(m1, m2):
        for key in ("reward/tifa_mean", "kl_per_dim_mean", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]) + 1e-9, (key, a[key], b[key])
    e1, e2 = read_jsonl(one / "eval.jsonl"), read_jsonl(two / "eval.jsonl")
    assert [(r["iteration"], r["split"]) for r in e1] == [(r["iteration"], r["split"]) for r in e2]
    assert len(e1) == 9   # iterations 0, 1, 2 × {test, ood, transfer}
    for a, b in zip(e1, e2):
        assert abs(a["tifa"] - b["tifa"]) <= 1e-4 * abs(a["tifa"]) + 1e-6

    # world size 2 → 1 and 1 → 2, resuming a finished 1-iteration run to 2 iterations
    _launch_world(2, two_then_one, 1)
    _launch_world(1, two_then_one, 2)
    _launch_world(1, one_then_two, 1)
    _launch_world(2, one_then_two, 2)
    for run in (two_then_one, one_then_two):
        _close_checkpoints(one, run, atol=2e-5)
        assert len(read_jsonl(run / "metrics.jsonl")) == 4
        assert [(r["iteration"], r["split"]) for r in read_jsonl(run / "eval.jsonl")] == \
            [(r["iteration"], r["split"]) for r in e1]   # no duplicate evaluation at the resume point


def test_fsdp_full_finetune_of_a_diffusers_flux_pipeline(tmp_path):
    """`torchrun … -m flowdppo train --model <path> lora_rank=0` on a tiny FLUX.1 pipeline (both block
    lists: transformer_blocks and single_transformer_blocks become FSDP units) matches the 1-rank run
    (2 iterations × 2 AdamW steps at lr 1e-3; measured max weight difference 4e-7, tolerance 1e-5)."""
    from flowdppo.testing.tiny_pipelines import TINY_RESOLUTION, build_tiny_flux
    build_tiny_flux(tmp_path / "flux")
    (tmp_path / "prompts.txt").write_text("a red cat\ntwo dogs\na blue car\nthree apples\n")
    args = [f"model={tmp_path / 'flux'}", f"prompts={tmp_path / 'prompts.txt'}", "rewards=jpeg",
            f"resolution={TINY_RESOLUTION}", "lora_rank=0", "dtype=float32", "prompts_per_iter=2", "group_size=2",
            "num_minibatches=2", "num_steps=4", "sde_steps_per_traj=1", "eval_every=0", "progress=false",
            "threads=1", "lr=1e-3", "beta=0.01", "iterations=2"]
    for name, n, extra in (("run1", 1, []), ("run2", 2, []), ("run2_regather", 2, ["fsdp_gather_inference=false"])):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "flowdppo", "train", f"run_dir={tmp_path / name}", *args, *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["fsdp"] is True
    _close_checkpoints(tmp_path / "run1", tmp_path / "run2", atol=1e-5)
    # gathering once per rollout pass vs at every forward: the same all-gathered weights, bit for bit
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=False)["policy"] for n in ("run2", "run2_regather"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    before = _tiny_flux_weights(tmp_path / "flux")
    after = torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=False)["policy"]
    assert after.keys() == before.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "full fine-tuning changed nothing"


def _tiny_flux_weights(path: Path) -> dict:
    from diffusers import FluxTransformer2DModel
    return {k: v.detach() for k, v in FluxTransformer2DModel.from_pretrained(path / "transformer").state_dict().items()}


def test_local_device_gives_each_torchrun_rank_its_own_gpu(monkeypatch):
    from flowdppo.dist import local_device
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_device("cuda") == "cuda:3"          # one GPU per rank, not all on cuda:0
    assert local_device("cuda:1") == "cuda:1"        # an explicit index is kept
    assert local_device("cpu") == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device("cuda") == "cuda"


# ----------------------------------------------------------------------------------------------------
# The documented command itself: `torchrun … -m flowdppo train --model <dir>` on a LoRA'd diffusers pipeline
# ----------------------------------------------------------------------------------------------------
def test_torchrun_cli_lora_on_a_diffusers_pipeline_matches_one_rank(tmp_path):
    """The README's distributed command through the real CLI, with a tiny SD3 pipeline loaded by path and
    LoRA (parallel=auto → replicate): exits 0 on both ranks, prints one summary (rank 0), logs world size 2,
    and its checkpoint (LoRA weights only) and reward log match a 1-process run of the same global batch."""
    from flowdppo.testing.tiny_pipelines import TINY_RESOLUTION, build_tiny_sd3
    build_tiny_sd3(tmp_path / "sd3")
    (tmp_path / "prompts.txt").write_text("a red cat\ntwo dogs\na blue car\nthree apples\n")
    args = [f"prompts={tmp_path / 'prompts.txt'}", "rewards=jpeg", f"resolution={TINY_RESOLUTION}", "lora_rank=4",
            "dtype=float32", "prompts_per_iter=2", "group_size=2", "num_minibatches=1", "num_steps=4",
            "sde_steps_per_traj=1", "iterations=2", "eval_every=0", "progress=false", "threads=1", "lr=1e-2",
            "beta=0.01"]
    runs = {}
    for nproc in (1, 2):
        run_dir = tmp_path / f"run{nproc}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "flowdppo", "train", "--model", str(tmp_path / "sd3"), f"run_dir={run_dir}", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-4000:]
        assert r.stdout.count("run directory:") == 1, r.stdout[-2000:]
        assert json.loads((run_dir / "run.json").read_text())["world_size"] == nproc
        runs[nproc] = run_dir
    s1, s2 = (torch.load(runs[n] / "checkpoint.pt", weights_only=False)["policy"] for n in (1, 2))
    assert s1.keys() == s2.keys() and s1 and all("lora" in k for k in s1)
    assert any("lora_B" in k and s1[k].abs().max() > 0 for k in s1), "LoRA B starts at 0: training must move it"
    for k in s1:
        assert torch.allclose(s1[k], s2[k], rtol=1e-4, atol=1e-6), k
    m1, m2 = read_jsonl(runs[1] / "metrics.jsonl"), read_jsonl(runs[2] / "metrics.jsonl")
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        assert abs(a["reward/jpeg_mean"] - b["reward/jpeg_mean"]) < 1e-5
