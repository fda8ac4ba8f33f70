"""`python -m flowdppo.conformance`: run the conformance properties on a user's kernel and loss.

    python -m flowdppo.conformance                                    # our own implementation
    python -m flowdppo.conformance --kernel my_sampler.py:sde_step --kernel-adapter tuple \\
        --loss my_trainer.py:dppo_loss --adapter kl_tensor --kl my_trainer.py:kl --kl-adapter schedule

Exit status 0 when every property that ran passed, 1 when one failed, 2 on a usage error.
See docs/conformance.md for the conventions and a worked example.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .. import sde
from .adapters import (KERNEL_ADAPTERS, KL_ADAPTERS, LOSS_ADAPTERS, Subject, dtype_store, load_callable, make_kernel,
                       make_loss)
from .properties import PROPERTY_NAMES, SAMPLERS, Context, Settings, run_properties
from .report import format_report, to_json


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flowdppo.conformance", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", help="MODULE:CALLABLE or file.py:CALLABLE of the per-step sampler (default: "
                                    "flowdppo.sde:step; with --loss alone its kernel properties are skipped)")
    p.add_argument("--kernel-adapter", default="flowdppo", choices=KERNEL_ADAPTERS,
                   help="calling convention of --kernel (see flowdppo/conformance/adapters.py)")
    p.add_argument("--loss", help="MODULE:CALLABLE of the policy loss (default: flowdppo.losses:flow_dppo)")
    p.add_argument("--adapter", default="flowdppo", choices=LOSS_ADAPTERS, help="calling convention of --loss")
    p.add_argument("--kl", help="MODULE:CALLABLE of the KL function that feeds a kl_tensor loss")
    p.add_argument("--kl-adapter", default="std", choices=KL_ADAPTERS, help="calling convention of --kl")
    p.add_argument("--store", help="MODULE:CALLABLE applied to each anchor (old mean, old log-prob) before it is "
                                   "kept: your trajectory buffer")
    p.add_argument("--anchor-dtype", choices=("float32", "bfloat16", "float16", "float64"),
                   help="shortcut for --store: anchors kept in this dtype")
    p.add_argument("--sampler", default="flow_sde", choices=SAMPLERS,
                   help="which paper kernel your step implements (custom: none)")
    p.add_argument("--logp-reduction", default="per_dim", choices=("per_dim", "sum"),
                   help="with --kernel-adapter flowdppo: which log-prob the step's result is read as")
    p.add_argument("--kl-reduction", default="auto", choices=("auto", "per_dim", "sum"),
                   help="what your mask's KL is (auto: whichever of per-dim mean / sum it matches)")
    p.add_argument("--eta", type=float, default=0.7)
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mc-samples", type=int, default=2048)
    p.add_argument("--only", nargs="+", metavar="PROPERTY", help=f"run only these: {', '.join(PROPERTY_NAMES)}")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    return p


def build(args: argparse.Namespace) -> tuple[Context, list[str]]:
    settings = Settings(sampler=args.sampler, eta=args.eta, num_steps=args.num_steps, shift=args.shift,
                        dtype=args.dtype, seed=args.seed, mc_samples=args.mc_samples, kl_reduction=args.kl_reduction)
    notes: list[str] = []
    if args.kernel:
        kernel_fn = load_callable(args.kernel, "--kernel")
        kernel_label = f"{args.kernel} [{args.kernel_adapter}]"
    else:
        if args.sampler == "custom":
            raise ValueError("--sampler custom needs --kernel. Fix: pass your step function")
        kernel_fn, args.kernel_adapter = sde.step, "flowdppo"
        kernel_label = (f"flowdppo.sde:step (reference {args.sampler}"
                        + ("; kernel properties skipped)" if args.loss else ")"))
    kernel = make_kernel(kernel_fn, args.kernel_adapter, sampler=args.sampler, logp_reduction=args.logp_reduction)
    loss_spec = args.loss or "flowdppo.losses:flow_dppo"
    loss_fn = load_callable(loss_spec, "--loss")
    kl_fn = load_callable(args.kl, "--kl") if args.kl else None
    loss = make_loss(loss_fn, args.adapter, kl_fn=kl_fn, kl_adapter=args.kl_adapter, notes=notes)
    if args.store and args.anchor_dtype:
        raise ValueError("--store and --anchor-dtype both given. Fix: keep one")
    store, store_label = (lambda t: t), "as returned"
    if args.store:
        store, store_label = load_callable(args.store, "--store"), args.store
    elif args.anchor_dtype:
        store, store_label = dtype_store(getattr(torch, args.anchor_dtype)), f"in {args.anchor_dtype}"
    subject = Subject(kernel=kernel, loss=loss, store=store, name=loss_spec, notes=notes)
    header = [f"flowdppo conformance — kernel: {kernel_label}",
              f"  loss: {loss_spec} [{args.adapter}]" + (f", kl: {args.kl} [{args.kl_adapter}]" if args.kl else ""),
              f"  anchors: {store_label}",
              f"  settings: sampler={settings.sampler} η={settings.eta} steps={settings.num_steps} "
              f"shift={settings.shift} dtype={settings.dtype} seed={settings.seed} MC draws/step="
              f"{settings.mc_samples}×{settings.mc_dims}"]
    # a loss given alone is checked with the reference kernel, whose own properties are then not the user's
    return Context(subject=subject, settings=settings, kernel_is_reference=not args.kernel and bool(args.loss)), header


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(1)     # the tensors are small: one thread is fastest, and float sums reproducible
    try:
        ctx, header = build(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = run_properties(ctx, only=args.only)
    header = header + [f"  notes: {n}" for n in ctx.subject.notes]
    elapsed = time.perf_counter() - t0
    print(format_report(results, header=header))
    print(f"\n(ran in {elapsed:.1f} s)")
    if args.json:
        Path(args.json).write_text(to_json(results, header=header), encoding="utf-8")
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
