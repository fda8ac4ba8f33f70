"""The pinned evaluation regime and sample grids.

Evaluation uses the ODE sampler with `eval_num_steps`, `eval_guidance_scale` and per-sample seeds fixed by
(eval_seed, prompt position, sample index): the same noise at every evaluation, so grids over training show
the same seeds (the paper's qualitative figures) and metric changes are not sampling noise.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .nonfinite import check_evaluation
from .policy.base import cond_repeat
from .prompts import PromptItem
from .rollout import derive_seed, sample_ode

if TYPE_CHECKING:
    from .config import Config
    from .trainer import Components


def eval_generators(seed: int, n_prompts: int, per_prompt: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(seed, p, j)) for p in range(n_prompts) for j in range(per_prompt)]


def within_prompt_diversity(images: Tensor, per_prompt: int) -> float:
    """Mean pairwise RMS pixel distance among the samples of each prompt, averaged over prompts."""
    x = images.reshape(-1, per_prompt, images[0].numel()).double()
    d = torch.cdist(x, x) / x.shape[-1] ** 0.5
    iu = torch.triu_indices(per_prompt, per_prompt, 1)
    return float(d[:, iu[0], iu[1]].mean())


@torch.no_grad()
def evaluate_split(policy, comps: "Components", cfg: "Config", items: list[PromptItem],
                   where: str = "") -> tuple[dict, Tensor]:
    """Metrics and images ([N·S, C, H, W], prompt-major) for one split under the pinned regime.
    Non-finite samples raise DivergenceError (`where` names the evaluation) before any metric is computed."""
    per = cfg.eval_samples_per_prompt
    cond = cond_repeat(policy.encode_prompts([it.text for it in items]), per)
    from .trainer import sigma_grid
    latents = sample_ode(policy, cond, sigmas=sigma_grid(policy, cfg.eval_num_steps, cfg.shift),
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


def save_grid(images: Tensor, per_prompt: int, path: Path, max_prompts: int = 8, scale: int = 4) -> None:
    """PNG grid: one row per prompt, one column per seed (nearest-neighbour upscaled by `scale`)."""
    from PIL import Image
    n = min(images.shape[0] // per_prompt, max_prompts)
    imgs = images[: n * per_prompt].float().clamp(0, 1).cpu()
    c, h, w = imgs.shape[1:]
    pad = 1
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
