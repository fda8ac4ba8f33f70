"""The committed, compact run store: only what the figures read, small enough for git.

For each run:   config.json, run.json              copied
                iterations.csv                      `load_runs.aggregate_iterations` of metrics.jsonl,
                                                    floats rounded to SIG_DIGITS significant digits
                eval.jsonl                          copied (a few records per run)
                samples/{test,ood}_iterNNNNN.png    the final grids and their .json sidecars (prompt texts, per-cell
                                                    marks); iteration 0 too for seed-0 runs (the base model:
                                                    every run shares its eval seeds)
                compaction.json                     what was dropped (incl. torn last lines), from where, when
Dropped: checkpoint.pt / checkpoint.prev.pt, the per-optimizer-step metrics.jsonl, intermediate sample grids,
tb/, run.lock and replaced-<time>/.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from flowdppo.errors import CorruptLogError

from analysis.runs.load_runs import aggregate_iterations, is_run_dir, read_jsonl

SIG_DIGITS = 4
# Ratios sit within ~1e-4 of 1; their deviation from 1 (the "left shift") is what the figures read, so they
# keep more digits.
RATIO_SIG_DIGITS = 9
STORE_LIMIT_BYTES = 30 * 1024 * 1024


def _repo_relative(path: Path) -> str:
    """A path as committed artifacts hold it: relative to the repository, or its last part when outside."""
    root = Path(__file__).resolve().parents[2]
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def _final_iteration(evals: list[dict]) -> Optional[int]:
    its = [int(e["iteration"]) for e in evals if "iteration" in e]
    return max(its) if its else None


def wall_seconds(src: Path) -> dict:
    """The run's wall time: summed from wall_seconds.json (the campaign runner writes one entry per trainer
    process) or, for a run started by hand, estimated from run.json's start to the last log write."""
    src = Path(src)
    if (src / "wall_seconds.json").exists():
        entries = json.loads((src / "wall_seconds.json").read_text())
        return {"wall_seconds": round(sum(e["seconds"] for e in entries), 1), "wall_source": "runner",
                "processes": len(entries)}
    try:
        started = time.mktime(time.strptime(json.loads((src / "run.json").read_text())["started"], "%Y-%m-%dT%H:%M:%S"))
    except (FileNotFoundError, KeyError, ValueError):
        return {"wall_seconds": None, "wall_source": "unknown"}
    last = max((src / n).stat().st_mtime for n in ("metrics.jsonl", "eval.jsonl") if (src / n).exists())
    return {"wall_seconds": round(last - started, 1), "wall_source": "file times (run.json start to last log write)"}


def compact_run(src: Path, dst: Path, keep_steps: bool = False, grid_seeds: Optional[set[int]] = None,
                keep_initial_grid: bool = False) -> int:
    """Write the compact copy of run `src` into `dst` (replaced); returns its size in bytes.  keep_steps: also
    keep the per-optimizer-step log, gzipped, as metrics.jsonl.gz (a pilot whose calibrations average every step).
    grid_seeds: keep sample grids only for runs with these seeds (None = every run); a campaign of hundreds of
    runs keeps seed 0's, which the qualitative figures show.  The iteration-0 grid (the base) is kept for seed 0
    and wherever keep_initial_grid is set."""
    src, dst = Path(src), Path(dst)
    if not is_run_dir(src) or not (src / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{src} is not a raw run directory (needs config.json and metrics.jsonl)")
    records, torn = read_jsonl(src / "metrics.jsonl")
    evals, torn_e = read_jsonl(src / "eval.jsonl")
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "samples").mkdir(parents=True)
    for name in ("config.json", "run.json"):
        if (src / name).exists():
            shutil.copy2(src / name, tmp / name)
    iters = aggregate_iterations(records)
    rounded = iters.apply(lambda col: round_significant(col, RATIO_SIG_DIGITS if "ratio" in col.name and
                                                            "log_ratio" not in col.name else SIG_DIGITS))
    rounded.to_csv(tmp / "iterations.csv", index=False)
    (tmp / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    seed = json.loads((src / "config.json").read_text()).get("seed", 0)
    keep_grids = grid_seeds is None or seed in grid_seeds
    keep = ([_final_iteration(evals)] + ([0] if seed == 0 or keep_initial_grid else [])) if keep_grids else []
    for it in {k for k in keep if k is not None}:
        for split in ("test", "ood"):
            p = src / "samples" / f"{split}_iter{it:05d}.png"
            for f in (p, p.with_suffix(".json")):     # the grid and its sidecar (prompt texts, per-cell marks)
                if f.exists():
                    shutil.copy2(f, tmp / "samples" / f.name)
    if keep_steps:
        import gzip
        with open(src / "metrics.jsonl", "rb") as f_in, open(tmp / "metrics.jsonl.gz", "wb") as raw_out, \
                gzip.GzipFile(fileobj=raw_out, mode="wb", mtime=0) as f_out:   # mtime 0: the same bytes every time
            shutil.copyfileobj(f_in, f_out)
    (tmp / "compaction.json").write_text(json.dumps({
        "source": _repo_relative(src), "compacted": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics_records": len(records),
        "torn_lines_skipped": torn + torn_e, "torn_lines": {"metrics.jsonl": torn, "eval.jsonl": torn_e},
        "iterations": len(iters), "float_significant_digits": SIG_DIGITS,
        "aggregation": "analysis.runs.load_runs.aggregate_iterations (off-policy-step means)",
        "dropped": ["checkpoint.pt", "checkpoint.prev.pt"] + ([] if keep_steps else ["metrics.jsonl (per optimizer step)"])
        + ["intermediate sample grids", "tb/"], **({"kept_gzipped": "metrics.jsonl.gz"} if keep_steps else {}),
        **wall_seconds(src)},
        indent=2) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dir_size(dst)


def round_significant(col: pd.Series, digits: int) -> pd.Series:
    """Round a numeric column to `digits` significant digits (other columns unchanged)."""
    if not pd.api.types.is_float_dtype(col):
        return col
    v = col.to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.floor(np.log10(np.abs(v)))
    mag = np.where(np.isfinite(mag), mag, 0).astype(int)
    return pd.Series([np.round(x, int(digits - 1 - m)) if np.isfinite(x) else x for x, m in zip(v, mag)],
                     index=col.index, name=col.name)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def compact_store(src_root: Path, dst_root: Path, run_ids: Optional[Iterable[str]] = None,
                  limit_bytes: int = STORE_LIMIT_BYTES, keep_steps: bool = False,
                  grid_seeds: Optional[set[int]] = None) -> dict:
    """Compact every raw run under `src_root` (or those in run_ids) into `dst_root`.

    Returns {"runs": n, "bytes": store size, "skipped": [ids without a raw run], "damaged": {id: why}} — a run
    with a damaged log (analysis.runs.load_runs) is reported there and not compacted; raises if the whole store
    exceeds `limit_bytes` (fix: raise SIG_DIGITS' rounding or thin the eval grids)."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    ids = list(run_ids) if run_ids is not None else sorted(
        p.name for p in src_root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    done, skipped, damaged = [], [], {}
    for rid in ids:
        if is_run_dir(src_root / rid) and (src_root / rid / "metrics.jsonl").exists():
            try:
                compact_run(src_root / rid, dst_root / rid, keep_steps=keep_steps, grid_seeds=grid_seeds)
            except CorruptLogError as err:
                damaged[rid] = str(err)
                continue
            done.append(rid)
        else:
            skipped.append(rid)
    size = dir_size(dst_root) if dst_root.exists() else 0
    if size > limit_bytes:
        raise RuntimeError(f"compact store {dst_root} is {size / 2**20:.1f} MiB > {limit_bytes / 2**20:.0f} MiB. "
                           f"Fix: lower analysis.runs.compact.SIG_DIGITS or keep fewer sample grids")
    return {"runs": len(done), "bytes": size, "skipped": skipped, "damaged": damaged}
