"""Run the paper's experiments: missing runs are started, killed ones resumed, finished ones skipped, and each
finished run is compacted into the committed store.

    python analysis/run_experiments.py [--campaign claims|pilot] [--only dppo,grpo] [--max-seed S] [--jobs 2] [--dry-run]
    python analysis/run_experiments.py --campaign first_world [--only fig5[,c7]] [--jobs 2] [--dry-run]
                                       [--iterations N] [--raw runs/paper] [--store paper_runs] [--calibrate]

* `--campaign claims` (the default) runs the claims campaign of docs/analysis_plan.md (analysis/campaign/plan.py),
  every cell, seed-major; `pilot` runs its pilot's 20 runs; `world` the 16 runs of the world's trust-region check
  (docs/world_trust_region.md).  Raw runs go to runs/campaign/<campaign>/, compact
  ones to campaign_runs/<campaign>/.  A run already in the compact store (with the registry's config) counts as
  done, so a new checkout resumes the campaign where the committed runs stop.  Before the first `claims` run
  the pilot's calibration is computed and written to analysis/data/campaign_calibration.json; the runner then
  stops, so that the calibration is committed before any campaign run (the plan's order).
  `--first CELLS` runs those cells' seeds ≤ --first-max-seed ahead of the rest; `--start-for-min M` starts
  runs only during the next M minutes and then waits for the running ones, so a session that must stop by a
  deadline leaves no run half-done (its checkpoints would be lost with the checkout); `--finish-by-min M`
  starts a run only if its cell's measured wall time (× FINISH_SLACK) ends within M minutes, passing over
  longer runs for shorter ones, so the last minutes of a session are used too.
* `--campaign first_world` runs the older figure registry (analysis/campaign/experiments.py) on the first
  embedded world.  Its compact runs were committed as paper_runs/ until the claims campaign replaced them (git
  history has them; `paper_figures/first_world/` keeps their figures).  Only this mode reads --raw, --store,
  --iterations, --calibrate and --calibration-file:

* Each run is a subprocess `python -m flowdppo train run_dir=<raw>/<run_id> threads=1 progress=false …`;
  `--jobs` of them run side by side (two 1-thread runs use 2 cores better than one 2-thread run).
  Output goes to <raw>/_logs/<run_id>.log.
* Raw run directories (runs/campaign/<campaign>/, or --raw) are git-ignored: checkpoints are ~8 MB each.
* first_world: a run is finished when its checkpoint's iteration ≥ the target iterations (BASE or --iterations);
  a run directory without that is resumed with `flowdppo train --resume` (the trainer cuts its logs back
  to the checkpoint).  A run directory whose config differs from the registry's is refused, never reused.
* first_world: before the first run, the δ calibration (two 20-iteration pilots with the mask out of reach, one per
  kernel) is run if analysis/data/delta_calibration.json does not exist; --calibrate re-runs it.
* Ctrl-C or SIGTERM (`kill <pid>`, also for a runner started in the background) terminates the running
  trainers and records their wall time; they resume next time from their last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from analysis.runs import compact  # noqa: E402
from analysis.campaign import experiments  # noqa: E402
from analysis.campaign.experiments import RunSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
from flowdppo.config import RESUME_MAY_CHANGE  # noqa: E402

RESUME_IGNORED = RESUME_MAY_CHANGE     # how a run is executed or shown, not what it computes


FINISH_SLACK = 1.25   # --finish-by-min: a run starts only if 1.25 × its estimated wall time fits. Measured
                      # 2026-12-04 on the committed runs: with two jobs alone on 2 cores most cells' slowest run
                      # is within 15–25 % of the cell mean; runs that shared the cores with a third process
                      # took up to 1.7× (dppo 634 s vs a 379 s mean), so keep the machine to the two jobs.


def cli_value(v: Any) -> str:
    """A config value as `key=value` text for flowdppo's CLI."""
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return repr(v) if isinstance(v, float) else str(v)


def _rel(path: Path) -> str:
    """Paths relative to the repository when inside it: the run's config.json stores run_dir, and a
    relative one survives moving the checkout."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


@dataclass
class Job:
    spec: RunSpec
    run_dir: Path
    state: str          # new | resume | done | conflict
    done_iterations: int
    target: int
    detail: str = ""

    base: Optional[dict] = None  # config base (None = experiments.BASE; {} = the default Config)
    exec_fields: dict = field(default_factory=dict)   # RESUME_MAY_CHANGE fields set on the command line
    est_seconds: Optional[float] = None  # expected wall time (remaining_core_hours); None or NaN: unknown

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "flowdppo", "train"]
        if self.state == "resume":
            return cmd + ["--resume", _rel(self.run_dir), "threads=1", "progress=false", f"iterations={self.target}"] + \
                [f"{k}={cli_value(v)}" for k, v in self.exec_fields.items()]
        fields = {**self.spec.config_overrides(self.base), "iterations": self.target, "threads": 1, "progress": False,
                  **self.exec_fields}
        return cmd + [f"run_dir={_rel(self.run_dir)}"] + [f"{k}={cli_value(v)}" for k, v in fields.items()]


def checkpoint_iteration(run_dir: Path) -> int:
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        return 0
    import torch
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["iteration"])


def config_conflict(spec: RunSpec, run_dir: Path, base: Optional[dict] = None, run_dir_of_saved: bool = False) -> str:
    """'' if run_dir/config.json is this spec's config (up to RESUME_IGNORED), else the differences.
    run_dir_of_saved: compare with the run_dir the saved config names (a compact copy lives elsewhere)."""
    from flowdppo.config import config_diff, make_config
    saved_dict = json.loads((run_dir / "config.json").read_text())
    saved = make_config(saved_dict)
    want = make_config({**spec.config_overrides(base),
                        "run_dir": saved_dict.get("run_dir", "") if run_dir_of_saved else _rel(run_dir)})
    diff = config_diff(saved, want, ignore=RESUME_IGNORED)
    return ", ".join(f"{k}: run has {a!r}, registry wants {b!r}" for k, (a, b) in diff.items())


def stored_iterations(spec: RunSpec, store: Path, base: Optional[dict] = None) -> tuple[int, str]:
    """(iterations, conflict) of the run's compact copy in `store`; (0, '') if it has none."""
    d = store / spec.run_id
    if not (d / "compaction.json").exists():
        return 0, ""
    conflict = config_conflict(spec, d, base, run_dir_of_saved=True)
    return int(json.loads((d / "compaction.json").read_text()).get("iterations", 0)), conflict


def plan(specs: list[RunSpec], raw: Path, iterations: Optional[int], base: Optional[dict] = None,
         store: Optional[Path] = None) -> list[Job]:
    """What to do with each run: new, resume (killed or extended), done (raw or, given `store`, its compact
    copy), or conflict (config changed)."""
    jobs = []
    for spec in specs:
        run_dir = raw / spec.run_id
        target = iterations or int(spec.config_overrides(base)["iterations"])
        if not (run_dir / "config.json").exists():
            done, conflict = stored_iterations(spec, store, base) if store is not None else (0, "")
            if conflict:
                jobs.append(Job(spec, store / spec.run_id, "conflict", 0, target, conflict, base=base))
            else:
                jobs.append(Job(spec, run_dir, "done" if done and done >= target else "new", done, target, base=base))
            continue
        conflict = config_conflict(spec, run_dir, base)
        if conflict:
            jobs.append(Job(spec, run_dir, "conflict", 0, target, conflict, base=base))
            continue
        done = checkpoint_iteration(run_dir)
        jobs.append(Job(spec, run_dir, "done" if done >= target else "resume", done, target, base=base))
    return jobs


def report_plan(jobs: list[Job], prefix: str) -> dict[str, list[Job]]:
    """Print how many runs are in each state (and every conflict with its fix); the jobs by state."""
    by_state: dict[str, list[Job]] = {}
    for j in jobs:
        by_state.setdefault(j.state, []).append(j)
    print(f"{prefix}{len(jobs)} runs: " + ", ".join(f"{len(v)} {k}" for k, v in by_state.items()))
    for j in by_state.get("conflict", []):
        print(f"  CONFLICT {j.spec.run_id}: {j.detail}. Fix: move {j.run_dir} away, or restore the registry")
    return by_state


def measured_seconds_per_iteration(store: Path) -> tuple[dict[str, float], float]:
    """({cell: mean measured wall seconds per iteration}, the mean over every finished run) from the
    compaction.json of each finished run in `store` (NaN when no run records a wall time)."""
    walls: dict[str, list[float]] = {}
    for d in (p for p in store.iterdir() if (p / "compaction.json").exists()) if store.exists() else []:
        w = json.loads((d / "compaction.json").read_text()).get("wall_seconds")
        cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
        if w is not None and cfg.get("iterations"):
            walls.setdefault(d.name.rsplit("-s", 1)[0], []).append(float(w) / int(cfg["iterations"]))
    every = [x for v in walls.values() for x in v]
    return {k: float(np.mean(v)) for k, v in walls.items()}, float(np.mean(every)) if every else float("nan")


def remaining_core_hours(todo: list[Job], store: Path) -> tuple[float, int]:
    """(estimated core-hours of the runs still to do, how many of them had no finished run of their cell to go by).
    Each run costs the mean measured wall time (compaction.json) of its cell's finished runs in `store`, scaled by
    the iterations left; a cell with none uses the mean over all finished runs, per iteration.  Sets each job's
    est_seconds (what --finish-by-min goes by)."""
    per_cell, per_it_all = measured_seconds_per_iteration(store)
    total, guessed = 0.0, 0
    for j in todo:
        guessed += j.spec.cell not in per_cell
        j.est_seconds = per_cell.get(j.spec.cell, per_it_all) * (j.target - j.done_iterations)
        total += j.est_seconds
    return total / 3600, guessed


def run_pool(jobs: list[Job], n_jobs: int, log_dir: Path, on_success=None,
             start_before: Optional[float] = None, finish_by: Optional[float] = None,
             slack: float = FINISH_SLACK) -> dict[str, int]:
    """Run the jobs' commands, at most n_jobs at a time; {run_id: return code}.  on_success(run_id) is called
    as each run finishes with return code 0.  start_before (a time.time() value): start no job after it, and
    return when the running ones finish (a session that must end by a deadline loses no run half-done).
    finish_by (a time.time() value): start a job only if slack × its est_seconds ends before it; a job that does
    not fit is passed over for the next one in order that does (a job with no estimate never fits)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    pending, running, codes = list(jobs), {}, {}
    jobs_by_id = {j.spec.run_id: j for j in jobs}
    t0 = time.time()

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    # SIGTERM (kill, a scheduler) stops the pool as Ctrl-C does; SIGINT is re-armed because a shell starts a
    # background job (`… &`, nohup) with SIGINT ignored, and Python then never raises KeyboardInterrupt
    handlers = ({sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
                if threading.current_thread() is threading.main_thread() else {})

    def fits(job: Job) -> bool:
        est = job.est_seconds
        return finish_by is None or (est is not None and np.isfinite(est) and time.time() + slack * est <= finish_by)

    try:
        while pending or running:
            if start_before is not None and time.time() > start_before and pending:
                print(f"[{time.time() - t0:7.0f} s] deadline: {len(pending)} runs left for later", flush=True)
                pending = []
            if finish_by is not None and pending and not any(fits(j) for j in pending):
                print(f"[{time.time() - t0:7.0f} s] no run left fits before the finish-by time: "
                      f"{len(pending)} runs left for later", flush=True)
                pending = []
            while pending and len(running) < n_jobs and any(fits(j) for j in pending):
                job = pending.pop(next(i for i, j in enumerate(pending) if fits(j)))
                log = open(log_dir / f"{job.spec.run_id}.log", "a")
                log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(job.command())}\n")
                log.flush()
                proc = subprocess.Popen(job.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                running[job.spec.run_id] = (proc, log, time.time())
                est = "" if job.est_seconds is None else f", ≈ {job.est_seconds:.0f} s"
                print(f"[{time.time() - t0:7.0f} s] start  {job.spec.run_id} ({job.state}, "
                      f"{job.done_iterations}→{job.target}{est})", flush=True)
            time.sleep(1.0)
            for rid, (proc, log, started) in list(running.items()):
                rc = proc.poll()
                if rc is not None:
                    log.close()
                    codes[rid] = rc
                    _record_wall(jobs_by_id[rid], started, rc)
                    if rc == 0 and on_success is not None:
                        on_success(rid)
                    del running[rid]
                    status = "ok" if rc == 0 else f"FAILED rc={rc} (see {log_dir / (rid + '.log')})"
                    print(f"[{time.time() - t0:7.0f} s] finish {rid} in {time.time() - started:.0f} s: {status}",
                          flush=True)
    except KeyboardInterrupt:
        for sig in handlers:                # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        print("interrupted: terminating the running trainers (resume later from their checkpoints)", flush=True)
        for rid, (proc, log, _) in running.items():
            proc.terminate()
        for rid, (proc, log, started) in running.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            _record_wall(jobs_by_id[rid], started, proc.returncode if proc.returncode is not None else -9)
        raise
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
    return codes


def _record_wall(job: Job, started: float, rc: int) -> None:
    """Append this trainer process's wall time to the run's wall_seconds.json (compaction sums it: the
    campaign's compute is reported as measured 1-thread core-hours)."""
    path = job.run_dir / "wall_seconds.json"
    if not job.run_dir.exists():
        return
    entries = json.loads(path.read_text()) if path.exists() else []
    entries.append({"state": job.state, "from": job.done_iterations, "to": job.target, "rc": rc,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                    "seconds": round(time.time() - started, 1)})
    path.write_text(json.dumps(entries, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------
# δ calibration
# ---------------------------------------------------------------------------------------------------
def calibrate(raw: Path, n_jobs: int, out_file: Path = experiments.CALIBRATION_FILE) -> dict[str, Any]:
    """Run (or reuse) one unmasked pilot per kernel, derive δ per kernel, write CALIBRATION_FILE."""
    from analysis.runs.load_runs import load_run
    jobs = []
    for kernel in ("flow_sde", "cps"):
        fields = experiments.calibration_overrides(kernel)
        spec = RunSpec(f"pilot-{kernel}", "pilot", fields["seed"], {k: v for k, v in fields.items() if k != "seed"})
        run_dir = raw / "_calibration" / kernel
        done = checkpoint_iteration(run_dir) if (run_dir / "config.json").exists() else 0
        state = "done" if done >= fields["iterations"] else ("resume" if (run_dir / "config.json").exists() else "new")
        jobs.append(Job(spec, run_dir, state, done, fields["iterations"]))
    todo = [j for j in jobs if j.state != "done"]
    codes = run_pool(todo, n_jobs, raw / "_logs") if todo else {}
    if any(codes.values()):
        raise RuntimeError(f"calibration pilot failed: {codes}; see {raw / '_logs'}")
    out: dict[str, Any] = {"kernels": {}, "rule": "delta_mid = median over iterations of the per-iteration "
                           "(off-policy mean of the per-sample median) KL_old per dim, one significant digit; "
                           "delta_lo/hi = delta_mid / 10, × 10", "iterations": experiments.CALIBRATION_ITERATIONS,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    per_iter = []
    for job, kernel in zip(jobs, ("flow_sde", "cps")):
        run = load_run(job.run_dir)
        if run.latent_dim != experiments.LATENT_DIM:
            raise RuntimeError(f"the world's latent dim is {run.latent_dim}, analysis/campaign/experiments.py assumes "
                               f"{experiments.LATENT_DIM}. Fix: set experiments.LATENT_DIM = {run.latent_dim}")
        out["kernels"][kernel] = experiments.deltas_from_pilot(run.iters["q/kl_old_per_dim@0.5"])
        out["kernels"][kernel]["kl_old_q90"] = float(run.iters["q/kl_old_per_dim@0.9"].median())
        per_iter += list(run.iters["time/iter_s"].iloc[2:])
        out["git_commit"] = run.header.get("git_commit")
    out["per_iteration_s_1thread"] = float(sorted(per_iter)[len(per_iter) // 2]) if per_iter else None
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(out, indent=2) + "\n")
    print(f"calibration written to {out_file}: " +
          ", ".join(f"{k} δ_mid={v['delta_mid']:g} (median KL_old {v['kl_old_median']:.3g})"
                    for k, v in out["kernels"].items()))
    return out


# ---------------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated cells (claims: dppo,grpo,…; first_world: fig1…fig13, table1…4, c7, logs_*)")
    ap.add_argument("--jobs", type=int, default=2, help="1-thread runs side by side")
    ap.add_argument("--dry-run", action="store_true", help="show the plan and the CPU-time estimate, run nothing")
    ap.add_argument("--iterations", type=int, default=None, help="target iterations for every run (default BASE)")
    ap.add_argument("--raw", default=str(ROOT / "runs" / "paper"), help="first_world: raw run directories (git-ignored)")
    ap.add_argument("--store", default=str(ROOT / "paper_runs"), help="first_world: the compact store")
    ap.add_argument("--calibrate", action="store_true", help="(re)run the δ calibration pilots first")
    ap.add_argument("--calibration-file", default=str(experiments.CALIBRATION_FILE),
                    help="where the δ calibration is read / written")
    ap.add_argument("--no-compact", action="store_true", help="skip compaction into --store")
    ap.add_argument("--per-iteration-s", type=float, default=None,
                    help="1-thread BASE iteration time for the estimate (default: the calibration's, else 1.0)")
    ap.add_argument("--campaign", choices=("claims", "pilot", "world", "first_world"), default="claims",
                    help="claims (default): the campaign of docs/analysis_plan.md; pilot: its pilot; world: the "
                    "200-iteration trust-region check of docs/world_trust_region.md; first_world: the older figure "
                    "registry of the first embedded world")
    ap.add_argument("--max-seed", type=int, default=None, help="--campaign claims: only seeds <= this")
    ap.add_argument("--first", default="", help="--campaign claims: run these cells' seeds <= --first-max-seed "
                    "before the rest (a departure from the seed-major order; say why in the plan's amendments)")
    ap.add_argument("--first-max-seed", type=int, default=2)
    ap.add_argument("--start-for-min", type=float, default=None,
                    help="start new runs only during the next MIN minutes, then let the running ones finish")
    ap.add_argument("--finish-by-min", type=float, default=None,
                    help="--campaign: start a run only if it should end within MIN minutes (its cell's measured "
                    f"wall time × {FINISH_SLACK}); runs that do not fit are passed over for shorter ones")
    args = ap.parse_args(argv)
    if args.finish_by_min is not None and args.campaign == "first_world":
        ap.error("--finish-by-min needs --campaign claims|pilot (its estimates come from the campaign's store)")
    if args.campaign != "first_world":
        try:
            return main_campaign(args)
        except KeyboardInterrupt:
            print("campaign runner stopped; run the same command again to resume", flush=True)
            return 130
    raw, store, cal_file = Path(args.raw), Path(args.store), Path(args.calibration_file)

    calibration = experiments.load_calibration(cal_file)
    if (calibration is None or args.calibrate) and not args.dry_run:
        calibration = calibrate(raw, args.jobs, cal_file)
    if calibration is None:
        print("δ calibration: none yet — showing PROVISIONAL δ_mid "
              f"{experiments.PROVISIONAL_DELTA_MID} (a real run calibrates first)")
    reg = experiments.registry(calibration)
    only = [k.strip() for k in args.only.split(",") if k.strip()] or None
    specs = experiments.all_runs(reg, only)
    jobs = plan(specs, raw, args.iterations)
    by_state = report_plan(jobs, "")
    todo = by_state.get("new", []) + by_state.get("resume", [])
    todo.sort(key=lambda j: jobs.index(j))
    per_it = args.per_iteration_s or (calibration or {}).get("per_iteration_s_1thread") or 1.0
    est = experiments.estimate_cpu_seconds(per_it, [j.spec for j in todo], args.iterations)
    print(f"to run: {len(todo)} runs ≈ {est['cpu_hours']:.2f} CPU-hours at {per_it:.2f} s per 1-thread BASE "
          f"iteration ≈ {est['cpu_hours'] / max(1, args.jobs):.2f} h wall with --jobs {args.jobs} "
          "(resumed runs counted in full)")
    if args.dry_run:
        for j in todo:
            print(f"  {j.state:6s} {j.spec.run_id:32s} " + " ".join(j.command()[3:]))
        return 0
    codes = run_pool(todo, args.jobs, raw / "_logs") if todo else {}
    failed = [k for k, v in codes.items() if v != 0]
    if not args.no_compact:
        finished = [j.spec.run_id for j in plan(specs, raw, args.iterations) if j.state == "done"]
        info = compact.compact_store(raw, store, finished)
        print(f"compacted {info['runs']} finished runs into {store}: {info['bytes'] / 2**20:.1f} MiB "
              f"(limit {compact.STORE_LIMIT_BYTES / 2**20:.0f} MiB)")
        for rid, why in info["damaged"].items():
            print(f"NOT compacted (damaged log): {rid}: {why}")
    if failed:
        print(f"{len(failed)} runs FAILED: {', '.join(failed)}")
    return 1 if failed or by_state.get("conflict") else 0


def main_campaign(args: argparse.Namespace) -> int:
    """The claims campaign: --campaign pilot | claims (module docstring)."""
    from analysis.campaign import plan as cplan
    raw, store = cplan.RAW / args.campaign, cplan.STORE / args.campaign
    only = [k.strip() for k in args.only.split(",") if k.strip()] or None
    if args.campaign == "pilot":
        specs = cplan.pilot_runs()
    elif args.campaign == "world":
        specs = cplan.world_runs(only)
    else:
        calibration = cplan.load_calibration()
        if calibration is None:
            try:
                calibration = cplan.calibrate(cplan.STORE / "pilot")
            except FileNotFoundError as err:
                print(f"no calibration yet: {err}")
                return 1
            cplan.CALIBRATION_FILE.parent.mkdir(parents=True, exist_ok=True)
            cplan.CALIBRATION_FILE.write_text(json.dumps(calibration, indent=2) + "\n")
            print(f"calibration written to {_rel(cplan.CALIBRATION_FILE)}: ε_fire = {calibration['eps_fire']:g}, "
                  f"δ_hi = {calibration['delta_hi']:g}, n = {calibration['n_seeds']} seeds "
                  f"({calibration['n_needed_at_effect']} needed at Δ* = {calibration['effect']:.4g}). "
                  "Commit it before the campaign's runs (the plan's order), then run this again.")
            return 0
        specs = cplan.campaign_runs(calibration, only, args.max_seed)
    jobs = plan(specs, raw, None, base={}, store=store)
    by_state = report_plan(jobs, f"{args.campaign}: ")
    todo = [j for j in jobs if j.state in ("new", "resume")]
    hours, guessed = remaining_core_hours(todo, store) if todo else (0.0, 0)
    if todo and not np.isfinite(hours):
        print(f"{args.campaign}: no finished run records a wall time yet, so the remaining cost is unknown")
    elif todo:
        print(f"{args.campaign}: about {hours:.1f} core-hours left ({hours / max(args.jobs, 1):.1f} h at --jobs "
              f"{args.jobs}), from the measured wall times of finished runs"
              + (f"; {guessed} runs priced at the all-cell mean" if guessed else ""))
    for j in todo:            # a campaign run's before/after figure is never kept: skip drawing it
        j.exec_fields = {"sample_figures": False}
    first = {k.strip() for k in args.first.split(",") if k.strip()}
    if first:     # stable: the prioritised runs keep their seed-major order among themselves, as do the rest
        todo.sort(key=lambda j: not (j.spec.cell in first and j.spec.seed <= args.first_max_seed))
    if args.dry_run:
        for j in todo:
            print(f"  {j.state:6s} {j.spec.run_id:24s} " + " ".join(j.command()[3:]))
        return 0
    keep_steps, grid_seeds = (True, None) if args.campaign == "pilot" else (False, {0})

    def compact_finished(run_id: str) -> None:
        # each run is compacted as soon as it finishes, so a session that stops mid-campaign loses nothing
        # that has finished (commit campaign_runs/ as you go)
        info = compact.compact_store(raw, store, [run_id], keep_steps=keep_steps, grid_seeds=grid_seeds)
        for rid, why in info["damaged"].items():
            print(f"NOT compacted (damaged log): {rid}: {why}", flush=True)

    if not args.no_compact:   # finished raw runs whose compaction was missed (a runner stopped in between)
        for j in by_state.get("done", []):
            if j.run_dir.parent == raw and not (store / j.spec.run_id / "compaction.json").exists():
                compact_finished(j.spec.run_id)
    deadline = time.time() + 60 * args.start_for_min if args.start_for_min is not None else None
    finish_by = time.time() + 60 * args.finish_by_min if args.finish_by_min is not None else None
    codes = run_pool(todo, args.jobs, raw / "_logs", on_success=None if args.no_compact else compact_finished,
                     start_before=deadline, finish_by=finish_by)
    failed = [k for k, v in codes.items() if v != 0]
    if failed:
        print(f"{len(failed)} runs FAILED: {', '.join(failed)}")
    return 1 if failed or by_state.get("conflict") else 0


if __name__ == "__main__":
    sys.exit(main())
