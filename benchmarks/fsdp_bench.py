"""Replicated weights vs FSDP2 for full fine-tuning, measured side by side on 2 CPU ranks (gloo).

    python benchmarks/fsdp_bench.py --out benchmarks/fsdp_bench_cpu.json          # ~3 min on 2 cores

The policy is the embedded world's SD3Transformer2DModel widened to a size where weights dominate the
process (default: 8 layers × 512 wide, ≈ 30 M parameters; random weights, MiniLM prompts, tifa reward),
trained with full fine-tuning by the trainer itself (`flowdppo.trainer.train`, 2 iterations of 8 prompts
× 4 samples).  For each layout the launcher starts `torchrun --nproc_per_node 2` on this file in worker
mode; layouts alternate for `--reps` rounds.  Each rank reports:

  * stored training state: its local share of the trainable weights, their gradients and the AdamW
    moments (counted from the tensors after the last optimizer step);
  * peak RSS of the process (`resource.getrusage`).  On CPU this is NOT the steady state: it includes the
    full model each rank builds before sharding, transient copies (AdamW's foreach temporaries, the
    gathered weights of a rollout pass, rank 0's full-tensor checkpoint) and heap that glibc keeps after
    frees — read it as an upper bound, not as the layout's footprint.  Rank 0 alone writes the
    checkpoint, which holds FULL tensors (weights + AdamW moments gathered to its CPU RAM), so it is
    reported apart from rank 1;
  * seconds per iteration (the log's `time/step_s`, rollout and reward times).

A script, not a test: it prints what it measured and the ratios fsdp ÷ replicate; it asserts nothing.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDE = dict(sample_size=16, patch_size=4, in_channels=1, out_channels=1, num_layers=8, attention_head_dim=64,
            num_attention_heads=8, joint_attention_dim=384, caption_projection_dim=512, pooled_projection_dim=384,
            pos_embed_max_size=4)
ARGS = ["prompts_per_iter=8", "group_size=4", "num_minibatches=2", "num_steps=6", "sde_steps_per_traj=2",
        "iterations=2", "eval_every=0", "progress=false", "threads=1", "rewards=tifa", "lr=1e-5"]


def worker(mode: str, out: Path, layers: int) -> None:
    import torch
    import torch.distributed as td

    from flowdppo import dist, world
    from flowdppo.config import make_config
    from flowdppo.policy.tiny import TinyFlowPolicy, build_transformer
    from flowdppo.trainer import Components, train
    from flowdppo.world.text import shared_encoder

    torch.manual_seed(0)
    policy = TinyFlowPolicy(build_transformer({**WIDE, "num_layers": layers}), shared_encoder().encode, lora_rank=0)
    comps = Components(policy=policy, splits=world.prompt_splits(), rewards={"tifa": world.make_reward("tifa")})
    seen: dict = {}

    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    def on_step(step, pol):
        params = pol.trainable_parameters()
        seen["weights_bytes"] = sum(local_bytes(p) for p in params)
        seen["grads_bytes"] = sum(local_bytes(p.grad) for p in params if p.grad is not None)
        # the trainer's AdamW, found by type (the trainer does not hand it to hooks)
        opt = next(o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer))
        seen["adam_state_bytes"] = sum(local_bytes(v) for st in opt.state.values() for v in st.values()
                                       if torch.is_tensor(v) and v.ndim > 0)
        seen["total_params"] = sum(p.numel() for p in params)   # a DTensor's numel is its global size

    run_dir = out.parent / f"run_{mode}_{os.getpid()}"
    cfg = make_config({}, [f"run_dir={run_dir}", f"parallel={mode}", *ARGS])
    train(cfg, components=comps, on_step=on_step)
    from flowdppo.runlog import read_jsonl
    recs = read_jsonl(run_dir / "metrics.jsonl")
    per_iter = {}
    for r in recs:
        per_iter.setdefault(r["iteration"], []).append(r)
    seen["update_s_per_iter"] = [sum(x["time/step_s"] for x in v) for v in per_iter.values()] if recs else []
    seen["rollout_s_per_iter"] = [v[0]["time/rollout_s"] for v in per_iter.values()] if recs else []
    seen["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rank = td.get_rank()
    gathered = [None] * td.get_world_size()
    td.all_gather_object(gathered, seen)
    if rank == 0:
        out.write_text(json.dumps({"mode": mode, "ranks": gathered}))
    dist.end_rank_process(0)


def launch(mode: str, tmp: Path, layers: int) -> dict:
    out = tmp / f"{mode}_{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--worker", mode, "--out", str(out), "--layers", str(layers)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise SystemExit(f"{mode} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON results path (launcher)")
    ap.add_argument("--reps", type=int, default=2, help="alternating rounds per layout")
    ap.add_argument("--layers", type=int, default=WIDE["num_layers"])
    ap.add_argument("--worker", choices=("replicate", "fsdp"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, Path(a.out), a.layers)
    results: dict[str, list] = {"replicate": [], "fsdp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.reps):
            for mode in results:
                results[mode].append(launch(mode, Path(tmp), a.layers))

    def med(mode, key, agg=max):
        return statistics.median(agg(r[key] for r in run["ranks"]) for run in results[mode])

    def med_time(mode, key):   # median over runs of the mean over iterations (rank 0; ranks step together)
        return statistics.median(statistics.mean(run["ranks"][0][key]) for run in results[mode])

    rows = {}
    for mode in results:
        rows[mode] = {
            "weights_mib_per_rank": med(mode, "weights_bytes") / 2**20,
            "grads_mib_per_rank": med(mode, "grads_bytes") / 2**20,
            "adam_state_mib_per_rank": med(mode, "adam_state_bytes") / 2**20,
            "peak_rss_mib_rank0": statistics.median(run["ranks"][0]["peak_rss_mib"] for run in results[mode]),
            "peak_rss_mib_rank1": statistics.median(run["ranks"][1]["peak_rss_mib"] for run in results[mode]),
            "update_s_per_iter": med_time(mode, "update_s_per_iter"),
            "rollout_s_per_iter": med_time(mode, "rollout_s_per_iter"),
        }
    total = results["fsdp"][0]["ranks"][0]["total_params"]
    summary = {"date": time.strftime("%Y-%m-%d"), "device": "CPU, 2 gloo ranks, 1 thread each",
               "trainable_params": total, "layers": a.layers, "reps": a.reps, "trainer_args": ARGS,
               "layouts": rows, "raw": results,
               "ratios_fsdp_over_replicate": {k: rows["fsdp"][k] / rows["replicate"][k] for k in rows["fsdp"]}}
    print(f"full fine-tuning, {total / 1e6:.1f} M trainable parameters, 2 ranks, medians of {a.reps} runs")
    print(f"{'':24s}{'replicate':>12s}{'fsdp':>12s}{'fsdp/repl':>11s}")
    for k in rows["fsdp"]:
        print(f"{k:24s}{rows['replicate'][k]:12.2f}{rows['fsdp'][k]:12.2f}{summary['ratios_fsdp_over_replicate'][k]:11.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
