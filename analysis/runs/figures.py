"""The archive's figures: every paper figure and table at our scale from the FIRST embedded world's runs
(paper_runs/, the registry of analysis/campaign/experiments.py), the theory / log figures, its claims README and
a manifest, from run logs only.  The campaign's own figures are analysis/runs/campaign_figures.py.

    figures.make_all(Path("paper_runs"), Path("paper_figures/first_world"))   # called by analysis/runs/report.py

Orchestration only: data access is analysis.runs.load_runs, numbers are analysis.runs.stats / analysis.runs.claims,
drawing is analysis.runs.plots.  Runs the registry (analysis.campaign.experiments) names but that are absent are
printed and marked on the figures, which are drawn with what exists.

Our metrics stand in for the paper's (stated on every caption and in the README):
    GenEval2 (Soft-TIFA GM)  ↔  tifa       in-domain reward: Soft-TIFA GM of the digit classifier
    CLIP score               ↔  agreement  prompt–image agreement by an independent judge
    PickScore                ↔  realism    per-image quality (kNN distance to real digit features)
    HPSv2                    ↔  diversity  within-prompt sample diversity (the forgetting signal)
    (trained reward)            ink        the cheap, hackable preference reward of the multi-reward runs
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


import matplotlib  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.runs import claims as claims_mod  # noqa: E402
from analysis.campaign import experiments  # noqa: E402
from analysis.runs import plots, stats  # noqa: E402
from analysis.campaign.experiments import RunSpec  # noqa: E402
from analysis.runs.load_runs import Run, RunSet, load_runs  # noqa: E402
from flowdppo.runlog import git_commit, uncommitted_changes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIG5_DIGITIZED = Path(__file__).resolve().parents[1] / "data" / "fig5_multiepoch_digitized.csv"
DPI = 110

# (our metric, paper metric, panel title) in the paper's panel order + our extra panel
PANELS = [("tifa", "GenEval2", "GenEval2 ↔ tifa"), ("agreement", "CLIP", "CLIP ↔ agreement"),
          ("diversity", "HPSv2", "HPSv2 ↔ diversity"), ("realism", "PickScore", "PickScore ↔ realism"),
          ("ink", "—", "ink (hackable preference reward)")]
TABLE_METRICS = [("tifa", "GE2↔tifa ×100", 100.0), ("agreement", "CLIP↔agreement", 1.0),
                 ("realism", "Pick↔realism", 1.0), ("diversity", "HPSv2↔diversity", 1.0), ("ink", "ink", 1.0)]
METRIC_MAP_MD = """| paper metric | ours | what it is |
|---|---|---|
| GenEval2 (Soft-TIFA GM, %) | `tifa` (×100) | in-domain reward: geometric mean over the four cells of the digit classifier's probability of the asked atom |
| CLIP score | `agreement` | prompt–image agreement by an independent CNN judge (other model, features and data than `tifa`) |
| PickScore | `realism` | per-image quality: −(kNN distance of each cell to real digit features) / real-data scale |
| HPSv2 | `diversity` | within-prompt pairwise RMS distance of fixed-seed samples: the forgetting signal (RL collapses it) |
| (HPSv2 / PickScore as *trained* rewards) | `ink` | mean intensity: a cheap, hackable preference reward, trained in the multi-reward runs |
| GPU hours | CPU hours | logged rollout + reward + update time of the run (1 thread per run) |
| training epoch | iteration | one rollout → update iteration |
| in-domain (GenEval2 prompts) / OOD (PickScore prompts) | split `test` / `ood` | held-out in-domain prompts (layouts never trained on) / the never-trained out-of-domain wording (full 4-digit grids) |
"""


@dataclass
class Ctx:
    runs: RunSet
    reg: dict[str, list[RunSpec]]
    out: Path
    outputs: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def run(self, spec: RunSpec) -> Optional[Run]:
        return self.runs.get(spec.run_id)

    def complete(self, spec: RunSpec) -> Optional[Run]:
        """The run if it finished (tables and end-of-training values use only those)."""
        r = self.runs.get(spec.run_id)
        return r if r is not None and not r.partial else None

    def status(self, specs: list[RunSpec]) -> tuple[list[str], list[str], list[str]]:
        """(present ids, missing ids, partial ids) of these specs."""
        ids = list(dict.fromkeys(s.run_id for s in specs))
        present = [i for i in ids if i in self.runs]
        partial = [i for i in present if self.runs.get(i).partial]
        return present, [i for i in ids if i not in self.runs], partial

    def record(self, name: str, *, paper: list[str], specs: list[RunSpec], keys: list[str], caption: str) -> None:
        present, missing, partial = self.status(specs)
        commits = sorted({str(self.runs.get(i).header.get("git_commit")) for i in present})
        self.outputs[name] = {"paper": paper, "caption": caption, "runs": present,
                              "seeds": sorted({s.seed for s in specs if s.run_id in present}),
                              "missing": missing, "partial": partial, "keys": keys, "run_git_commits": commits}
        if missing or partial:
            self.warnings.append(f"{name}: {len(missing)} missing, {len(partial)} partial of "
                                 f"{len(present) + len(missing)} runs")


def _subplots(*args, **kw):
    return plt.subplots(*args, layout="constrained", **kw)


def by_cell(specs: list[RunSpec]) -> dict[str, list[RunSpec]]:
    out: dict[str, list[RunSpec]] = {}
    for s in specs:
        out.setdefault(s.cell, []).append(s)
    return out


# ---------------------------------------------------------------------------------------------------
# Curves from runs
# ---------------------------------------------------------------------------------------------------
def eval_curves(ctx: Ctx, specs: list[RunSpec], metric: str, split: str = "test",
                x_kind: str = "iteration") -> tuple[np.ndarray, np.ndarray]:
    """(x [P], Y [seeds, P]) of an eval metric; x = iteration or the seed-mean CPU hours at it."""
    series, xh = {}, {}
    for s in specs:
        r = ctx.run(s)
        if r is None:
            continue
        it, v = r.eval_series(metric, split)
        if v.size:
            series[s.seed] = (it, v)
            xh[s.seed] = (it, r.cpu_hours_before(it))
    its, Y, _ = stats.align(series)
    if x_kind == "iteration" or not series:
        return its, Y
    _, X, _ = stats.align(xh)
    with np.errstate(all="ignore"):
        return np.nanmean(X, axis=0), Y


def iter_curves(ctx: Ctx, specs: list[RunSpec], column: str, smooth: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, Y [seeds, P]) of a per-iteration column, each seed smoothed over ~1/15 of its run."""
    series = {}
    for s in specs:
        r = ctx.run(s)
        if r is None:
            continue
        it, v = r.series(column)
        if v.size and np.isfinite(v).any():
            series[s.seed] = (it, stats.smooth(v, max(1, v.size // 15)) if smooth else v)
    its, Y, _ = stats.align(series)
    return its, Y


def _finish(fig, ctx: Ctx, name: str, specs: list[RunSpec], title: str) -> None:
    present, missing, partial = ctx.status(specs)
    flag = ""
    if missing or partial:
        flag = f"   [INCOMPLETE: {len(missing)} of {len(present) + len(missing)} runs missing, {len(partial)} partial]"
    fig.suptitle(title + flag, fontsize=10, color="#b2182b" if flag else plots.LABEL_COLOR)
    fig.savefig(ctx.out / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _axlegend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _legend(fig, axes) -> None:
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=7, frameon=False)


# ---------------------------------------------------------------------------------------------------
# Training-curve figures (Figs 2/7/9, 4/8, 10, 11)
# ---------------------------------------------------------------------------------------------------
def _train_column(r, metric: str) -> str:
    """The training-batch column of a reward: trained (reward/…) or logged at weight 0 (reward_log/…)."""
    return f"reward/{metric}_mean" if f"reward/{metric}_mean" in r.iters else f"reward_log/{metric}_mean"


def curves_figure(ctx: Ctx, key: str, name: str, paper: list[str], title: str, *, training_rewards: bool = False,
                  x_kind: str = "cpu_hours") -> None:
    """Top row: training-batch rewards per iteration, as the paper's curves (trained rewards and the ones
    logged at weight 0); bottom row: the pinned ODE evaluation on held-out in-domain prompts."""
    specs = ctx.reg[key]
    cells = by_cell(specs)
    fig, axes = _subplots(2, len(PANELS), figsize=(3.1 * len(PANELS), 5.4))
    keys = []
    for j, (metric, paper_metric, panel_title) in enumerate(PANELS):
        ax_t, ax_e = axes[0, j], axes[1, j]
        for cell, cs in cells.items():
            x, Y = eval_curves(ctx, cs, metric, "test", x_kind)
            if Y.size:
                plots.curve_band(ax_e, x, Y, label=cell, color=plots.METHOD_COLORS.get(cell))
            if metric != "diversity":
                present = [ctx.run(s) for s in cs if ctx.run(s) is not None]
                if present:
                    xt, Yt = iter_curves(ctx, cs, _train_column(present[0], metric))
                    if Yt.size:
                        plots.curve_band(ax_t, xt, Yt, label=cell, color=plots.METHOD_COLORS.get(cell))
        keys += [f"reward/{metric}_mean|reward_log/{metric}_mean", f"eval[test].{metric}"]
        plots.style(ax_t, xlabel="iteration (≙ training epoch)", title=panel_title + " (training batch)")
        plots.style(ax_e, xlabel="CPU hours (≙ GPU hours)" if x_kind != "iteration" else "iteration",
                    title=panel_title + " (held-out test eval)")
    axes[0, len(PANELS) - 3].text(0.5, 0.5, "diversity: eval only", ha="center", va="center",
                                  transform=axes[0, len(PANELS) - 3].transAxes, fontsize=7, color="grey")
    plots.missing_note(axes[0, 0], ctx.status(specs)[1])
    _legend(fig, axes)
    _finish(fig, ctx, name, specs, title)
    cap = (f"{title}. Seed mean ± 95 % t-interval over seeds. Panels: " + ", ".join(p[2] for p in PANELS) +
           ". Top: training-batch rewards per iteration (smoothed; rewards not trained are logged at weight 0, "
           "as the paper logs CLIP/PickScore/HPSv2). Bottom: pinned ODE evaluation on held-out in-domain "
           "prompts (test split, layouts never trained on).")
    ctx.record(name, paper=paper, specs=specs, keys=keys, caption=cap)


# ---------------------------------------------------------------------------------------------------
# Figs 3 and 5: training reward under sample reuse / δ
# ---------------------------------------------------------------------------------------------------
def fig3(ctx: Ctx) -> None:
    specs = ctx.reg["fig3"]
    fig, ax = _subplots(figsize=(5, 3.4))
    colors = ["#4daf4a", "#377eb8", "#e41a1c", "#7f7f7f"]
    for (cell, cs), c in zip(by_cell(specs).items(), colors):
        x, Y = iter_curves(ctx, cs, "reward/tifa_mean")
        if Y.size:
            plots.curve_band(ax, x, Y, label=cell, color=c, linestyle="--" if "asym" in cell else "-")
    plots.style(ax, xlabel="iteration (≙ training epoch)", ylabel="training tifa (↔ GenEval2)")
    plots.missing_note(ax, ctx.status(specs)[1])
    _axlegend(ax, fontsize=7)
    name = "fig03_delta_asymmetry.png"
    _finish(fig, ctx, name, specs, "Fig. 3 — δ sweep and the symmetric mask (single reward, CPS)")
    ctx.record(name, paper=["Fig. 3"], specs=specs, keys=["reward/tifa_mean"], caption=(
        "Fig. 3 analogue: Flow-DPPO + CPS at δ_mid/10, δ_mid, 10·δ_mid (↔ the paper's 1e-7, 1e-6, 1e-5; δ_mid = the "
        "median per-dim KL_old of an unmasked pilot, see analysis/campaign/experiments.py) and the symmetric mask "
        "(\"w/o asymmetry\") at δ_mid. Training-batch tifa per iteration, smoothed; seed mean ± 95 % t-interval."))


def fig5(ctx: Ctx) -> None:
    specs = ctx.reg["fig5"]
    fig, axes = _subplots(2, 2, figsize=(10, 6.4))
    for j, (kernel, (clip_key, dppo_key)) in enumerate(experiments.KERNEL_PAIRS.items()):
        ax = axes[0, j]
        for paper_name, (label, _) in experiments.REUSE_SETTINGS.items():
            for key, ls in ((clip_key, "--"), (dppo_key, "-")):
                cell = f"{experiments.METHODS[key].label} | {label}"
                x, Y = iter_curves(ctx, [s for s in specs if s.cell == cell], "reward/tifa_mean")
                if Y.size:
                    plots.curve_band(ax, x, Y, label=cell, color=plots.REUSE_COLORS[label], linestyle=ls)
        plots.style(ax, xlabel="iteration", ylabel="training tifa (↔ GenEval2)",
                    title=f"ours, {kernel}: {experiments.METHODS[clip_key].label} (dashed) vs "
                          f"{experiments.METHODS[dppo_key].label} (solid)")
        _axlegend(ax, fontsize=6)
        pair_labels = (experiments.METHODS[clip_key].label, experiments.METHODS[dppo_key].label)
        plots.missing_note(ax, ctx.status([s for s in specs if s.cell.split(" | ")[0] in pair_labels])[1])
    paper = pd.read_csv(FIG5_DIGITIZED)
    for j, kernel in enumerate(("flow_sde", "cps")):
        ax = axes[1, j]
        for paper_name, (label, _) in experiments.REUSE_SETTINGS.items():
            d = paper[(paper["schedule"] == kernel) & (paper["setting"] == paper_name)]
            color = plots.REUSE_COLORS[label]
            ax.plot(d["epoch"], d["ratio_clip_baseline"], "--", color=color, label=f"clip {paper_name}")
            ax.plot(d["epoch"], d["flow_dppo_variant"], "-", color=color, label=f"DPPO {paper_name}")
        plots.style(ax, xlabel="training epoch", ylabel="training GenEval2",
                    title=f"paper (digitised, ±0.01), SD3.5, {kernel}")
        _axlegend(ax, fontsize=6)
    name = "fig05_multi_epoch.png"
    _finish(fig, ctx, name, specs, "Fig. 5 — sample reuse: G8-I1 / G4-I2 / G8-I2 (↔ G64-I1 / G32-I2 / G64-I2)")
    ctx.record(name, paper=["Fig. 5"], specs=specs, keys=["reward/tifa_mean", "fig5_multiepoch_digitized.csv"],
               caption=("Fig. 5 analogue. Top: ours, training-batch tifa per iteration (smoothed), seed mean ± 95 % "
                        "t-interval; colours as the paper (red G·-I1, green half-groups I2, blue I2). Bottom: the "
                        "paper's curves digitised from the project page PNGs (reference only)."))


# ---------------------------------------------------------------------------------------------------
# Figs 12 and 13: KL to the pretrained model
# ---------------------------------------------------------------------------------------------------
def fig12(ctx: Ctx) -> None:
    rows = {"Flow-SDE": ["Flow-GRPO", "GRPO-Guard", "Flow-DPPO"], "CPS": ["Flow-CPS", "Flow-DPPO + CPS"]}
    settings = {"single": "fig2", "CFG": "fig10", "multi": "fig4"}
    fig, axes = _subplots(2, 3, figsize=(11, 5.6), sharex=True)
    all_specs = []
    for i, (row, methods) in enumerate(rows.items()):
        for j, (setting, key) in enumerate(settings.items()):
            ax = axes[i, j]
            specs = [s for s in ctx.reg[key] if s.cell in methods]
            all_specs += specs
            for cell, cs in by_cell(specs).items():
                x, Y = iter_curves(ctx, cs, "ref_kl_per_dim")
                if Y.size:
                    plots.curve_band(ax, x, Y, label=cell, color=plots.METHOD_COLORS.get(cell), scale=1e3)
            plots.style(ax, xlabel="iteration" if i else "", ylabel=f"{row}\nKL ×1e-3 per dim" if j == 0 else "",
                        title=setting)
            plots.missing_note(ax, ctx.status(specs)[1])
    _legend(fig, axes)
    name = "fig12_ref_kl.png"
    _finish(fig, ctx, name, all_specs, "Fig. 12 — KL(π_old ‖ π_ref) during training")
    ctx.record(name, paper=["Fig. 12"], specs=all_specs, keys=["ref_kl_per_dim"], caption=(
        "Fig. 12 analogue: exact per-dim KL between the rollout policy and the pretrained reference at the "
        "trained SDE steps of each rollout (×1e-3), smoothed, seed mean ± 95 % t-interval. Columns: our three "
        "settings (the paper's six columns are models × settings)."))


def fig13(ctx: Ctx) -> None:
    specs = ctx.reg["fig13"]
    fig, ax = _subplots(figsize=(5, 3.4))
    for (cell, cs), c in zip(by_cell(specs).items(), ["#7f7f7f", "#377eb8", "#e41a1c"]):
        x, Y = iter_curves(ctx, cs, "ref_kl_per_dim")
        if Y.size:
            plots.curve_band(ax, x, Y, label=cell, color=c, scale=1e3)
    plots.style(ax, xlabel="iteration (≙ training epoch)", ylabel="KL(π_θ‖π_ref) ×1e-3 per dim")
    plots.missing_note(ax, ctx.status(specs)[1])
    _axlegend(ax, fontsize=7)
    name = "fig13_beta_ref_kl.png"
    _finish(fig, ctx, name, specs, "Fig. 13 — KL to the reference for β ∈ {0, 1e-3, 1e-2} (multi reward, CPS)")
    ctx.record(name, paper=["Fig. 13"], specs=specs, keys=["ref_kl_per_dim"], caption=(
        "Fig. 13 analogue: Flow-DPPO + CPS, multi reward (GDPO), β on the exact per-dim KL to the reference."))


# ---------------------------------------------------------------------------------------------------
# Figs 1 and 6: fixed-seed qualitative grids
# ---------------------------------------------------------------------------------------------------
def grid_cell(img: np.ndarray, row: int, col: int, n_rows: int, n_cols: int) -> np.ndarray:
    """One image out of an evaluation grid (flowdppo.evaluation.save_grid: 1-px padding, then a
    nearest-neighbour upscale).  The scale and cell size are solved from the grid's pixel size."""
    h, w = img.shape[:2]
    for scale in range(16, 0, -1):
        if h % scale or w % scale:
            continue
        ch, cw = (h // scale - 1) / n_rows - 1, (w // scale - 1) / n_cols - 1
        if ch == int(ch) and cw == int(cw) and ch > 0:
            y, x = scale * (1 + row * (int(ch) + 1)), scale * (1 + col * (int(cw) + 1))
            return img[y:y + scale * int(ch), x:x + scale * int(cw)]
    raise ValueError(f"a {w}×{h} grid does not split into {n_rows}×{n_cols} padded cells")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(path))


def qualitative(ctx: Ctx, key: str, name: str, paper: list[str], rows: list[tuple[str, int]], title: str) -> None:
    specs = ctx.reg[key]
    base_run = next((ctx.run(s) for s in specs if ctx.run(s) is not None and ctx.run(s).sample_grid("test", 0)), None)
    columns = [("base (iteration 0)", base_run, 0)] + [(s.cell, ctx.run(s), None) for s in specs]
    fig, axes = _subplots(len(rows), len(columns), figsize=(1.6 * len(columns), 1.7 * len(rows)), squeeze=False)
    for j, (label, run, it) in enumerate(columns):
        for i, (split, prompt_row) in enumerate(rows):
            ax = axes[i, j]
            path = run.sample_grid(split, it) if run is not None else None
            if path is None:
                plots.empty(ax, "missing")
                continue
            cfg = run.config
            n_rows = min(int(cfg.get("eval_prompts", 8)), 8)
            img = grid_cell(_read_png(path), prompt_row, 0, n_rows, int(cfg.get("eval_samples_per_prompt", 1)))
            plots.image(ax, img, title=label if i == 0 else "")
            if j == 0:
                ax.set_ylabel(f"{split} prompt {prompt_row}", fontsize=7)
    _finish(fig, ctx, name, specs, title)
    ctx.record(name, paper=paper, specs=specs, keys=["samples/{split}_iterNNNNN.png (final and iteration 0)"],
               caption=f"{title}: the first fixed evaluation seed of each listed prompt at the final evaluation; "
                       "the same noise in every column (pinned evaluation regime), seed-0 runs.")


# ---------------------------------------------------------------------------------------------------
# Tables 1–4
# ---------------------------------------------------------------------------------------------------
def _table_rows(ctx: Ctx, key: str, block: str, splits=("test", "ood")) -> list[dict]:
    specs = ctx.reg[key]
    rows = []
    present = [ctx.complete(s) for s in specs if ctx.complete(s) is not None]
    for split in splits:
        for metric, _, scale in TABLE_METRICS:
            base = stats.t_interval([r.initial_eval(metric, split) for r in present])
            rows.append({"block": block, "method": "pretrained", "split": split, "metric": metric, "scale": scale,
                         "mean": base.mean, "lo": base.lo, "hi": base.hi, "n": base.n})
            for cell, cs in by_cell(specs).items():
                ci = stats.t_interval([ctx.complete(s).final_eval(metric, split) for s in cs
                                       if ctx.complete(s) is not None])
                rows.append({"block": block, "method": cell, "split": split, "metric": metric, "scale": scale,
                             "mean": ci.mean, "lo": ci.lo, "hi": ci.hi, "n": ci.n})
    return rows


def _md_table(df: pd.DataFrame, index: list[str], columns: list[str], fmt_scale: bool = True) -> str:
    """Markdown pivot: cells "mean [lo, hi]" (×scale), n < 2 shown as "mean (n=1)", none as "–"."""
    def cell(r) -> str:
        ci = stats.Interval(r["mean"], r["lo"], r["hi"], int(r["n"]))
        return ci.fmt(r["scale"] if fmt_scale else 1.0)
    d = df.assign(text=df.apply(cell, axis=1))
    piv = d.pivot_table(index=index, columns=columns, values="text", aggfunc="first", sort=False)
    head = "| " + " | ".join(index) + " | " + " | ".join(" ".join(map(str, c)) if isinstance(c, tuple) else str(c)
                                                         for c in piv.columns) + " |"
    sep = "|" + "---|" * (len(index) + len(piv.columns))
    body = []
    for idx, row in piv.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        body.append("| " + " | ".join(map(str, idx)) + " | " + " | ".join(str(v) if isinstance(v, str) else "–"
                                                                       for v in row.values) + " |")
    return "\n".join([head, sep, *body]) + "\n"


def _write_table(ctx: Ctx, stem: str, df: pd.DataFrame, md: str, title: str, paper: list[str],
                 specs: list[RunSpec], keys: list[str], caption: str) -> None:
    df.to_csv(ctx.out / f"{stem}.csv", index=False, float_format="%.6g")
    present, missing, partial = ctx.status(specs)
    flag = (f"\n**INCOMPLETE: {len(missing)} of {len(present) + len(missing)} runs missing, {len(partial)} partial "
            f"(left out of this table: {', '.join(partial) or 'none'}).**\n" if missing or partial else "")
    (ctx.out / f"{stem}.md").write_text(f"# {title}\n\n{caption}\n{flag}\n{md}")
    ctx.record(f"{stem}.csv", paper=paper, specs=specs, keys=keys, caption=caption)


def tables(ctx: Ctx) -> None:
    label_of = {"tifa": "tifa ×100 (↔GE2)", "agreement": "agreement (↔CLIP)", "realism": "realism (↔Pick)",
                "diversity": "diversity (↔HPSv2)", "ink": "ink"}
    # Table 1: multi reward
    df1 = pd.DataFrame(_table_rows(ctx, "table1", "multi"))
    df1["column"] = df1["split"].map({"test": "in-domain", "ood": "OOD"}) + " " + df1["metric"].map(label_of)
    _write_table(ctx, "table1_multi_reward", df1, _md_table(df1, ["method"], ["column"]),
                 "Table 1 — end of training, multi reward (GDPO)", ["Table 1"], ctx.reg["table1"],
                 ["eval[test|ood].{tifa,agreement,realism,diversity,ink}"],
                 "Final pinned evaluation of the complete runs, seed mean [95 % t-interval]; pretrained = iteration-0 evaluation.")
    # Table 4: every setting
    rows = []
    for block, key in (("single", "fig2"), ("multi", "fig4"), ("CFG", "fig10")):
        rows += _table_rows(ctx, key, block)
    df4 = pd.DataFrame(rows)
    df4["column"] = df4["split"].map({"test": "in-domain", "ood": "OOD"}) + " " + df4["metric"].map(label_of)
    _write_table(ctx, "table4_full", df4, _md_table(df4, ["block", "method"], ["column"]),
                 "Table 4 — end of training, all settings", ["Table 4"], ctx.reg["table4"],
                 ["eval[test|ood].{tifa,agreement,realism,diversity,ink}"],
                 "Final pinned evaluation of the complete runs, seed mean [95 % t-interval]; blocks = our settings (the paper's = models).")
    # Table 3: tifa per setting
    df3 = df4[(df4["metric"] == "tifa") & (df4["split"] == "test")].copy()
    _write_table(ctx, "table3_tifa", df3, _md_table(df3, ["method"], ["block"]),
                 "Table 3 — end-of-training tifa (↔ Soft-TIFA GM on GenEval2), ×100", ["Table 3"], ctx.reg["table3"],
                 ["eval[test].tifa"], "Columns: single (↔ Figs 2/7/9), multi (↔ Figs 4/8), CFG (↔ Fig 10).")
    # Table 2: KL to the reference at the end of training
    rows = []
    for block, key in (("single", "fig2"), ("multi", "fig4"), ("CFG", "fig10")):
        for cell, cs in by_cell(ctx.reg[key]).items():
            vals = [float(stats.tail_mean(ctx.complete(s).series("ref_kl_per_dim")[1], claims_mod.TAIL)[0])
                    for s in cs if ctx.complete(s) is not None]
            ci = stats.t_interval(vals)
            kernel = experiments.METHODS[next(k for k, m in experiments.METHODS.items() if m.label == cell)].kernel
            rows.append({"schedule": "Flow-SDE" if kernel == "flow_sde" else "CPS", "method": cell, "block": block,
                         "scale": 1e3, "mean": ci.mean, "lo": ci.lo, "hi": ci.hi, "n": ci.n})
    df2 = pd.DataFrame(rows)
    _write_table(ctx, "table2_ref_kl", df2, _md_table(df2, ["schedule", "method"], ["block"]),
                 "Table 2 — KL to the pretrained reference at the end of training (×1e-3 per dim)", ["Table 2"],
                 ctx.reg["table2"], ["ref_kl_per_dim"],
                 f"Mean of ref_kl_per_dim over the last {claims_mod.TAIL:.0%} of iterations; seed mean [95 % t-interval].")


# ---------------------------------------------------------------------------------------------------
# Theory figures (computed, not from logs)
# ---------------------------------------------------------------------------------------------------
def ratio_noise_mc(kl_values: np.ndarray, dim: int = 64, n: int = 4000, seed: int = 0):
    """(kl, mean, sd) of log r (summed log-probs) measured through flowdppo.sde.step at each target exact KL
    (analysis.theory.tables.log_ratio_samples: one Flow-SDE step, σ 0.7 → 0.6, η 0.7)."""
    import torch

    from analysis.theory.tables import log_ratio_samples
    gen = torch.Generator().manual_seed(seed)
    means, sds = [], []
    for kl in kl_values:
        lr, _ = log_ratio_samples(float(kl) / dim, dim, n, gen)
        means.append(float(lr.mean()))
        sds.append(float(lr.std()))
    return np.asarray(kl_values), np.array(means), np.array(sds)


def theory_ratio_noise(ctx: Ctx) -> None:
    from analysis.theory.tables import trip_fraction_lognormal as trip_fraction
    fig, axes = _subplots(1, 3, figsize=(13, 3.6))
    kl = np.logspace(-3, 1, 200)
    mc = ratio_noise_mc(np.array([1e-2, 1e-1, 0.5, 2.0]))
    plots.ratio_noise(axes[0], kl, -kl, np.sqrt(2 * kl), clip_window=(np.log(0.8), np.log(1.2)),
                      clip_label="PPO clip ε = 0.2: [log 0.8, log 1.2]", mc=mc)
    axes[0].set_ylim(-8, 4)
    plots.style(axes[0], xlabel="exact KL(π_old‖π_θ) of one step (nats, Eq. 14)", ylabel="log r (full-norm)",
                title="App. D: log r ~ N(−KL, 2·KL)")
    _axlegend(axes[0], fontsize=6, loc="lower left")
    # per-dim log-probs, the published codes: log r̄ ~ N(−KL_dim, 2·KL_dim/D)
    kd = np.logspace(-9, -2, 200)
    for D, eps, c in ((experiments.LATENT_DIM, experiments.paper_relative_eps(1e-4), "#e41a1c"),
                      (experiments.PAPER_LATENT_DIM, 1e-4, "#377eb8")):
        sd = np.sqrt(2 * kd / D)
        axes[1].plot(kd, sd, color=c, label=f"sd(log r̄), D = {D}")
        axes[1].axhline(np.log1p(eps), color=c, linestyle=":", label=f"log(1+ε), ε = {eps:.2g}")
        outside = [trip_fraction(-k, s_, eps) for k, s_ in zip(kd, sd)]   # log r̄ ~ N(−KL_dim, 2·KL_dim/D)
        axes[2].plot(kd, outside, color=c, label=f"D = {D}, ε = {eps:.2g}")
        axes[2].axvline(eps**2 * D / 2, color=c, linestyle=":", linewidth=1)
    plots.style(axes[1], xlabel="KL_old per dim", ylabel="sd of per-dim log r", logx=True, logy=True,
                title="per-dim log-probs: sd(log r̄) = √(2·KL_dim/D)")
    _axlegend(axes[1], fontsize=6)
    plots.style(axes[2], xlabel="KL_old per dim (dotted: δ = ε²D/2)", ylabel="P(|r̄ − 1| beyond ε)", logx=True,
                title="fraction a symmetric clip cuts (both directions)")
    _axlegend(axes[2], fontsize=6)
    name = "theory_ratio_noise.png"
    fig.suptitle("Ratio noise (App. D): the clip constrains a one-sample estimate whose spread is √(2·KL)",
                 fontsize=10, color=plots.LABEL_COLOR)
    fig.savefig(ctx.out / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    ctx.record(name, paper=["App. D", "§3.2"], specs=[],
               keys=["computed: flowdppo.sde.step, flowdppo.divergence, analysis.theory.tables (trip fraction)"],
               caption=("Left: mean and ±1/±2 sd of log r = εᵀd/σ − KL against the exact KL with the PPO window "
                        "[log 0.8, log 1.2]; black points are Monte-Carlo through flowdppo.sde.step (D = 64, "
                        "4000 draws). Middle/right: with per-dim log-probs the spread is √(2·KL_dim/D), so the "
                        "paper's ε = 1e-4 at D = 65,536 and our ε = 1.6e-3 at D = 256 meet the noise at the same "
                        "δ = ε²D/2 (dotted); the mean shift −KL_dim does not shrink with D, so at the paper's D the "
                        "ratio's left shift, not its noise, makes the clip fire (right, blue)."))


def theory_bounds(ctx: Ctx) -> None:
    from analysis.theory import toy_mdp
    rng = np.random.default_rng(0)
    mdp = toy_mdp.random_mdp(rng, n_states=3, n_actions=3, horizon=4, flow_like=True)
    old = toy_mdp.random_policy(rng, mdp)
    scales = np.logspace(-3, 0.3, 30)
    rows = [toy_mdp.theorem_terms(mdp, old, toy_mdp.perturb_policy(np.random.default_rng(1), old, s)) for s in scales]
    df = pd.DataFrame(rows).sort_values("tv_max")
    fig, axes = _subplots(1, 3, figsize=(13, 3.6))
    tv = df["tv_max"].to_numpy()
    plots.lines(axes[0], tv, {"J(π_θ) − J(π_old)": df["improvement"].to_numpy(), "L′ (Eq. 7)": df["L_prime"].to_numpy(),
                              "Thm 2 bound (quadratic)": df["bound_quadratic"].to_numpy(),
                              "App. B.3 bound (linear)": df["bound_linear"].to_numpy()},
                styles={"J(π_θ) − J(π_old)": {"color": "k", "linewidth": 2},
                        "L′ (Eq. 7)": {"color": "#7f7f7f", "linestyle": "--"},
                        "Thm 2 bound (quadratic)": {"color": "#e41a1c"}, "App. B.3 bound (linear)": {"color": "#377eb8"}})
    axes[0].set_ylim(df["improvement"].min() - 1, df["improvement"].max() + 0.5)
    plots.style(axes[0], xlabel="D_TV^max", ylabel="value", logx=True, title="random flow MDP (S=3, K−1=4)")
    _axlegend(axes[0], fontsize=6)
    resid = np.abs(df["improvement"] - (df["L_prime"] - df["Delta"])).to_numpy()
    slack_q = (df["improvement"] - df["bound_quadratic"]).to_numpy()
    slack_l = (df["improvement"] - df["bound_linear"]).to_numpy()
    plots.lines(axes[1], tv, {"slack of Thm 2": slack_q, "slack of linear bound": slack_l,
                              "|J diff − (L′ − Δ)| (Thm 1)": np.maximum(resid, 1e-18)},
                styles={"slack of Thm 2": {"color": "#e41a1c"}, "slack of linear bound": {"color": "#377eb8"},
                        "|J diff − (L′ − Δ)| (Thm 1)": {"color": "k", "linestyle": ":"}})
    plots.style(axes[1], xlabel="D_TV^max", ylabel="improvement − bound (≥ 0)", logx=True, logy=True,
                title="slack (and Theorem 1's identity residual)")
    _axlegend(axes[1], fontsize=6)
    tvs = np.linspace(0.02, 0.45, 20)
    tight = [toy_mdp.theorem_terms(*toy_mdp.tight_two_step_example(t)) for t in tvs]
    plots.lines(axes[2], tvs, {"J(π_θ) − J(π_old)": np.array([t["improvement"] for t in tight]),
                               "Thm 2 bound": np.array([t["bound_quadratic"] for t in tight])},
                styles={"J(π_θ) − J(π_old)": {"color": "k", "linewidth": 3, "alpha": 0.4},
                        "Thm 2 bound": {"color": "#e41a1c", "linestyle": "--"}})
    plots.style(axes[2], xlabel="D_TV per step", ylabel="value", title="two-step MDP where Thm 2 is tight")
    _axlegend(axes[2], fontsize=6)
    name = "theory_bound_tightness.png"
    fig.suptitle("Theorem 2 by exact enumeration (analysis/theory/toy_mdp.py)", fontsize=10, color=plots.LABEL_COLOR)
    fig.savefig(ctx.out / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    ctx.record(name, paper=["Theorem 1", "Theorem 2", "App. B.3"], specs=[], keys=["computed: analysis.theory.toy_mdp"],
               caption=("Left: true improvement, surrogate L′ and both lower bounds as a policy is perturbed away "
                        "from π_old on a random flow-like tabular MDP; middle: the bounds' slack (the quadratic term "
                        "wins for small steps, the linear one for large) and Theorem 1's identity residual (float "
                        "rounding); right: an MDP on which Theorem 2 holds with equality."))


# ---------------------------------------------------------------------------------------------------
# Figures from the trust-region logs
# ---------------------------------------------------------------------------------------------------
def _sde_pool(ctx: Ctx, specs: list[RunSpec]) -> list[int]:
    ks = set()
    for s in specs:
        r = ctx.run(s)
        if r is not None:
            ks |= {int(c.split(".")[1]) for c in r.iters.columns if c.startswith("per_step.")}
    return sorted(ks)


def logs_per_step(ctx: Ctx) -> None:
    specs = ctx.reg["logs_per_step"]
    ks = _sde_pool(ctx, specs) or [0]
    fig, axes = _subplots(2, len(ks), figsize=(2.6 * len(ks), 5), squeeze=False)
    for j, k in enumerate(ks):
        for i, (stat, label, fn) in enumerate(((f"per_step.{k}.kl_per_dim_mean", "KL_old per dim", lambda v: v),
                                              (f"per_step.{k}.ratio_mean", "|mean r − 1|", lambda v: np.abs(v - 1)))):
            samples = {}
            for cell, cs in by_cell(specs).items():
                vals = [fn(ctx.run(s).series(stat)[1]) for s in cs if ctx.run(s) is not None]
                samples[cell] = np.concatenate(vals) if vals else np.array([])
            plots.histograms(axes[i, j], samples, log=True, colors=plots.METHOD_COLORS)
            plots.style(axes[i, j], xlabel=label, title=f"SDE step index {k}" if i == 0 else "")
    plots.missing_note(axes[0, 0], ctx.status(specs)[1])
    _legend(fig, axes)
    name = "logs_per_step_hist.png"
    _finish(fig, ctx, name, specs, "Per-SDE-step trust-region statistics (single reward)")
    ctx.record(name, paper=["§3.2", "App. C"], specs=specs,
               keys=["per_step.{k}.kl_per_dim_mean", "per_step.{k}.ratio_mean"], caption=(
                   "Histograms over iterations (and seeds) of each iteration's off-policy mean KL_old per dim and "
                   "|mean ratio − 1| at each trained SDE step index. The logs keep per-step MEANS, not per-sample "
                   "values, so these are distributions of per-iteration means."))


def logs_mask_fractions(ctx: Ctx) -> None:
    specs = ctx.reg["logs_mask_fractions"] + [s for s in ctx.reg["fig3"] if s.cell != "w/o asymmetry"]
    specs = list({s.run_id: s for s in specs}.values())
    cells = by_cell(specs)
    ks = _sde_pool(ctx, specs) or [0]
    stats_ = [("blocked_pos", "blocked, Â > 0"), ("blocked_neg", "blocked, Â ≤ 0"), ("kl_exceeded", "KL_old > δ")]
    fig, axes = _subplots(len(cells), len(stats_), figsize=(10, 2.3 * len(cells)), squeeze=False, sharex=True)
    cmap = plt.get_cmap("viridis")
    for i, (cell, cs) in enumerate(cells.items()):
        for j, (stat, label) in enumerate(stats_):
            ax = axes[i, j]
            for n, k in enumerate(ks):
                x, Y = iter_curves(ctx, cs, f"per_step.{k}.{stat}")
                if Y.size:
                    plots.curve_band(ax, x, Y, label=f"step {k}", color=cmap(n / max(1, len(ks) - 1)), band=False)
            plots.style(ax, ylabel=cell if j == 0 else "", title=label if i == 0 else "",
                        xlabel="iteration" if i == len(cells) - 1 else "")
            plots.missing_note(ax, ctx.status(cs)[1])
    _legend(fig, axes)
    name = "logs_mask_fractions.png"
    _finish(fig, ctx, name, specs, "Mask fractions per SDE step over training (Flow-DPPO runs)")
    ctx.record(name, paper=["Eq. 18"], specs=specs, keys=[f"per_step.{{k}}.{s}" for s, _ in stats_], caption=(
        "Fraction of samples the asymmetric mask blocks with positive / non-positive advantage and the fraction "
        "whose KL_old exceeds δ, per trained SDE step index, per iteration (off-policy steps), smoothed, seed mean."))


def _grid_cols(df: pd.DataFrame, prefix: str) -> dict[float, str]:
    return {float(c.split("@")[1]): c for c in df.columns if c.startswith(prefix)}


def logs_eps_delta(ctx: Ctx) -> None:
    specs = ctx.reg["logs_eps_delta"]
    cells = by_cell(specs)
    fig, axes = _subplots(1, 3, figsize=(13, 3.8))
    shares = {}
    for cell, cs in cells.items():
        runs = [ctx.run(s) for s in cs if ctx.run(s) is not None]
        if not runs:
            continue
        color = plots.METHOD_COLORS.get(cell)
        D = runs[0].latent_dim
        clip, mask = _grid_cols(runs[0].iters, "cf/clip_fire@"), _grid_cols(runs[0].iters, "cf/mask_fire@")
        ce = sorted(clip)
        cy = [np.nanmean([np.nanmean(r.iters[clip[e]]) for r in runs]) for e in ce]
        de = sorted(mask)
        dy = [np.nanmean([np.nanmean(r.iters[mask[d]]) for r in runs]) for d in de]
        axes[0].plot(ce, cy, "-o", color=color, markersize=3, label=f"{cell}: clip at ε")
        axes[0].plot([experiments.matched_eps(d, D) for d in de], dy, "--s", color=color, markersize=3,
                     label=f"{cell}: mask at δ, x = √(2δ/D)")
        sign = np.nanmean([np.nanmean(r.iters["cf/sign_rule"]) for r in runs])
        axes[0].axhline(sign, color=color, linewidth=0.6, alpha=0.6)
        for e in ce:  # matched pairs: the grid δ nearest ε²D/2, within a factor 2
            target = e**2 * D / 2
            d = min(de, key=lambda z: abs(np.log(z / target)))
            if abs(np.log(d / target)) < np.log(2):
                x = np.concatenate([r.iters[clip[e]].to_numpy(float) for r in runs])
                y = np.concatenate([r.iters[mask[d]].to_numpy(float) for r in runs])
                axes[1].scatter(x, y, s=5, color=color, alpha=0.4)
        shares[cell] = {d: stats.t_interval([claims_mod.sign_rule_share(r, d) for r in runs]) for d in de}
    plots.style(axes[0], xlabel="ε, or the ε-equivalent √(2δ/D) of δ", ylabel="firing rate (counterfactual)",
                logx=True, title="clip at ε vs mask at δ (thin lines: sign rule Â(r−1)>0)")
    _axlegend(axes[0], fontsize=5)
    lim = [0, max(0.05, axes[1].get_xlim()[1], axes[1].get_ylim()[1])]
    axes[1].plot(lim, lim, "k:", linewidth=1)
    plots.style(axes[1], xlabel="clip_fire@ε (per iteration)", ylabel="mask_fire@δ, δ ≈ ε²D/2",
                title="matched pairs, every run and iteration")
    width = 0.8 / max(1, len(shares))
    deltas = sorted({d for v in shares.values() for d in v})
    for n, (cell, v) in enumerate(shares.items()):
        means = [v[d].mean * 100 if d in v else np.nan for d in deltas]
        err = [[(v[d].mean - v[d].lo) * 100 if d in v and v[d].n > 1 else 0 for d in deltas],
               [(v[d].hi - v[d].mean) * 100 if d in v and v[d].n > 1 else 0 for d in deltas]]
        axes[2].bar(np.arange(len(deltas)) + n * width, means, width, yerr=err, color=plots.METHOD_COLORS.get(cell),
                    label=cell, capsize=1.5)
    axes[2].set_xticks(np.arange(len(deltas)) + 0.4 - width / 2, [f"{d:g}" for d in deltas], fontsize=7)
    plots.style(axes[2], xlabel="δ (per dim)", ylabel="% of sign-matched samples masked",
                title="how much of the mask is the sign rule")
    _axlegend(axes[2], fontsize=6)
    plots.missing_note(axes[0], ctx.status(specs)[1])
    name = "logs_eps_delta.png"
    _finish(fig, ctx, name, specs, "ε–δ equivalence from the counterfactual firing rates (single reward)")
    ctx.record(name, paper=["§3.2", "claim C7"], specs=specs,
               keys=["cf/clip_fire@{eps}", "cf/mask_fire@{delta}", "cf/sign_rule"], caption=(
                   "Counterfactual rates logged on every run whatever its loss. Left: the clip's firing rate at ε and "
                   "the mask's at δ placed at its ε-equivalent √(2δ/D): if clipping at ε and masking at ε²D/2 select "
                   "alike, the curves meet. Middle: per-iteration pairs at grid points with δ within 2× of ε²D/2. "
                   "Right: mask_fire@δ / sign_rule pooled over iterations, seed mean ± 95 % t-interval."))


def c7_frontiers(ctx: Ctx) -> None:
    specs = ctx.reg["c7"]
    roles: dict[str, list[RunSpec]] = {}
    for s in specs:
        roles.setdefault(experiments.c7_role(s), []).append(s)
    colors = {"dppo_mid": "#377eb8", "clip_matched_mid": "#7f7f7f", "clip_paper_rel": "#000000",
              "dppo_published": "#4daf4a", "clip_matched_published": "#a6761d"}
    markers = {"dppo_mid": "o", "clip_matched_mid": "s", "clip_paper_rel": "^", "dppo_published": "o",
               "clip_matched_published": "s"}
    fig, axes = _subplots(1, 2, figsize=(10, 3.8))
    frontier_kl, frontier_div = {}, {}
    for role in experiments.C7_ROLES:
        cs = roles.get(role, [])
        label = cs[0].cell if cs else role
        present = [ctx.complete(s) for s in cs if ctx.complete(s) is not None]
        tifa = stats.t_interval([r.final_eval("tifa") for r in present])
        kl = stats.t_interval([float(stats.tail_mean(r.series("ref_kl_per_dim")[1], claims_mod.TAIL)[0]) * 1e3
                               for r in present])
        div = stats.t_interval([r.final_eval("diversity") for r in present])
        frontier_kl[label], frontier_div[label] = (kl, tifa), (div, tifa)
        colors[label], markers[label] = colors[role], markers[role]
    plots.points_with_ci(axes[0], frontier_kl, colors=colors, markers=markers)
    plots.style(axes[0], xlabel="KL to reference ×1e-3 per dim (last 10 %)", ylabel="final test tifa",
                title="reward vs KL to the reference")
    plots.points_with_ci(axes[1], frontier_div, colors=colors, markers=markers)
    plots.style(axes[1], xlabel="final test diversity", ylabel="final test tifa", title="reward vs diversity")
    _axlegend(axes[1], fontsize=6, loc="best")
    plots.missing_note(axes[0], ctx.status(specs)[1])
    name = "c7_frontiers.png"
    _finish(fig, ctx, name, specs, "C7 — KL criterion vs trust-region tightness (Flow-SDE, single reward)")
    ctx.record(name, paper=["claim C7"], specs=specs, keys=["eval[test].tifa", "eval[test].diversity",
                                                            "ref_kl_per_dim"], caption=(
        "Flow-DPPO at δ_mid and at the published δ = 1e-7 next to ratio clipping at the matched ε = √(2δ/D) and at "
        "the paper's relative tightness ε = 1e-4·√(65536/D); seed mean ± 95 % t-interval on both axes."))


# ---------------------------------------------------------------------------------------------------
# README and manifest
# ---------------------------------------------------------------------------------------------------
FIGURE_INDEX = [("Fig. 1", "fig01_qualitative.png"), ("Fig. 2", "fig02_07_09_single_reward.png"),
                ("Fig. 3", "fig03_delta_asymmetry.png"), ("Fig. 4", "fig04_08_multi_reward.png"),
                ("Fig. 5", "fig05_multi_epoch.png"), ("Fig. 6", "fig06_qualitative.png"),
                ("Fig. 7", "fig02_07_09_single_reward.png"), ("Fig. 8", "fig04_08_multi_reward.png"),
                ("Fig. 9", "fig02_07_09_single_reward.png"), ("Fig. 10", "fig10_cfg.png"),
                ("Fig. 11", "fig11_beta.png"), ("Fig. 12", "fig12_ref_kl.png"), ("Fig. 13", "fig13_beta_ref_kl.png"),
                ("Table 1", "table1_multi_reward.md"), ("Table 2", "table2_ref_kl.md"), ("Table 3", "table3_tifa.md"),
                ("Table 4", "table4_full.md"), ("App. D", "theory_ratio_noise.png"),
                ("Theorems 1–2", "theory_bound_tightness.png"), ("per-step ratio/KL", "logs_per_step_hist.png"),
                ("mask per SDE step", "logs_mask_fractions.png"), ("ε–δ equivalence", "logs_eps_delta.png"),
                ("C7", "c7_frontiers.png")]


def damage_report(runs: RunSet) -> list[str]:
    """README lines on damaged (skipped), torn and partial runs; empty when every log is whole."""
    out = []
    if runs.damaged:
        out += [f"**Damaged: {len(runs.damaged)} run(s) could not be read and are left out of every figure, table "
                "and claim** (counted as missing there):", ""]
        out += [f"- `{rid}`: {why}" for rid, why in runs.damaged.items()] + [""]
    torn = {r.run_id: r.torn for r in runs.runs.values() if r.torn}
    if torn:
        out += [f"**Torn logs: {len(torn)} run(s) had a torn last line, dropped** (a writer killed mid-write; the "
                "lines before it are intact). Lines dropped per file:", ""]
        out += [f"- `{rid}`: " + ", ".join(f"{f} {n}" for f, n in t.items()) for rid, t in torn.items()] + [""]
    partial = {r.run_id: r.partial_reason for r in runs.runs.values() if r.partial}
    if partial:
        out += [f"**Partial: {len(partial)} run(s)** are drawn on the curves (those figures are marked) but left out "
                "of the tables, end-of-training values and claims:", ""]
        out += [f"- `{rid}`: {why}" for rid, why in partial.items()] + [""]
    return out


def write_readme(ctx: Ctx, claim_list: list[claims_mod.Claim], commit: str, runs_root: str) -> None:
    lines = ["# paper_figures — generated by `python analysis/make_figures.py`; do not edit by hand", "",
             f"Runs: `{runs_root}` ({len(ctx.runs.runs)} found, {len(ctx.runs.missing)} of the registry's missing, "
             f"{len(ctx.runs.damaged)} damaged). Code commit: `{commit}`. Per-output runs, seeds and keys: "
             "`manifest.json`.", "",
             "**World of these runs: the FIRST embedded world** — prompt splits `embedded_v1` (train 256 / test 128 "
             "relation prompts, 3- and 4-digit layouts mixed) and the base `world_base_v1` (4000 pretraining steps), "
             "both pinned in `analysis/campaign/experiments.py`'s BASE. The default world has since changed (four-digit "
             "chains trained, an early-checkpoint base `world_base`; README, \"The embedded default world\"); the "
             "claims campaign re-runs every experiment on it and replaces these runs.", ""]
    if ctx.runs.missing:
        lines += [f"**Incomplete: {len(ctx.runs.missing)} registry runs are missing** (figures are drawn with what "
                  f"exists and marked). Missing: " + ", ".join(f"`{m}`" for m in ctx.runs.missing[:40]) +
                  (" …" if len(ctx.runs.missing) > 40 else ""), ""]
    lines += damage_report(ctx.runs)
    lines += ["**Archive.** These are the first world's runs (`paper_runs/`, 3 seeds × 30 iterations). Their "
              "\"claims\" below use the older 95 %-interval rule and no multiplicity control; the plan "
              "(docs/analysis_plan.md) gives them no verdict. The claims campaign (`../README.md`) replaces them.", ""]
    lines += ["## Metric mapping", "", METRIC_MAP_MD,
              "Figs 2, 7 and 9 (single reward on three models) are one experiment here, as are Figs 4 and 8 "
              "(multi reward): we have one model. Scale mapping of every knob: `analysis/campaign/experiments.py`.", "",
              "## Claims", "",
              "Verdict rule: the 95 % Student-t interval over seeds of a paired per-seed difference (same seed = "
              "same prompts, noise and evaluation seeds), oriented so the claim predicts > 0: **supported** if the "
              "interval excludes 0 on the claim's side, **not supported** if it excludes 0 on the other side, "
              "**inconclusive** otherwise or with < 2 seeds. A claim with several parts combines them as stated.", ""]
    for c in claim_list:
        lines += [f"### {c.key}: {c.statement} — **{c.verdict}**", "", f"Rule: {c.rule}.", "",
                  "| part | value [95 % CI] | n | verdict |", "|---|---|---|---|"]
        for p in c.parts:
            lines.append(f"| {p.label} | {p.value.fmt(p.scale)} | {p.value.n} | {p.verdict} |")
        lines += [""] + [f"- {n}" for n in c.notes] + [""]
    lines += ["## Outputs", "", "| paper | file | runs present / missing | caption |", "|---|---|---|---|"]
    for paper, f in FIGURE_INDEX:
        key = f.replace(".md", ".csv") if f.endswith(".md") else f
        o = ctx.outputs.get(key, {})
        lines.append(f"| {paper} | [{f}]({f}) | {len(o.get('runs', []))} / {len(o.get('missing', []))} | "
                     f"{o.get('caption', '').replace('|', '/')} |")
    (ctx.out / "README.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------
def _shown(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return Path(path).name


def make_all(runs_root: Path, out: Path, verbose: bool = True) -> Ctx:
    """The first world's figures, tables and claims (experiments.py's registry) from `runs_root` into `out`."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    reg = experiments.registry()
    ids = [r.run_id for r in experiments.all_runs(reg)]
    runs = load_runs(runs_root, ids)
    ctx = Ctx(runs=runs, reg=reg, out=out)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("Fig 1", lambda: qualitative(ctx, "fig1", "fig01_qualitative.png", ["Fig. 1"],
                                      [("test", 0), ("test", 1), ("test", 2)],
                                      "Fig. 1 — in-domain test prompts, base vs RL (single reward)")),
        ("Figs 2/7/9", lambda: curves_figure(ctx, "fig2", "fig02_07_09_single_reward.png", ["Fig. 2", "Fig. 7", "Fig. 9"],
                                             "Figs 2/7/9 — single reward (tifa)")),
        ("Fig 3", lambda: fig3(ctx)),
        ("Figs 4/8", lambda: curves_figure(ctx, "fig4", "fig04_08_multi_reward.png", ["Fig. 4", "Fig. 8"],
                                           "Figs 4/8 — multi reward, GDPO (tifa, agreement, realism, ink)")),
        ("Fig 5", lambda: fig5(ctx)),
        ("Fig 6", lambda: qualitative(ctx, "fig6", "fig06_qualitative.png", ["Fig. 6"],
                                      [("test", 0), ("test", 1), ("ood", 0), ("ood", 1)],
                                      "Fig. 6 — in-domain (test) and OOD prompts, fixed seeds (single reward)")),
        ("Fig 10", lambda: curves_figure(ctx, "fig10", "fig10_cfg.png", ["Fig. 10"],
                                         f"Fig. 10 — CFG {experiments.CFG_SCALE:g} during training (single reward)")),
        ("Fig 11", lambda: curves_figure(ctx, "fig11", "fig11_beta.png", ["Fig. 11"],
                                         "Fig. 11 — β ablation (multi reward, GDPO, Flow-DPPO + CPS)",
                                         training_rewards=True, x_kind="iteration")),
        ("Fig 12", lambda: fig12(ctx)), ("Fig 13", lambda: fig13(ctx)), ("Tables", lambda: tables(ctx)),
        ("ratio noise", lambda: theory_ratio_noise(ctx)), ("bounds", lambda: theory_bounds(ctx)),
        ("per-step", lambda: logs_per_step(ctx)), ("mask fractions", lambda: logs_mask_fractions(ctx)),
        ("ε–δ", lambda: logs_eps_delta(ctx)), ("C7", lambda: c7_frontiers(ctx)),
    ]
    for label, fn in steps:
        fn()
    claim_list = claims_mod.all_claims(runs, reg)
    commit, changes = git_commit(), uncommitted_changes()
    if changes:
        print(f"warning: {len(changes)} uncommitted file(s) under flowdppo/ and analysis/ ({', '.join(changes[:3])}…): "
              "the outputs do not trace to commit " + commit[:10] + "; commit first, then regenerate", file=sys.stderr)
    shown = _shown(runs_root)       # the repository: committed text names no machine path
    write_readme(ctx, claim_list, commit, shown)
    manifest = {"git_commit": commit, "uncommitted_changes": changes, "runs_root": shown, "registry_runs": len(ids),
                "runs_found": len(runs.runs), "missing": runs.missing, "damaged": runs.damaged,
                "torn_lines": {r.run_id: r.torn_lines for r in runs.runs.values() if r.torn_lines},
                "torn": {r.run_id: r.torn for r in runs.runs.values() if r.torn},
                "partial": {r.run_id: r.partial_reason for r in runs.runs.values() if r.partial},
                "outputs": ctx.outputs,
                "claims": {c.key: {"verdict": c.verdict, "parts": [{"label": p.label, "mean": p.value.mean,
                                                                    "lo": p.value.lo, "hi": p.value.hi, "n": p.value.n,
                                                                    "scale": p.scale, "verdict": p.verdict}
                                                                   for p in c.parts]} for c in claim_list}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=lambda x: None if x != x else x) + "\n")
    if verbose:
        print(f"{len(runs.runs)} of {len(ids)} registry runs found under {runs_root}")
        if runs.missing:
            print(f"MISSING {len(runs.missing)} runs: " + ", ".join(runs.missing))
        for rid, why in runs.damaged.items():
            print(f"DAMAGED (skipped) {rid}: {why}")
        for w in ctx.warnings:
            print("  incomplete:", w)
        for c in claim_list:
            print(f"  {c.key} (first world, old rule): {c.verdict}")
        print(f"wrote {len(ctx.outputs)} outputs + README.md + manifest.json to {out} in "
              f"{time.perf_counter() - t0:.1f} s")
    return ctx
