"""Figures of the claims campaign (docs/analysis_plan.md §5), drawn from campaign_runs/ and valid on a partial campaign.

* `campaign_qualitative.png` — in-domain test prompts, with their text beside each row and every cell outlined
  green (right) or red (wrong): the base (the pilot's iteration-0 evaluation, shared by every run) next to seed 0
  of Flow-GRPO, Flow-DPPO, the firing-matched clip and the no-trust-region control, at the end of training.
* `campaign_paired_curves.png` — each comparison of the plan as a paired difference to its reference method on
  the same seed (training reward, smoothed over 5 iterations), mean and 95 % t-band over seeds.
* `campaign_endpoints.png` — each claim's primary paired difference per seed, its mean and its Holm-level
  interval, against 0 and the plan's margin: what the verdict table says, drawn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from analysis.runs import campaign_claims as CC
from analysis.runs import verdicts as V

SMOOTH = 5
QUALITATIVE_PROMPTS = 6
QUALITATIVE_SEEDS = 3
# (panel title, cell, reference cell, per-iteration column)
PAIRED = [
    ("C1: Flow-GRPO − Flow-DPPO", "grpo", "dppo", "reward/tifa_mean"),
    ("C7: clip ε_fire − Flow-DPPO", "clip_fire", "dppo", "reward/tifa_mean"),
    ("control: no trust region − Flow-DPPO", "no_tr", "dppo", "reward/tifa_mean"),
    ("C5: symmetric − asymmetric (δ_hi)", "sym_hi", "asym_hi", "reward/tifa_mean"),
    ("C3: GDPO Flow-GRPO − Flow-DPPO", "multi_grpo", "multi_dppo", "reward/tifa_mean"),
    ("C6: β = 0 − β = 0.1 (ink reward)", "multi_dppo_b0", "multi_dppo", "reward/ink_mean"),
    ("C4: G8-I2 clip ε=1.6e-3 − Flow-DPPO", "reuse_grpo_noise", "reuse_dppo", "reward/tifa_mean"),
    ("C4 mechanism: G8-I2 clip ε=1e-4 − Flow-DPPO", "reuse_grpo_value", "reuse_dppo", "reward/tifa_mean"),
]


def smooth(v: np.ndarray, k: int = SMOOTH) -> np.ndarray:
    """Trailing moving average over k iterations (shorter at the start)."""
    c = np.cumsum(np.insert(np.asarray(v, float), 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - k, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def paired_curves(c: CC.Campaign, cell: str, ref: str, column: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(iterations, [seeds, iterations] smoothed differences cell − ref, seeds) over the seeds both cells have."""
    runs_a = {c.runs[r].seed: c.runs[r] for r in c.expected(cell) if r in c.runs}
    runs_b = {c.runs[r].seed: c.runs[r] for r in c.expected(ref) if r in c.runs}
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        return np.array([]), np.zeros((0, 0)), []
    rows = []
    for s in seeds:
        (ia, va), (ib, vb) = runs_a[s].series(column), runs_b[s].series(column)
        n = min(len(va), len(vb))
        rows.append(smooth(va[:n] - vb[:n]))
    n = min(len(r) for r in rows)
    return ia[:n], np.array([r[:n] for r in rows]), seeds


def fig_paired_curves(c: CC.Campaign, out: Path) -> dict:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), squeeze=False)
    info = {}
    for ax, (title, cell, ref, col) in zip(axes.flat, PAIRED):
        it, d, seeds = paired_curves(c, cell, ref, col)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        if not seeds:
            ax.text(0.5, 0.5, "no paired runs yet", ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_xticks([]); ax.set_yticks([])
            info[title] = {"seeds": []}
            continue
        for row in d:
            ax.plot(it, row, color="0.75", lw=0.6)
        m = d.mean(0)
        ax.plot(it, m, color="C0", lw=1.6, label=f"mean, n = {len(seeds)}")
        if len(seeds) >= 2:
            from scipy import stats as st
            half = st.t.ppf(0.975, len(seeds) - 1) * d.std(0, ddof=1) / np.sqrt(len(seeds))
            ax.fill_between(it, m - half, m + half, color="C0", alpha=0.25, lw=0, label="95 % band")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_ylabel(f"Δ {col.split('/')[1].replace('_mean', '')} (train)", fontsize=8)
        info[title] = {"seeds": seeds, "final_mean": float(m[-1])}
    fig.suptitle(f"Paired differences to the reference method on the same seed (training reward, {SMOOTH}-iteration "
                 "trailing mean; grey: single seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return info


def fig_endpoints(c: CC.Campaign, out: Path) -> dict:
    """One row per claim: the per-seed paired primary difference, its mean and (1 − 2α_k) interval."""
    import matplotlib.pyplot as plt
    verdicts, _ = CC.decide(c)
    by_key = {v.key: v for v in verdicts}
    fig, axes = plt.subplots(1, len(CC.CLAIMS), figsize=(2.3 * len(CC.CLAIMS), 4.2), squeeze=False)
    info = {}
    for ax, cs in zip(axes[0], CC.CLAIMS):
        part = cs.build(c)[0]
        d = np.asarray(part.d, float)
        v = by_key[cs.key]
        ax.axhline(0, color="k", lw=0.7)
        margin = part.equivalence_margin
        if margin is not None:
            for y in (-margin, margin):
                ax.axhline(y, color="C3", lw=0.7, ls="--")
        if d.size:
            ax.scatter(np.random.default_rng(0).uniform(-0.15, 0.15, d.size), d, s=12, color="0.4", zorder=3)
        if d.size >= 2:
            lo, hi = V.t_ci(d, 1 - 2 * v.level)
            ax.errorbar([0.45], [d.mean()], yerr=[[d.mean() - lo], [hi - d.mean()]], fmt="o", color="C0", capsize=4)
        ax.set_xlim(-0.5, 0.8)
        ax.set_xticks([])
        ax.set_title(f"{cs.key}: {v.verdict}\n{part.label.split(' >')[0].split(' ≠')[0]}", fontsize=7.5)
        ax.tick_params(labelsize=7)
        info[cs.key] = {"n": int(d.size), "verdict": v.verdict}
    fig.suptitle("Primary paired differences per seed (grey), mean with its Holm-level interval (blue); "
                 "dashed: equivalence margin", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return info


def fig_qualitative(c: CC.Campaign, pilot_store: Path, out: Path) -> Optional[dict]:
    """Base vs seed 0 of four cells, test prompts with text and per-cell marks (from the grids' sidecars)."""
    from flowdppo.evaluation import annotated_grid, read_grid
    from flowdppo.world import CELL_BOXES
    base_grid = next(iter(sorted(pilot_store.glob("*/samples/test_iter00000.png"))), None)
    columns, texts = [], None
    s = QUALITATIVE_SEEDS

    def add(title: str, png: Optional[Path]) -> None:
        nonlocal texts
        if png is None or not png.with_suffix(".json").exists():
            return
        imgs, side = read_grid(png)
        if side["texts"] is None or (texts is not None and side["texts"][:QUALITATIVE_PROMPTS] != texts):
            return
        texts = side["texts"][:QUALITATIVE_PROMPTS]
        keep = [i * side["per_prompt"] + j for i in range(len(texts)) for j in range(s)]
        columns.append((title, imgs[keep], [side["marks"][k] for k in keep] if side["marks"] else None))

    add("base", base_grid)
    for cell, title in (("grpo", "Flow-GRPO"), ("dppo", "Flow-DPPO"), ("clip_fire", "clip ε_fire"),
                        ("no_tr", "no trust region")):
        run = c.runs.get(f"{cell}-s0")
        add(f"{title} (seed 0)", run.sample_grid("test") if run is not None and run.path is not None else None)
    if texts is None or len(columns) < 2:
        return None
    annotated_grid(columns, texts, s, CELL_BOXES, out)
    return {"columns": [t for t, _, _ in columns], "prompts": len(texts), "seeds": s}


def make(c: CC.Campaign, pilot_store: Path, out_dir: Path) -> dict[str, dict]:
    """Write the campaign's figures into out_dir; {file: what it holds}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {"campaign_paired_curves.png": fig_paired_curves(c, out_dir / "campaign_paired_curves.png"),
            "campaign_endpoints.png": fig_endpoints(c, out_dir / "campaign_endpoints.png")}
    q = fig_qualitative(c, pilot_store, out_dir / "campaign_qualitative.png")
    if q is not None:
        made["campaign_qualitative.png"] = q
    return made
