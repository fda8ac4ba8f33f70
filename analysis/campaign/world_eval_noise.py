"""The pinned evaluation's own sampling error on the embedded world (world issue, item 2).

One fixed policy is evaluated K times under the pinned regime (ODE, fixed per-sample seeds) with K
different `eval_seed`s — K disjoint sets of evaluation seeds on the same prompts.  The spread (sample sd)
of its score over those K evaluations is the error one evaluation carries from the seeds alone; it is
what a difference between two evaluations of the same prompts has to clear (×√2 for a difference).

    .venv/bin/python analysis/world_eval_noise.py [--checkpoint FILE] [--sets 6] [--samples 16] [--json OUT]

Prints, per split and per layout family, the mean over sets and the sd across sets.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flowdppo import world
from flowdppo.config import make_config
from flowdppo.evaluation import evaluate_split
from flowdppo.trainer import Components


def measure(checkpoint: str | None, sets: int, samples: int, splits=("test", "ood", "transfer")) -> dict:
    torch.set_num_threads(1)
    cfg = make_config({"eval_samples_per_prompt": samples})
    policy = world.load_policy(checkpoint=checkpoint)
    comps = Components(policy=policy, splits=world.prompt_splits(), rewards={},
                       evaluate_images=world.evaluate_images)
    out: dict = {"checkpoint": checkpoint or "shipped base", "sets": sets, "samples_per_prompt": samples}
    for split in splits:
        items = comps.splits[split]
        runs = []
        for k in range(sets):
            metrics, _ = evaluate_split(policy, comps, cfg.replace(eval_seed=cfg.eval_seed + 1000 * (k + 1)), items,
                                        per=samples)
            runs.append(metrics)
        keys = [k for k in runs[0] if k.startswith(("accuracy", "tifa"))]
        out[split] = {"prompts": len(items), "images": len(items) * samples,
                      **{k: {"mean": statistics.fmean(r[k] for r in runs), "sd_over_seed_sets": statistics.stdev(r[k] for r in runs)}
                         for k in keys}}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="world checkpoint (default: the shipped base)")
    p.add_argument("--sets", type=int, default=6, help="disjoint seed sets (evaluations) to compare")
    p.add_argument("--samples", type=int, default=16, help="seeds per prompt in one evaluation")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    t0 = time.time()
    res = measure(a.checkpoint, a.sets, a.samples)
    res["seconds"] = round(time.time() - t0, 1)
    for split in ("test", "ood", "transfer"):
        for k, v in res[split].items():
            if isinstance(v, dict):
                print(f"{split:5s} {k:18s} mean {v['mean']:.4f}   sd over {a.sets} seed sets {v['sd_over_seed_sets']:.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
