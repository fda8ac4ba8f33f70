"""Iteration time of Flow-DPPO ÷ Flow-GRPO on the embedded default (a benchmark, not a test).

Both losses run the same config, seeds and base weights; runs alternate (DPPO, GRPO, DPPO, GRPO, …) so
machine drift hits both equally.  The first `--warmup` iterations of each run are dropped.  Prints the
ratio of median iteration times, samples/s, and where the time goes (rollout / reward / update).

    python benchmarks/trainer_bench.py [--reps 3] [--iterations 12] [--threads 1] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from flowdppo.config import make_config
from flowdppo.runlog import read_jsonl
from flowdppo.trainer import build_components, train


def one_run(loss: str, iterations: int, threads: int, seed: int, workdir: Path, extra: list[str]) -> list[dict]:
    run_dir = workdir / f"{loss}-{time.perf_counter_ns()}"
    cfg = make_config({}, [f"run_dir={run_dir}", f"loss={loss}", f"iterations={iterations}", f"threads={threads}",
                           f"seed={seed}", "eval_every=0", "checkpoint_every=0", "progress=false", *extra])
    torch.manual_seed(seed)
    comps = build_components(cfg)  # fresh base weights for each run
    train(cfg, components=comps)
    return iteration_times(run_dir)


def iteration_times(run_dir: Path) -> list[dict]:
    """Per iteration of a run's metrics.jsonl: {"rollout", "reward", "update"} seconds (update = the sum
    of its optimizer steps), in iteration order."""
    per_iter: dict[int, dict] = {}
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        d = per_iter.setdefault(r["iteration"], {"rollout": r["time/rollout_s"], "reward": r["time/reward_s"],
                                                 "update": 0.0})
        d["update"] += r["time/step_s"]
    return [per_iter[i] for i in sorted(per_iter)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=str, default="")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both losses")
    args = ap.parse_args()
    times: dict[str, list[dict]] = {"flow_dppo": [], "flow_grpo": []}
    # The world's text encoder caches encodings process-wide: encode every prompt once up front, or the
    # first loss to see a prompt pays for encoding it and the comparison is biased.
    warm = build_components(make_config({}, ["progress=false", *args.overrides]))
    texts = [it.text for split in warm.splits.values() for it in split]
    for i in range(0, len(texts), 256):
        warm.policy.encode_prompts(texts[i:i + 256])
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = ("flow_dppo", "flow_grpo") if rep % 2 == 0 else ("flow_grpo", "flow_dppo")
            for loss in order:
                its = one_run(loss, args.iterations, args.threads, rep, Path(tmp), args.overrides)
                times[loss] += its[args.warmup:]
    cfg = make_config({}, args.overrides)
    result = {"device": "cpu", "threads": args.threads, "batch": cfg.batch_size, "date": time.strftime("%Y-%m-%d")}
    for loss, its in times.items():
        tot = [i["rollout"] + i["reward"] + i["update"] for i in its]
        med = statistics.median(tot)
        result[loss] = {"iter_s_median": med, "samples_per_s": cfg.batch_size / med,
                        "rollout_s": statistics.median(i["rollout"] for i in its),
                        "reward_s": statistics.median(i["reward"] for i in its),
                        "update_s": statistics.median(i["update"] for i in its), "n_iterations": len(its)}
    result["dppo_over_grpo_iter_time"] = result["flow_dppo"]["iter_s_median"] / result["flow_grpo"]["iter_s_median"]
    result["dppo_over_grpo_update_time"] = result["flow_dppo"]["update_s"] / result["flow_grpo"]["update_s"]
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
