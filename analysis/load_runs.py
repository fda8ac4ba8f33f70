"""Run directories → tidy pandas DataFrames.  Reads only the run-directory contract (flowdppo.runlog):
config.json, run.json, metrics.jsonl (or the compact store's iterations.csv), eval.jsonl, samples/.

One row per ITERATION is the unit of every figure.  From metrics.jsonl (one record per optimizer step)
an iteration row is built by `aggregate_iterations`:
  * rollout-level fields (rewards, reference KL, rollout/reward times, sde_indices) are taken once;
  * trust-region statistics (ratio, KL_old, mask and clip fractions, cf/…, q/…, per_step.k.…) are the mean
    over the iteration's OFF-POLICY optimizer steps — every step but the first after the rollout, which
    is exactly on-policy (r ≡ 1, KL ≡ 0, nothing masked; anchors F6) and would only dilute them by a
    factor that depends on the minibatch count; `_max` / `_min` keys take the max / min;
  * loss, policy_loss and grad_norm are means over ALL the iteration's steps; update time is their sum.
The compact store (analysis/compact.py) saves exactly these rows, rounded, as iterations.csv, so a figure
drawn from a raw run and from its compacted copy is the same figure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd

ROLLOUT_PREFIXES = ("reward/", "ref_kl_")
ROLLOUT_KEYS = ("time/rollout_s", "time/reward_s", "adv_abs_mean", "samples_seen", "lr")
ALL_STEP_KEYS = ("loss", "policy_loss", "grad_norm")
META_KEYS = ("iteration", "epoch", "minibatch", "opt_step", "sde_indices", "per_step", "time/step_s")


# ---------------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, number of torn lines skipped).  Only the LAST line may be torn (a run killed mid-write);
    an unreadable line anywhere else means a corrupt log and raises."""
    if not path.exists():
        return [], 0
    lines = path.read_text().split("\n")
    out, torn = [], 0
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != last:
                raise ValueError(f"{path}: line {i + 1} is not JSON and is not the last line: the log is corrupt "
                                 f"(a torn write can only be the last line)") from None
            torn += 1
    return out, torn


# ---------------------------------------------------------------------------------------------------
# Per-iteration aggregation
# ---------------------------------------------------------------------------------------------------
def _is_rollout_key(k: str) -> bool:
    return k.startswith(ROLLOUT_PREFIXES) or k in ROLLOUT_KEYS


def _flat_per_step(rec: dict[str, Any]) -> dict[str, float]:
    return {f"per_step.{k}.{s}": v for k, d in rec.get("per_step", {}).items() for s, v in d.items()}


def aggregate_iterations(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-optimizer-step records → one row per iteration (rules in the module docstring)."""
    by_iter: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_iter.setdefault(int(r["iteration"]), []).append(r)
    rows = []
    for it in sorted(by_iter):
        recs = by_iter[it]
        first = recs[0]
        off = [r for r in recs if (r.get("epoch", 0), r.get("minibatch", 0)) != (0, 0)]
        row: dict[str, Any] = {"iteration": it, "n_opt_steps": len(recs), "n_off_policy_steps": len(off),
                               "sde_indices": ";".join(str(i) for i in first.get("sde_indices", []))}
        row.update({k: v for k, v in first.items() if _is_rollout_key(k)})
        row["time/update_s"] = float(sum(r.get("time/step_s", 0.0) for r in recs))
        for k in ALL_STEP_KEYS:
            vals = [r[k] for r in recs if r.get(k) is not None]
            row[k] = float(np.mean(vals)) if vals else np.nan
        stat_keys = [k for k in first if k not in META_KEYS and not _is_rollout_key(k) and k not in ALL_STEP_KEYS]
        flat = [{**{k: r.get(k) for k in stat_keys}, **_flat_per_step(r)} for r in off]
        keys = list(dict.fromkeys(k for f in flat for k in f)) or stat_keys
        for k in keys:
            vals = np.array([f[k] for f in flat if f.get(k) is not None], dtype=float)
            if vals.size == 0:
                row[k] = np.nan
            elif k.endswith("_max"):
                row[k] = float(vals.max())
            elif k.endswith("_min"):
                row[k] = float(vals.min())
            else:
                row[k] = float(vals.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def add_derived(iters: pd.DataFrame) -> pd.DataFrame:
    """Columns computed at load time, identically for raw and compact runs."""
    if iters.empty:
        return iters
    parts = [c for c in ("time/rollout_s", "time/reward_s", "time/update_s") if c in iters]
    iters = iters.copy()
    iters["time/iter_s"] = iters[parts].sum(axis=1) if parts else np.nan
    iters["cpu_hours"] = iters["time/iter_s"].cumsum() / 3600.0
    return iters


# ---------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    run_id: str
    path: Path
    config: dict[str, Any]
    header: dict[str, Any]
    iters: pd.DataFrame          # one row per iteration (see module docstring)
    evals: pd.DataFrame          # one row per (evaluation, split)
    compact: bool                # read from the compact store (iterations.csv)
    torn_lines: int = 0

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def latent_dim(self) -> int:
        return int(self.header["latent_dim"])

    @property
    def done_iterations(self) -> int:
        """Iterations whose updates are logged (0 if none)."""
        return int(self.iters["iteration"].max()) + 1 if len(self.iters) else 0

    @property
    def partial(self) -> bool:
        """Fewer iterations logged than its config asks for (killed, or still running)."""
        return self.done_iterations < int(self.config.get("iterations", 0))

    def series(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(iterations, values) of an iteration column (NaN where absent)."""
        if column not in self.iters:
            return self.iters.get("iteration", pd.Series(dtype=float)).to_numpy(float), \
                np.full(len(self.iters), np.nan)
        return self.iters["iteration"].to_numpy(float), self.iters[column].to_numpy(float)

    def eval_series(self, metric: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """(iterations, values) of an evaluation metric on one split."""
        if self.evals.empty or metric not in self.evals:
            return np.array([]), np.array([])
        e = self.evals[self.evals["split"] == split].sort_values("iteration")
        return e["iteration"].to_numpy(float), e[metric].to_numpy(float)

    def final_eval(self, metric: str, split: str = "test") -> float:
        """The metric at the last evaluation (end of training for a complete run)."""
        _, v = self.eval_series(metric, split)
        return float(v[-1]) if v.size else np.nan

    def initial_eval(self, metric: str, split: str = "test") -> float:
        """The metric at iteration 0 (the base model under this run's evaluation regime)."""
        it, v = self.eval_series(metric, split)
        return float(v[it == 0][0]) if np.any(it == 0) else np.nan

    def cpu_hours_before(self, iterations: np.ndarray) -> np.ndarray:
        """Logged compute (rollout + reward + update, this run's threads) spent before each iteration."""
        if self.iters.empty:
            return np.full(len(iterations), np.nan)
        cum = dict(zip(self.iters["iteration"].astype(int), self.iters["cpu_hours"]))
        return np.array([0.0 if i == 0 else cum.get(int(i) - 1, np.nan) for i in iterations])

    def sample_grid(self, split: str, iteration: Optional[int] = None) -> Optional[Path]:
        """samples/<split>_iterNNNNN.png at `iteration` (None = the last one present)."""
        d = self.path / "samples"
        if iteration is not None:
            p = d / f"{split}_iter{iteration:05d}.png"
            return p if p.exists() else None
        found = sorted(d.glob(f"{split}_iter*.png"))
        return found[-1] if found else None


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").exists() and ((path / "metrics.jsonl").exists() or (path / "iterations.csv").exists())


def load_run(path: str | Path, run_id: Optional[str] = None) -> Run:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json)")
    config = json.loads((path / "config.json").read_text())
    header = json.loads((path / "run.json").read_text()) if (path / "run.json").exists() else {}
    torn = 0
    if (path / "metrics.jsonl").exists():
        records, torn = read_jsonl(path / "metrics.jsonl")
        iters, compact = aggregate_iterations(records), False
    elif (path / "iterations.csv").exists():
        iters, compact = pd.read_csv(path / "iterations.csv", dtype={"sde_indices": str}), True
    else:
        iters, compact = pd.DataFrame(), False
    evals_rec, torn_e = read_jsonl(path / "eval.jsonl")
    evals = pd.DataFrame(evals_rec)
    return Run(run_id=run_id or path.name, path=path, config=config, header=header, iters=add_derived(iters),
               evals=evals, compact=compact, torn_lines=torn + torn_e)


@dataclass
class RunSet:
    """Runs found under a root, plus the requested ids that were not there."""
    runs: dict[str, Run]
    missing: list[str] = field(default_factory=list)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self.runs

    def get(self, run_id: str) -> Optional[Run]:
        return self.runs.get(run_id)

    def table(self) -> pd.DataFrame:
        """One row per run: id, seed, loss, kernel, D, iterations done/configured, compact, torn lines."""
        rows = [{"run_id": r.run_id, "seed": r.seed, "loss": r.config.get("loss"), "kernel": r.config.get("kernel"),
                 "latent_dim": r.header.get("latent_dim"), "done_iterations": r.done_iterations,
                 "config_iterations": r.config.get("iterations"), "compact": r.compact, "torn_lines": r.torn_lines,
                 "git_commit": r.header.get("git_commit")} for r in self.runs.values()]
        return pd.DataFrame(rows)

    def iters(self) -> pd.DataFrame:
        """All iteration rows, long in runs (a `run_id` column)."""
        frames = [r.iters.assign(run_id=r.run_id) for r in self.runs.values() if len(r.iters)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def evals(self) -> pd.DataFrame:
        frames = [r.evals.assign(run_id=r.run_id) for r in self.runs.values() if len(r.evals)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_runs(root: str | Path, run_ids: Optional[Iterable[str]] = None) -> RunSet:
    """Runs under `root` (each a sub-directory named by its run id).  run_ids=None: every run found;
    otherwise exactly those, the absent ones listed in `.missing`."""
    root = Path(root)
    if run_ids is None:
        ids = sorted(p.name for p in root.iterdir() if p.is_dir() and is_run_dir(p)) if root.exists() else []
    else:
        ids = list(dict.fromkeys(run_ids))
    runs, missing = {}, []
    for rid in ids:
        p = root / rid
        if is_run_dir(p):
            runs[rid] = load_run(p, rid)
        else:
            missing.append(rid)
    return RunSet(runs=runs, missing=missing)
