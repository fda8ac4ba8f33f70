"""Run directories → tidy pandas DataFrames.  Reads only the run-directory contract (flowdppo.runlog):
config.json, run.json, metrics.jsonl (or the compact store's iterations.csv), eval.jsonl, samples/.

One row per ITERATION is the unit of every figure.  From metrics.jsonl (one record per optimizer step)
an iteration row is built by `aggregate_iterations`:
  * rollout-level fields (rewards, reference KL, rollout/reward times, sde_indices) are taken once;
  * trust-region statistics (ratio, KL_old, mask and clip fractions, cf/…, q/…, per_step.k.…) are the mean
    over the iteration's OFF-POLICY optimizer steps — every step but the first after the rollout, which
    is exactly on-policy (r ≡ 1, KL ≡ 0, nothing masked; docs/failure_modes.md: on-policy identity) and would only dilute them by a
    factor that depends on the minibatch count; `_max` / `_min` keys take the max / min;
  * loss, policy_loss and grad_norm are means over ALL the iteration's steps; update time is their sum.
The compact store (analysis/runs/compact.py) saves exactly these rows, rounded, as iterations.csv, so a figure
drawn from a raw run and from its compacted copy is the same figure.

Damage is never silent.  The logs are read by flowdppo.runlog.parse_jsonl (and `read_iterations_csv`, its
CSV counterpart): a torn last line is dropped and counted in `Run.torn` (compacted runs also carry the
counts their compaction dropped), an unreadable line elsewhere makes the run DAMAGED — `load_runs` lists it
in `RunSet.damaged` with the reason and skips it, so one broken run never stops the others.  A run is
PARTIAL (`Run.partial`, `Run.partial_reason`) when it logged fewer iterations than its config asks for or
its final evaluation (at the last logged iteration) lacks a split; figures draw partial runs marked as
such, tables and claims use complete runs only, and `final_eval` never mixes iterations across splits.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd

from flowdppo.errors import CorruptLogError
from flowdppo.metrics import reduction
from flowdppo.runlog import parse_jsonl

ROLLOUT_PREFIXES = ("reward/", "ref_kl_")
ROLLOUT_KEYS = ("time/rollout_s", "time/reward_s", "adv_abs_mean", "samples_seen", "lr")
ALL_STEP_KEYS = ("loss", "policy_loss", "grad_norm")
META_KEYS = ("iteration", "epoch", "minibatch", "opt_step", "sde_indices", "per_step", "time/step_s")


# ---------------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, torn last lines dropped: 0 or 1) of a JSONL log — flowdppo.runlog.parse_jsonl's rules."""
    content = parse_jsonl(path)
    return content.records, content.torn


def read_iterations_csv(path: Path) -> tuple[pd.DataFrame, int]:
    """(rows, torn last rows dropped: 0 or 1) of a compact iterations.csv, by the JSONL rules: text after the
    last newline is a torn write and is dropped; a complete row with the wrong number of fields raises
    CorruptLogError naming the line."""
    text = Path(path).read_text()
    torn = 0
    if text and not text.endswith("\n"):
        text, torn = text[: text.rfind("\n") + 1], 1
    rows = list(csv.reader(io.StringIO(text)))
    width = len(rows[0]) if rows else 0
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise CorruptLogError(f"{path}: line {i} has {len(row)} fields, the header {width}: the file is damaged "
                                  f"(a kill can only tear the last line). Fix: compact the run again from its raw "
                                  f"logs (analysis/runs/compact.py)")
    if not rows:
        return pd.DataFrame(), torn
    return pd.read_csv(io.StringIO(text), dtype={"sde_indices": str}), torn


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
            elif reduction(k) == "max":
                row[k] = float(vals.max())
            elif reduction(k) == "min":
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
    torn: dict[str, int] = field(default_factory=dict)   # file → torn last lines dropped (here or at compaction)

    @property
    def torn_lines(self) -> int:
        return sum(self.torn.values())

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
    def final_eval_iteration(self) -> Optional[int]:
        """The last iteration evaluated (None if never)."""
        return int(self.evals["iteration"].max()) if len(self.evals) and "iteration" in self.evals else None

    @property
    def partial_reason(self) -> str:
        """Why the run is partial ('' if complete): too few iterations logged, or an incomplete final evaluation
        (killed during it, a torn eval line) — one missing split would mix the final test value with an older
        ood one."""
        done, want = self.done_iterations, int(self.config.get("iterations", 0))
        if done < want:
            return f"{done} of {want} iterations logged"
        if not int(self.config.get("eval_every", 0)) or self.evals.empty:
            return ""
        splits = sorted(set(self.evals["split"]))
        have = set(self.evals.loc[self.evals["iteration"] == done, "split"])
        lacking = [s for s in splits if s not in have]
        if lacking:
            return f"final evaluation (iteration {done}) lacks split {', '.join(lacking)}"
        return ""

    @property
    def partial(self) -> bool:
        """Killed or still running: fewer iterations logged than its config asks for, or a final evaluation
        that is missing or lacks a split (see partial_reason)."""
        return bool(self.partial_reason)

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
        """The metric at the run's last evaluation (end of training for a complete run); NaN if that evaluation
        lacks this split — never an older value next to newer ones of the other splits."""
        it, v = self.eval_series(metric, split)
        last = self.final_eval_iteration
        return float(v[-1]) if v.size and last is not None and int(it[-1]) == last else np.nan

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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptLogError(f"{path}: not valid JSON ({err}). Fix: restore the file from a copy") from None


def _require_keys(path: Path, records: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    for i, r in enumerate(records):
        lacking = [k for k in keys if k not in r]
        if lacking:
            raise CorruptLogError(f"{path}: record {i + 1} has no {', '.join(lacking)}: not a flowdppo log record. "
                                  "Fix: restore the file from a copy")


def load_run(path: str | Path, run_id: Optional[str] = None) -> Run:
    """One run directory (raw or compact).  Raises CorruptLogError for a damaged file (see module docstring)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json)")
    config = _read_json(path / "config.json")
    header = _read_json(path / "run.json") if (path / "run.json").exists() else {}
    torn: dict[str, int] = {}
    if (path / "metrics.jsonl").exists():
        records, torn["metrics.jsonl"] = read_jsonl(path / "metrics.jsonl")
        iters, compact = aggregate_iterations(records), False
    elif (path / "iterations.csv").exists():
        (iters, torn["iterations.csv"]), compact = read_iterations_csv(path / "iterations.csv"), True
    else:
        iters, compact = pd.DataFrame(), False
    evals_rec, torn["eval.jsonl"] = read_jsonl(path / "eval.jsonl")
    if compact is False and (path / "metrics.jsonl").exists():
        _require_keys(path / "metrics.jsonl", records, ("iteration",))
    _require_keys(path / "eval.jsonl", evals_rec, ("iteration", "split"))
    if (path / "compaction.json").exists():   # what the compaction dropped from the raw logs
        dropped = _read_json(path / "compaction.json").get("torn_lines", {})
        torn.update({f"{name} (raw, at compaction)": int(n) for name, n in dropped.items()})
    return Run(run_id=run_id or path.name, path=path, config=config, header=header, iters=add_derived(iters),
               evals=pd.DataFrame(evals_rec), compact=compact, torn={k: n for k, n in torn.items() if n})


@dataclass
class RunSet:
    """Runs found under a root, the requested ids that were not there, and the damaged ones (skipped)."""
    runs: dict[str, Run]
    missing: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)   # run id → why it could not be read

    def __contains__(self, run_id: str) -> bool:
        return run_id in self.runs

    def get(self, run_id: str) -> Optional[Run]:
        return self.runs.get(run_id)

    def table(self) -> pd.DataFrame:
        """One row per run: id, seed, loss, kernel, D, iterations done/configured, compact, torn lines."""
        rows = [{"run_id": r.run_id, "seed": r.seed, "loss": r.config.get("loss"), "kernel": r.config.get("kernel"),
                 "latent_dim": r.header.get("latent_dim"), "done_iterations": r.done_iterations,
                 "config_iterations": r.config.get("iterations"), "compact": r.compact, "torn_lines": r.torn_lines,
                 "partial": r.partial_reason, "git_commit": r.header.get("git_commit")} for r in self.runs.values()]
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
    otherwise exactly those, the absent ones listed in `.missing`.  A run whose files are damaged is listed
    in `.damaged` with the reason and skipped."""
    root = Path(root)
    if run_ids is None:
        ids = sorted(p.name for p in root.iterdir() if p.is_dir() and is_run_dir(p)) if root.exists() else []
    else:
        ids = list(dict.fromkeys(run_ids))
    runs, missing, damaged = {}, [], {}
    for rid in ids:
        p = root / rid
        if not is_run_dir(p):
            missing.append(rid)
            continue
        try:
            runs[rid] = load_run(p, rid)
        except CorruptLogError as err:
            damaged[rid] = str(err)
    return RunSet(runs=runs, missing=missing, damaged=damaged)
