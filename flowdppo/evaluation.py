"""The pinned evaluation regime and sample grids.

Evaluation uses the ODE sampler with `eval_num_steps`, `eval_guidance_scale` and per-sample seeds fixed by
(eval_seed, prompt position, sample index): the same noise at every evaluation, so grids over training show
the same seeds (the paper's qualitative figures) and metric changes are not sampling noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from . import dist
from .nonfinite import check_evaluation
from .policy.base import cond_repeat
from .prompts import PromptItem
from .scores import within_prompt_diversity
from .assembly import sigma_grid
from .rollout import derive_seed, sample_ode

if TYPE_CHECKING:
    from .assembly import Components
    from .config import Config


def eval_generators(seed: int, n_prompts: int, per_prompt: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(seed, p, j)) for p in range(n_prompts) for j in range(per_prompt)]


EVAL_SPLITS = ("test", "ood", "transfer")
"""The splits an evaluation covers, in this order, where the prompt set has them: "test" (held-out in-domain),
"ood" and "transfer" (never-trained probes of the embedded world)."""


@torch.no_grad()
def evaluate_split(policy, comps: "Components", cfg: "Config", items: list[PromptItem],
                   where: str = "", per: Optional[int] = None) -> tuple[dict, Tensor]:
    """Metrics and images ([N·S, C, H, W], prompt-major) for one split under the pinned regime, S = `per`
    samples per prompt (default cfg.eval_samples_per_prompt).
    Non-finite samples raise DivergenceError (`where` names the evaluation) before any metric is computed."""
    per = per or cfg.eval_samples_per_prompt
    cond = cond_repeat(policy.encode_prompts([it.text for it in items]), per)
    latents = sample_ode(policy, cond, sigmas=sigma_grid(policy, cfg.eval_num_steps, cfg.shift, cfg.sigma_grid),
                         guidance_scale=cfg.eval_guidance_scale,
                         generators=eval_generators(cfg.eval_seed, len(items), per))
    check_evaluation(cfg, latents, where=where or f"{len(items)} prompts")
    images = policy.decode(latents).float().clamp(0, 1)
    rep_items = [it for it in items for _ in range(per)]
    if comps.evaluate_images is not None:
        metrics = dict(comps.evaluate_images(images, rep_items, per))
    else:
        metrics = {f"{name}": float(fn(images, rep_items).float().mean()) for name, fn in comps.rewards.items()}
        metrics["diversity"] = within_prompt_diversity(images, per)
    metrics["n_images"] = int(images.shape[0])
    return metrics, images


def evaluate(policy, comps: "Components", cfg: "Config", iteration: int, run_dir: Path,
             eval_log, *, write: bool = True) -> dict[str, dict[str, float]]:
    """The pinned regime: ODE, eval_num_steps, eval_guidance_scale, fixed per-sample seeds.
    write=False: compute only (FSDP ranks other than 0 take part in the sharded forwards)."""
    roots = [m for m in policy.fsdp_roots() if m is not None] if hasattr(policy, "fsdp_roots") else []
    results = {}
    for split in EVAL_SPLITS:
        items = cfg.eval_items(comps.splits.get(split, []))
        if not items:
            continue
        per, n_grid = cfg.eval_samples(split), 8
        with dist.gathered_for_inference(roots, cfg.fsdp_gather_inference):
            metrics, images = evaluate_split(policy, comps, cfg, items, where=f"iteration {iteration}, {split} split",
                                             per=per)
        if write:
            eval_log.append({"iteration": iteration, "split": split, **metrics})
            grid_images = images[: n_grid * per]
            marks = comps.cell_marks(grid_images, [it for it in items[:n_grid] for _ in range(per)]) \
                if comps.cell_marks is not None else None
            save_grid(images, per, run_dir / "samples" / f"{split}_iter{iteration:05d}.png", max_prompts=n_grid,
                      texts=[it.text for it in items[:n_grid]], marks=marks)
            if cfg.sample_figures:
                save_before_after(run_dir / "samples", split, iteration, comps.cell_boxes)
        results[split] = metrics
    return results


GRID_PAD = 1      # pixels of white between grid images (before upscaling)


def save_grid(images: Tensor, per_prompt: int, path: Path, max_prompts: int = 8, scale: int = 4, *,
              texts: Optional[Sequence[str]] = None, marks: Optional[Tensor] = None) -> None:
    """PNG grid: one row per prompt, one column per seed (nearest-neighbour upscaled by `scale`).

    texts (one per prompt row) and marks ([N·S, n_cells] bool, per-cell right/wrong of each image) are
    written next to the PNG as `<path>.json`, so `annotated_grid` can later redraw the grid with them."""
    from PIL import Image
    n = min(images.shape[0] // per_prompt, max_prompts)
    imgs = images[: n * per_prompt].float().clamp(0, 1).cpu()
    c, h, w = imgs.shape[1:]
    pad = GRID_PAD
    grid = torch.ones(c, n * (h + pad) + pad, per_prompt * (w + pad) + pad)
    for i in range(n):
        for j in range(per_prompt):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y:y + h, x:x + w] = imgs[i * per_prompt + j]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if c == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    tmp.replace(path)
    if texts is not None or marks is not None:
        side = {"prompts": n, "per_prompt": per_prompt, "image_shape": [c, h, w], "scale": scale,
                "texts": list(texts[:n]) if texts is not None else None,
                "marks": marks[: n * per_prompt].bool().tolist() if marks is not None else None}
        from .runlog import atomic_write_json
        atomic_write_json(path.with_suffix(".json"), side)


def read_grid(path: Path) -> tuple[Tensor, dict]:
    """The inverse of `save_grid` for a grid saved with its `.json` sidecar: (images [N·S, C, H, W] in
    [0, 1], quantised to 8 bits; the sidecar dict)."""
    import json

    from PIL import Image
    side = json.loads(path.with_suffix(".json").read_text())
    c, h, w = side["image_shape"]
    arr = np.asarray(Image.open(path), dtype=np.float32)[:: side["scale"], :: side["scale"]] / 255.0
    arr = arr.reshape(arr.shape[0], arr.shape[1], -1)                       # [Hg, Wg, C]
    out = torch.empty(side["prompts"] * side["per_prompt"], c, h, w)
    for i in range(side["prompts"]):
        for j in range(side["per_prompt"]):
            y, x = GRID_PAD + i * (h + GRID_PAD), GRID_PAD + j * (w + GRID_PAD)
            out[i * side["per_prompt"] + j] = torch.from_numpy(arr[y:y + h, x:x + w]).permute(2, 0, 1)
    return out, side


@dataclass
class GridLayout:
    """Where `annotated_grid` puts everything, in mosaic pixel coordinates (x right, y down)."""
    mosaic: np.ndarray                               # [H, W, 3] float in [0, 1], white between images
    origins: list[list[list[tuple[int, int]]]]       # [prompt][block][sample] → (x, y) of the image's top left
    boxes: list[tuple[float, float, float, float, bool]]   # (x, y, width, height, right) of each marked cell
    right: list[list[Optional[int]]]                 # [prompt][block] → samples with every cell right (None: no marks)
    block_x: list[int]                               # x where each column block starts


def grid_layout(columns: Sequence[tuple[str, Tensor, Optional[list]]], n_prompts: int, per_prompt: int,
                cell_boxes: Optional[Sequence[tuple[int, int, int, int]]], inset: float = 0.35) -> GridLayout:
    """One mosaic of every image of `annotated_grid` (rows = prompts; blocks of `per_prompt` samples, one block
    per column), and the outline of every marked cell, inset so neighbouring cells' outlines stay apart."""
    c, h, w = columns[0][1].shape[1:]
    pad, gap_x, gap_y = max(1, w // 8), max(2, w // 3), max(2, int(0.3 * h))
    block_w = per_prompt * (w + pad) - pad
    block_x = [b * (block_w + gap_x) for b in range(len(columns))]
    mosaic = np.ones((n_prompts * (h + gap_y) - gap_y, block_x[-1] + block_w, 3), dtype=np.float32)
    origins, boxes, right = [], [], []
    for i in range(n_prompts):
        y = i * (h + gap_y)
        origins.append([]); right.append([])
        for b, (_, images, marks) in enumerate(columns):
            origins[i].append([]); n_right = 0
            for j in range(per_prompt):
                k, x = i * per_prompt + j, block_x[b] + j * (w + pad)
                img = images[k].float().clamp(0, 1).cpu().permute(1, 2, 0).numpy()
                mosaic[y:y + h, x:x + w] = img if c == 3 else img[:, :, :1]
                origins[i][b].append((x, y))
                if marks is not None and cell_boxes is not None:
                    n_right += all(marks[k])
                    for ok, (y0, y1, x0, x1) in zip(marks[k], cell_boxes):
                        boxes.append((x + x0 - 0.5 + inset, y + y0 - 0.5 + inset, x1 - x0 - 2 * inset,
                                      y1 - y0 - 2 * inset, bool(ok)))
            right[i].append(n_right if marks is not None and cell_boxes is not None else None)
    return GridLayout(mosaic, origins, boxes, right, block_x)


def annotated_grid(columns: Sequence[tuple[str, Tensor, Optional[list]]], texts: Sequence[str], per_prompt: int,
                   cell_boxes: Optional[Sequence[tuple[int, int, int, int]]], path: Path) -> None:
    """A figure a person can read: one row per prompt with its text on the left, then for each column
    block (title, images [N·S, C, H, W], marks [N·S][n_cells] or None) the S samples of that prompt, each
    cell outlined green (right) or red (wrong), and the count of fully right samples under the block.
    Drawn as one image with one collection of outlines (grid_layout), not one axes per sample."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    lay = grid_layout(columns, len(texts), per_prompt, cell_boxes)
    mh, mw = lay.mosaic.shape[:2]
    h, w = columns[0][1].shape[2:]
    px = 0.95 / w                                    # inches per mosaic pixel: each sample ≈ 0.95 in wide
    text_in, top_in, bottom_in = 2.5, 0.55, 0.22
    fig_w, fig_h = text_in + mw * px + 0.1, top_in + mh * px + bottom_in
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((text_in / fig_w, bottom_in / fig_h, mw * px / fig_w, mh * px / fig_h))
    ax.imshow(lay.mosaic, interpolation="nearest", extent=(-0.5, mw - 0.5, mh - 0.5, -0.5))
    ax.set_xlim(-0.5, mw - 0.5); ax.set_ylim(mh - 0.5, -0.5)
    ax.axis("off")
    if lay.boxes:
        ax.add_collection(PatchCollection([Rectangle((x, y), bw, bh) for x, y, bw, bh, _ in lay.boxes],
                                          facecolor="none", linewidth=1.3,
                                          edgecolor=["#1a9850" if ok else "#d73027" for *_, ok in lay.boxes]))
    for i, text in enumerate(texts):
        y = lay.origins[i][0][0][1]
        ax.text(-0.12 * w, y + h / 2, "\n".join(textwrap.wrap(text, 30)), ha="right", va="center", fontsize=7,
                clip_on=False)
        for b in range(len(columns)):
            if lay.right[i][b] is not None:
                ax.text(lay.block_x[b], y + h + 0.05 * h, f"{lay.right[i][b]}/{per_prompt} right", ha="left",
                        va="top", fontsize=7, clip_on=False)
    for b, (title, _, _) in enumerate(columns):
        ax.text(lay.block_x[b], -0.08 * h, title, ha="left", va="bottom", fontsize=8, clip_on=False)
    fig.suptitle("green = cell right, red = cell wrong (reward classifier)", fontsize=8, y=1 - 0.12 / fig_h,
                 va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


BEFORE_AFTER_SEEDS = 4   # samples per prompt shown in each half of the before/after figure


def save_before_after(samples_dir: Path, split: str, iteration: int,
                      cell_boxes: Optional[Sequence[tuple[int, int, int, int]]]) -> Optional[Path]:
    """`<samples_dir>/before_after_<split>.png`: the first evaluation's grid of this run next to the one of
    `iteration` (same prompts, same seeds), each prompt's text beside its row and each cell marked right or
    wrong.  Redrawn at every evaluation from the saved grids; None when there is nothing to compare yet."""
    grids = sorted(samples_dir.glob(f"{split}_iter*.json"))
    last = samples_dir / f"{split}_iter{iteration:05d}.png"
    if not grids or not last.with_suffix(".json").exists():
        return None
    first = grids[0].with_suffix(".png")
    (before, side0), (after, side1) = read_grid(first), read_grid(last)
    if side0["texts"] is None or side0["texts"] != side1["texts"]:
        return None
    s = min(BEFORE_AFTER_SEEDS, side0["per_prompt"])
    keep = [i * side0["per_prompt"] + j for i in range(side0["prompts"]) for j in range(s)]
    pick = (lambda m: [m[k] for k in keep] if m is not None else None)
    it0 = int(first.stem.rsplit("iter", 1)[1])
    out = samples_dir / f"before_after_{split}.png"
    annotated_grid([(f"iteration {it0}", before[keep], pick(side0["marks"])),
                    (f"iteration {iteration}", after[keep], pick(side1["marks"]))],
                   side0["texts"], s, cell_boxes, out)
    return out
