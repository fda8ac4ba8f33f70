"""Cost of one run on the embedded world (a benchmark, not a test): seconds per iteration on one thread
and core-minutes per run, split into rollout / reward / update / evaluation.

Runs the default config (or the given overrides) for `--iterations` iterations with one evaluation at the
start and one at the end, drops the first `--warmup` iterations, and extrapolates to a run of
`--run-iterations` iterations with evaluations every `eval_every` (both from the config):

    python benchmarks/world_bench.py [--iterations 12] [--run-iterations 200] [--out FILE.json] [key=value …]

Two single-threaded runs side by side use the 2 cores of the project's machines best, so core-minutes
are what a campaign spends; run this on an otherwise idle machine for numbers worth committing.
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
from flowdppo.trainer import build_components, train
from trainer_bench import iteration_times   # run as `python benchmarks/world_bench.py`: its folder is on sys.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--run-iterations", type=int, default=200)
    ap.add_argument("--out", type=str, default="")
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench"
        cfg = make_config({}, ["threads=1", "progress=false", "checkpoint_every=0", *args.overrides,
                               f"run_dir={run_dir}", f"iterations={args.iterations}",
                               f"eval_every={args.iterations}"])
        comps = build_components(cfg)
        texts = [it.text for split in comps.splits.values() for it in split]
        for i in range(0, len(texts), 256):               # encode once up front (the cache is process-wide)
            comps.policy.encode_prompts(texts[i:i + 256])
        t0 = time.perf_counter()
        train(cfg, components=comps)
        wall = time.perf_counter() - t0
        all_its = iteration_times(run_dir)
    its = all_its[args.warmup:]
    iter_s = statistics.median(i["rollout"] + i["reward"] + i["update"] for i in its)
    train_s = sum(i["rollout"] + i["reward"] + i["update"] for i in all_its)
    eval_s = (wall - train_s) / 2                          # two evaluations (start, end) + small overheads
    run_cfg = make_config({}, args.overrides)
    n_evals = (args.run_iterations // run_cfg.eval_every + 1) if run_cfg.eval_every else 0
    run_s = args.run_iterations * iter_s + n_evals * eval_s
    result = {"date": time.strftime("%Y-%m-%d"), "threads": 1, "torch": torch.__version__,
              "overrides": args.overrides, "batch": run_cfg.batch_size, "iterations_timed": len(its),
              "iter_s_median": iter_s,
              "rollout_s": statistics.median(i["rollout"] for i in its),
              "reward_s": statistics.median(i["reward"] for i in its),
              "update_s": statistics.median(i["update"] for i in its),
              "eval_s_per_evaluation": eval_s, "evaluations_per_run": n_evals,
              "run_iterations": args.run_iterations, "core_minutes_per_run": run_s / 60}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
