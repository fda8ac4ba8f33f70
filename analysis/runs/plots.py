"""Plot functions: data in, `ax` in, the same `ax` out (rliable's plot_utils).  No file I/O, no loading,
no statistics beyond calling analysis.runs.stats.  Colours follow the paper where it has them (Fig. 5)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from analysis.runs import stats

METHOD_COLORS = {"Flow-GRPO": "#7f7f7f", "Flow-CPS": "#a6761d", "GRPO-Guard": "#984ea3",
                 "Flow-DPPO": "#377eb8", "Flow-DPPO + CPS": "#e41a1c"}
REUSE_COLORS = {"G8-I1": "#e41a1c", "G4-I2": "#4daf4a", "G8-I2": "#377eb8"}  # paper: G64-I1, G32-I2, G64-I2
GRID_COLOR = "#ebf0f7"
LABEL_COLOR = "#293f5e"


def style(ax, *, xlabel: str = "", ylabel: str = "", title: str = "", logx: bool = False, logy: bool = False):
    """The paper's Fig. 5 look: light grid, navy labels."""
    ax.grid(True, color=GRID_COLOR, linewidth=0.8)
    ax.set_axisbelow(True)
    if xlabel:
        ax.set_xlabel(xlabel, color=LABEL_COLOR)
    if ylabel:
        ax.set_ylabel(ylabel, color=LABEL_COLOR)
    if title:
        ax.set_title(title, color=LABEL_COLOR, fontsize=9)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.tick_params(labelsize=7)
    return ax


def curve_band(ax, x: np.ndarray, curves: np.ndarray, *, label: str, color: Optional[str] = None,
               linestyle: str = "-", band: bool = True, linewidth: float = 1.4, scale: float = 1.0):
    """Seed mean of `curves` [num_seeds, num_points] with its t-interval band; label gets "(n seeds)"."""
    curves = np.atleast_2d(curves) * scale
    mean, lo, hi, n = stats.curve_band(curves)
    seeds = int(np.max(n)) if n.size else 0
    (line,) = ax.plot(x, mean, linestyle=linestyle, color=color, linewidth=linewidth,
                      label=f"{label} (n={seeds})")
    if band and seeds >= 2:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    return ax


def missing_note(ax, missing: Sequence[str], max_names: int = 3):
    """Mark an axis drawn without all its runs."""
    if not missing:
        return ax
    names = ", ".join(missing[:max_names]) + (f" … (+{len(missing) - max_names})" if len(missing) > max_names else "")
    ax.text(0.01, 0.01, f"MISSING {len(missing)} run(s): {names}", transform=ax.transAxes, fontsize=6,
            color="#b2182b", va="bottom", ha="left", wrap=True)
    return ax


def empty(ax, message: str):
    """An axis with nothing to draw (every run of the panel is missing)."""
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="#b2182b",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def points_with_ci(ax, points: dict[str, tuple[stats.Interval, stats.Interval]], *,
                   colors: Optional[dict[str, str]] = None, markers: Optional[dict[str, str]] = None):
    """Frontier plot: for each label an (x interval, y interval) pair drawn as a point with CI bars."""
    for label, (xi, yi) in points.items():
        if xi.n == 0 or yi.n == 0:
            continue
        xerr = None if xi.n < 2 else [[xi.mean - xi.lo], [xi.hi - xi.mean]]
        yerr = None if yi.n < 2 else [[yi.mean - yi.lo], [yi.hi - yi.mean]]
        ax.errorbar([xi.mean], [yi.mean], xerr=xerr, yerr=yerr, fmt=(markers or {}).get(label, "o"),
                    color=(colors or {}).get(label), capsize=2, markersize=6, label=f"{label} (n={min(xi.n, yi.n)})")
    return ax


def interval_bars(ax, intervals: dict[str, stats.Interval], *, colors: Optional[dict[str, str]] = None,
                  scale: float = 1.0, horizontal: bool = True):
    """One bar per label at the mean with its CI whisker."""
    labels = list(intervals)
    pos = np.arange(len(labels))
    means = np.array([intervals[k].mean for k in labels]) * scale
    err = np.array([[intervals[k].mean - intervals[k].lo, intervals[k].hi - intervals[k].mean]
                    if intervals[k].n >= 2 else [0.0, 0.0] for k in labels]).T * scale
    col = [(colors or {}).get(k, "#777777") for k in labels]
    if horizontal:
        ax.barh(pos, means, xerr=err, color=col, capsize=2)
        ax.set_yticks(pos, labels, fontsize=7)
        ax.invert_yaxis()
    else:
        ax.bar(pos, means, yerr=err, color=col, capsize=2)
        ax.set_xticks(pos, labels, fontsize=7, rotation=30, ha="right")
    return ax


def histograms(ax, samples: dict[str, np.ndarray], *, bins: int = 30, log: bool = False,
               colors: Optional[dict[str, str]] = None):
    """Overlaid step histograms (log-spaced bins if `log`), NaN and non-positive (if log) values dropped."""
    clean = {k: np.asarray(v, dtype=float) for k, v in samples.items()}
    clean = {k: v[np.isfinite(v) & ((v > 0) if log else True)] for k, v in clean.items()}
    allv = np.concatenate([v for v in clean.values() if v.size]) if any(v.size for v in clean.values()) else np.array([])
    if allv.size == 0:
        return empty(ax, "no values")
    if log:
        edges = np.logspace(np.log10(allv.min()), np.log10(allv.max()) + 1e-12, bins + 1)
        ax.set_xscale("log")
    else:
        edges = np.linspace(allv.min(), allv.max() + 1e-12, bins + 1)
    for k, v in clean.items():
        if v.size:
            ax.hist(v, bins=edges, histtype="step", linewidth=1.3, color=(colors or {}).get(k), label=k)
    return ax


def image(ax, img: np.ndarray, title: str = ""):
    """A grayscale or RGB image without axes."""
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, color=LABEL_COLOR)
    return ax


def ratio_noise(ax, kl: np.ndarray, mean: np.ndarray, sd: np.ndarray, *, clip_window: tuple[float, float],
                clip_label: str, mc: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None):
    """App. D: log r ~ N(−KL, 2·KL) — the mean, ±1 and ±2 sd bands, the clip window in log space, and
    (optionally) Monte-Carlo (kl, mean, sd) points from the sampler to show the law is exact."""
    ax.fill_between(kl, mean - 2 * sd, mean + 2 * sd, color="#377eb8", alpha=0.12, linewidth=0, label="±2 sd")
    ax.fill_between(kl, mean - sd, mean + sd, color="#377eb8", alpha=0.25, linewidth=0, label="±1 sd = √(2·KL)")
    ax.plot(kl, mean, color="#377eb8", label="E[log r] = −KL")
    ax.axhspan(*clip_window, color="#e41a1c", alpha=0.25, label=clip_label)
    if mc is not None:
        k, m, s = mc
        ax.errorbar(k, m, yerr=s, fmt="k.", capsize=2, markersize=4, label="Monte-Carlo through sde.step")
    ax.set_xscale("log")
    return ax


def lines(ax, x: np.ndarray, series: dict[str, np.ndarray], *, styles: Optional[dict[str, dict]] = None):
    """Plain labelled lines (theory figures)."""
    for k, y in series.items():
        ax.plot(x, y, label=k, **(styles or {}).get(k, {}))
    return ax
