"""Checks and statistics of reward scores and images that every reward family shares (the generic rewards of
flowdppo.rewards and the embedded world's, flowdppo.world.rewards): a leaf module, so that neither package
imports the other for them."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def check_scores(name: str, scores: Tensor, batch: int) -> Tensor:
    """Validate a reward's output: shape [batch], all finite.  Raises ValueError naming the reward."""
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    if scores.shape[0] != batch:
        raise ValueError(f"reward {name!r} returned {scores.shape[0]} scores for {batch} images")
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        raise ValueError(f"reward {name!r} returned NaN/inf for {int(bad.sum())} of {batch} images "
                         f"(first at index {int(bad.nonzero()[0])}); fix the reward model or its inputs")
    return scores


def within_prompt_diversity(images: Tensor, group_size: int) -> float:
    """Mean pairwise RMS pixel distance between samples of the same prompt (consecutive groups of `group_size`),
    averaged over prompts: the `diversity` of every evaluation."""
    if group_size < 2 or images.shape[0] % group_size:
        raise ValueError(f"diversity needs group_size >= 2 dividing the batch ({images.shape[0]}), got {group_size}")
    x = images.float().cpu().flatten(1).reshape(-1, group_size, images[0].numel())   # [P, G, D]
    d = torch.cdist(x, x) / math.sqrt(x.shape[-1])                                    # RMS distances
    iu = torch.triu_indices(group_size, group_size, 1)
    return float(d[:, iu[0], iu[1]].mean())
