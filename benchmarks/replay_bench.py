"""Batched vs per-step replay of the trained SDE steps on the embedded world (a benchmark, not a test).

One rollout of the default config, then the same optimizer steps (an SGD optimizer at lr 0, so every repetition sees
the same policy) timed with `batched_replay` off and on, interleaved, on one thread:

    python benchmarks/replay_bench.py [--reps 6] [--out FILE.json] [key=value …]

Prints seconds per update (all minibatches of one iteration) for both and their ratio. The two give the same
loss and gradient (tests/test_trainer.py::test_batched_replay_gives_the_per_step_loss_and_gradient).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flowdppo import dist
from flowdppo.config import make_config
from flowdppo.assembly import sigma_grid
from flowdppo.rollout import rollout
from flowdppo.trainer import build_components, minibatch_assignment, policy_loss_fn, update_minibatch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--out", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfgs = {b: make_config({}, ["threads=1", f"batched_replay={str(b).lower()}", *args.overrides])
            for b in (False, True)}
    cfg = cfgs[False]
    comps = build_components(cfg)
    policy = comps.policy
    items = comps.splits["train"][: cfg.prompts_per_iter]
    cond = policy.encode_prompts([i.text for i in items])
    rows = [i for i in items for _ in range(cfg.group_size)]
    n = len(rows)
    sigmas = sigma_grid(policy, cfg.num_steps, cfg.shift)
    traj = rollout(policy, cond, torch.arange(len(items)).repeat_interleave(cfg.group_size), rows, sigmas=sigmas,
                   sde_indices=[0, 1, 2][: cfg.sde_steps_per_traj], kernel=cfg.kernel, eta=cfg.eta,
                   guidance_scale=cfg.guidance_scale, seed=0, iteration=0, global_indices=list(range(n)),
                   chunks=[list(range(n))], want_ref=cfg.beta > 0)
    adv = torch.randn(n, generator=torch.Generator().manual_seed(0))
    params = policy.trainable_parameters()
    opt = torch.optim.SGD(params, lr=0.0)
    mbs = minibatch_assignment(n, cfg.num_minibatches, seed=0, iteration=0, epoch=0, first_global=0)

    def update(c):
        for mb in mbs:
            update_minibatch(policy, traj, mb, adv, c, policy_loss_fn(c), params, opt, dist.DistInfo())

    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.reps + 1):
        for b in (False, True):
            t0 = time.perf_counter()
            update(cfgs[b])
            if rep:                    # the first round warms up
                times[b].append(time.perf_counter() - t0)
    res = {"per_step_s": statistics.median(times[False]), "batched_s": statistics.median(times[True]),
           "reps": args.reps, "batch": n, "trained_steps": len(traj.sde_indices), "threads": 1,
           "torch": torch.__version__}
    res["speedup"] = res["per_step_s"] / res["batched_s"]
    print(f"update of one iteration ({n} samples × {res['trained_steps']} trained steps, 1 thread): per-step "
          f"{res['per_step_s']:.3f} s, batched {res['batched_s']:.3f} s → {res['speedup']:.2f}×")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
