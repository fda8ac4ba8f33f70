"""Deterministic pretraining of the world's base model (rectified flow, paper Eq. 1).

    x_σ = (1 − σ)·x0 + σ·ε,   target v = ε − x0,   σ ~ logit-normal(0, 1),   loss = ‖v_θ(x_σ, σ, c) − v‖²

x0 are canvases composed from the "gen" split of the digits for prompts drawn from a fixed pool
(`data.pretraining_pool`, evaluation prompts excluded); 10 % of prompts are dropped to the empty
prompt so classifier-free guidance works.  Single process, fixed seeds, fixed thread count: two runs
with the same arguments give identical weights.

    python -m flowdppo.world.pretraining OUT.safetensors [--recipe world_base|world_base_v1] [--steps N] …

With no options it rebuilds the shipped default base (`RECIPES["world_base"]`) bit for bit on one thread.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from ..policy.tiny import TINY_CONFIG, build_transformer
from .data import CanvasSampler, excluded_from_pretraining, pretraining_pool
from .text import MiniLMEncoder

PROMPT_DROPOUT = 0.1
# The recipes of the shipped bases (flowdppo/assets/<name>.safetensors); `pretrain`'s defaults are the first.
#   world_base     an EARLY checkpoint: step 2000 of a 4000-step schedule, half the prompts relational and
#                  85 % of those 3-digit L shapes (whose implied empty cell the model learns last), so both
#                  in-domain families sit mid-way (held-out accuracy ≈ 0.3 / 0.5) and RL has room to learn.
#   world_base_v1  the first world's base (4000 steps, 10 % relational prompts, half 3-digit): 3-digit
#                  layouts 0.21, 4-digit 0.82 — the first world's runs were trained from it.
RECIPES: dict[str, dict] = {
    "world_base": dict(steps=2000, schedule_steps=4000, seed=0, relation_share=0.5, relation3_fraction=0.85),
    "world_base_v1": dict(steps=4000, schedule_steps=4000, seed=0, relation_share=0.1, relation3_fraction=0.5),
}
_DEFAULT = RECIPES["world_base"]
DEFAULT_STEPS = _DEFAULT["steps"]


def pretrain(out_path: Optional[str | Path], *, steps: int = DEFAULT_STEPS, seed: int = _DEFAULT["seed"], threads: int = 1,
             log_every: int = 250, batch_size: int = 128, lr: float = 1e-3, pool_size: int = 4096,
             warmup: int = 200, config: Optional[dict] = None, snapshot_every: int = 0,
             relation_share: float = _DEFAULT["relation_share"],
             relation3_fraction: float = _DEFAULT["relation3_fraction"],
             schedule_steps: Optional[int] = _DEFAULT["schedule_steps"]) -> dict:
    """Train the base from scratch and save it (safetensors, config in the metadata) to out_path.

    steps: optimizer steps; batch_size: canvases per step; lr: AdamW peak (linear warm-up over `warmup`
    steps, cosine decay to 5 % of it); pool_size: distinct pretraining prompts (MiniLM-encoded once).
    schedule_steps: length of the warm-up + cosine schedule (None = steps); steps < schedule_steps stops
    early on that schedule, bit-identical to the same step of the longer run (an early checkpoint).
    snapshot_every > 0 also saves <out_path stem>.step<N>.safetensors every N steps (learning curves).
    Returns a summary dict (steps, seconds, final loss, params), also stored in the checkpoint's metadata.
    out_path None trains without saving (tests).
    """
    from safetensors.torch import save_file

    t_start = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = dict(config or TINY_CONFIG)
    model = build_transformer(cfg).train()

    horizon = steps if schedule_steps is None else schedule_steps
    if horizon < steps:
        raise ValueError(f"schedule_steps={schedule_steps} < steps={steps}: the schedule must cover every step. "
                         f"Fix: pass schedule_steps >= steps (or None for a schedule of exactly `steps`)")
    pool = pretraining_pool(pool_size, seed, excluded_from_pretraining(0), relation_share, relation3_fraction)
    enc = MiniLMEncoder()
    states, pooled = enc.encode([it.text for it in pool])            # [N, L, 384], [N, 384]
    empty_states, empty_pooled = enc.encode([""])
    layouts = torch.tensor([it.meta["layout"] for it in pool])       # [N, 4]
    t_encoded = time.time()

    canvas = CanvasSampler("gen")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, horizon))))))
    history = []
    running = 0.0
    for step in range(steps):
        idx = torch.randint(len(pool), (batch_size,), generator=g)
        x0 = canvas(layouts[idx], g) * 2.0 - 1.0                       # pixels → [-1, 1]
        drop = (torch.rand(batch_size, generator=g) < PROMPT_DROPOUT).view(-1, 1)
        enc_states = torch.where(drop.unsqueeze(-1), empty_states, states[idx])
        enc_pooled = torch.where(drop, empty_pooled, pooled[idx])
        sigma = torch.sigmoid(torch.randn(batch_size, generator=g))    # logit-normal σ
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1)
        x_sigma = (1.0 - s) * x0 + s * eps
        v = model(hidden_states=x_sigma, encoder_hidden_states=enc_states, pooled_projections=enc_pooled,
                  timestep=1000.0 * sigma, return_dict=False)[0]
        loss = (v - (eps - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())                                       # host sync, once per step
        if snapshot_every and out_path is not None and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            snap = Path(out_path).with_suffix(f".step{step + 1}.safetensors")
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(snap),
                      metadata={"config": json.dumps(cfg)})
        if log_every and (step + 1) % log_every == 0:
            rec = {"step": step + 1, "loss": running / log_every, "lr": sched.get_last_lr()[0],
                   "seconds": round(time.time() - t_start, 1)}
            history.append(rec)
            print(json.dumps(rec), flush=True)
            running = 0.0

    summary = {"steps": steps, "seed": seed, "threads": threads, "batch_size": batch_size, "lr": lr,
               "pool_size": pool_size, "relation_share": relation_share,
               "relation3_fraction": relation3_fraction, "schedule_steps": horizon, "params": sum(p.numel() for p in model.parameters()),
               "encode_seconds": round(t_encoded - t_start, 1), "seconds": round(time.time() - t_start, 1),
               "final_loss": history[-1]["loss"] if history else float(loss.detach())}
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out_path), metadata={"config": json.dumps(cfg), "summary": json.dumps(summary)})
    return summary


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description="Pretrain the embedded world's base model (deterministic).")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="world_base",
                   help="a shipped base's recipe (the other options override its fields)")
    for name, kind in (("steps", int), ("schedule-steps", int), ("seed", int), ("relation-share", float),
                       ("relation3-fraction", float)):
        p.add_argument(f"--{name}", type=kind, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--pool-size", type=int, default=4096)
    p.add_argument("--snapshot-every", type=int, default=0)
    a = p.parse_args(argv)
    kw = dict(RECIPES[a.recipe])
    kw.update({k: v for k, v in dict(steps=a.steps, schedule_steps=a.schedule_steps, seed=a.seed,
                                     relation_share=a.relation_share,
                                     relation3_fraction=a.relation3_fraction).items() if v is not None})
    summary = pretrain(a.out, threads=a.threads, log_every=a.log_every, pool_size=a.pool_size,
                       snapshot_every=a.snapshot_every, **kw)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
