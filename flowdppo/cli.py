"""Command line: `flowdppo train | pretrain | eval`.

    flowdppo train [--config FILE] [key=value ...]      start a run (fields: flowdppo train --help-config)
    flowdppo train --resume RUN_DIR [key=value ...]     continue a run from its last checkpoint
    flowdppo train --resume RUN_DIR --restart           train a run without a checkpoint again from iteration 0
                                                        (its logs are moved to RUN_DIR/replaced-<time>/ first)
    flowdppo pretrain [--out FILE] [--recipe NAME]      rebuild a shipped base model deterministically
    flowdppo eval RUN_DIR [key=value ...]              evaluate a run's latest checkpoint (pinned regime)

An error the user can fix (flowdppo.errors.FlowDPPOError, ValueError) is printed as one line,
`flowdppo: error: <what>. Fix: <how>`, with exit code 2; such errors are raised before anything is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _resume_base(run_dir: str, args: argparse.Namespace) -> tuple[dict, list[str]]:
    """(the run's own config.json, the overrides): the directory given IS the run (the run_dir recorded in
    config.json is ignored; a run_dir= override must name the same directory)."""
    from .config import RESUME_MAY_CHANGE
    from .errors import ConfigError, RunDirError
    if args.config:
        may = ", ".join(f"{k}=" for k in RESUME_MAY_CHANGE if k != "run_dir")
        raise ConfigError(f"--resume {run_dir} continues the run with its own config.json; --config {args.config} "
                          f"would be ignored. Fix: drop --config (a resume may change only {may})")
    overrides = []
    for o in args.overrides:
        key, _, value = o.partition("=")
        if key.strip().lstrip("-").replace("-", "_") != "run_dir":
            overrides.append(o)
        elif Path(value).resolve() != Path(run_dir).resolve():
            raise ConfigError(f"config.run_dir: {value} is not the directory --resume {run_dir} continues. Fix: "
                              "drop run_dir= (the --resume directory is the run)")
    cfg_file = Path(run_dir) / "config.json"
    if not cfg_file.is_file():
        raise RunDirError(f"--resume {run_dir}: no config.json there (working directory {Path.cwd()}). Fix: give the "
                          "directory of a run (the one holding config.json and metrics.jsonl)")
    try:
        return {**json.loads(cfg_file.read_text()), "run_dir": run_dir}, overrides
    except json.JSONDecodeError as err:
        raise RunDirError(f"--resume {run_dir}: config.json is not valid JSON ({err}). Fix: restore it from a copy "
                          "(checkpoint.pt holds the config too, under 'config')") from None


def _train(args: argparse.Namespace) -> int:
    from .config import describe_fields, load_config_file, make_config
    from .errors import ConfigError
    from .trainer import train
    if args.help_config:
        print(describe_fields())
        return 0
    if args.restart and not args.resume:
        raise ConfigError("--restart applies to --resume RUN_DIR (it moves that run's logs aside and trains it again "
                          "from iteration 0). Fix: add --resume RUN_DIR, or drop --restart")
    base, overrides = {}, list(args.overrides)
    if args.resume:
        base, overrides = _resume_base(args.resume, args)
    elif args.config:
        base = load_config_file(args.config)
    overrides += [f"model={args.model}"] if args.model else []
    cfg = make_config(base, overrides)
    from . import dist
    run_dir = train(cfg, resume=bool(args.resume), restart=args.restart)
    if not dist.td.is_initialized() or dist.td.get_rank() == 0:   # under torchrun: one summary, from rank 0
        print(f"run directory: {run_dir}")
        _print_summary(run_dir)
    dist.end_rank_process(0)   # torchrun workers end here (see its docstring); single process: returns
    return 0


def _print_summary(run_dir: Path) -> None:
    from .runlog import read_jsonl
    steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("minibatch") == 0 and r.get("epoch") == 0]
    keys = [k for k in (steps[0] if steps else {}) if k.startswith("reward/") and k.endswith("_mean")]
    if len(steps) >= 4 and keys:
        n = max(1, len(steps) // 5)
        first, last = steps[:n], steps[-n:]
        print(f"training reward (rollout samples, mean of the first / last {n} iterations): " + "  ".join(
            f"{k[7:-5]} {sum(r[k] for r in first) / n:.3f}->{sum(r[k] for r in last) / n:.3f}" for k in keys))
    evals = read_jsonl(run_dir / "eval.jsonl")
    if not evals:
        return
    first, last = evals[0]["iteration"], evals[-1]["iteration"]
    print(f"evaluation (pinned ODE regime), iteration {first} -> {last}:")
    from .evaluation import EVAL_SPLITS
    for split in EVAL_SPLITS:
        a = [e for e in evals if e["split"] == split]
        if len(a) < 1:
            continue
        keys = [k for k, v in a[0].items() if isinstance(v, (int, float)) and k not in ("iteration", "n_images")]
        print(f"  {split:8s} " + "  ".join(f"{k} {a[0][k]:.3f}->{a[-1][k]:.3f}" for k in keys))


def _pretrain(args: argparse.Namespace) -> int:
    from . import world
    from .world.pretraining import RECIPES
    kw = dict(RECIPES[args.recipe])
    kw.update({k: v for k, v in dict(steps=args.steps, seed=args.seed, threads=args.threads).items() if v is not None})
    out = world.pretrain(args.out, **kw)
    print(json.dumps(out, indent=2, default=str))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .config import make_config
    from .errors import RunDirError
    from .assembly import build_components
    from .evaluation import evaluate
    from .preflight import check_inputs
    from .rundir import read_checkpoint
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").is_file():
        raise RunDirError(f"eval {run_dir}: not a run directory (no config.json there; working directory "
                          f"{Path.cwd()}). Fix: give a directory made by `flowdppo train`")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"eval {run_dir}: config.json is not valid JSON ({err}). Fix: restore it from a copy") from None
    cfg = make_config(saved, args.overrides)
    ckpt = run_dir / "checkpoint.pt"
    state = read_checkpoint(ckpt) if ckpt.exists() else None   # before the model loads: fail fast
    check_inputs(cfg)
    comps = build_components(cfg)
    if state is not None:
        comps.policy.load_trainable_state_dict(state["policy"])
        print(f"loaded {ckpt} (iteration {state['iteration']})")
    else:
        print(f"no checkpoint in {run_dir}: evaluating the base model")
    iteration = state["iteration"] if state is not None else 0
    for split, metrics in evaluate(comps.policy, comps, cfg, iteration, run_dir, None, write=False).items():
        print(split, json.dumps(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flowdppo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or resume) a run")
    t.add_argument("--config", help="JSON file of Config fields")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    t.add_argument("--restart", action="store_true",
                   help="with --resume: move RUN_DIR's logs and checkpoints to RUN_DIR/replaced-<time>/ and train it "
                        "again from iteration 0 (for a run that has logs but no checkpoint)")
    t.add_argument("--model", help="diffusers hub id or local pipeline directory (same as model=...)")
    t.add_argument("--help-config", action="store_true", help="list every config field and exit")
    t.add_argument("overrides", nargs="*", help="key=value config overrides")
    t.set_defaults(fn=_train)
    pt = sub.add_parser("pretrain", help="rebuild the embedded base model")
    pt.add_argument("--out", default="runs/world_base.safetensors",
                    help="where to write the rebuilt base (the shipped one is flowdppo/assets/world_base.safetensors)")
    pt.add_argument("--recipe", default="world_base", choices=["world_base", "world_base_v1"],
                    help="which shipped base to rebuild (world_base_v1: the first world's, behind paper_figures/first_world/)")
    pt.add_argument("--steps", type=int)
    pt.add_argument("--seed", type=int)
    pt.add_argument("--threads", type=int)
    pt.set_defaults(fn=_pretrain)
    e = sub.add_parser("eval", help="evaluate a run's latest checkpoint")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the eval fields")
    e.set_defaults(fn=_eval)
    args = p.parse_args(argv)
    from .errors import FlowDPPOError, one_line
    try:
        return args.fn(args)
    except (FlowDPPOError, ValueError) as err:  # errors a person can fix: one line, no traceback
        print(f"flowdppo: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
