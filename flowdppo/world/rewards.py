"""Rewards and evaluation metrics of the embedded world (stand-ins for GenEval2 / CLIP / FID / HPS).

Every reward follows flowdppo.rewards.base.Reward: images [B, 1, 16, 16] in [0, 1] and their prompt
items in, a float32 tensor [B] out.  Each cell of the 2×2 canvas is one atom (a digit, or "nothing").

  tifa       in-domain reward, Soft-TIFA GM: exp(mean_atoms log P_cls(atom)), P_cls from the logistic-
             regression classifier.  In (0, 1].
  agreement  prompt–image agreement by the independent CNN judge: mean_atoms P_judge(atom).  In [0, 1].
             (the CLIP-score stand-in: different model, features and training split from tifa.)
  realism    per-image quality: −mean_cells d_k(cell) / d_real, d_k = mean distance to the k = 5
             nearest real cells in judge-feature space, d_real the same for held-out real cells, so a
             real canvas scores ≈ −1 and worse images score lower.  ≤ 0.
  ink        mean pixel intensity: a cheap, hackable preference (more ink = "better").  In [0, 1].

Set metrics (evaluate_images): accuracy (all 4 atoms correct under the tifa classifier), fid (Fréchet
distance between judge features of the generated cells that hold a digit — wherever they are — and
real "gen"-split digits: drawing quality, not layout; biased upward at small sample sizes, so compare
at equal sizes), diversity (mean pairwise RMS pixel distance between
samples of the same prompt).
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..prompts import PromptItem
from ..scores import check_scores, within_prompt_diversity
from .data import BLANK_CLASS, EMPTY, blank_cells, cells_of, digit_splits
from .judges import load_judges

REWARD_NAMES = ("tifa", "agreement", "realism", "ink")
# The rewards that score a prompt's digit layout (item.meta["layout"], as flowdppo.world.prompt_splits makes).
LAYOUT_REWARDS = ("tifa", "agreement")
KNN_K = 5


def target_classes(items: Sequence[PromptItem]) -> Tensor:
    """[B, 4] class index per cell (digit, or BLANK_CLASS for an empty cell) from item.meta["layout"]."""
    try:
        layouts = [it.meta["layout"] for it in items]
    except KeyError as e:
        raise KeyError("world rewards need items from flowdppo.world.prompt_splits (meta['layout'])") from e
    t = torch.tensor(layouts, dtype=torch.int64)
    return torch.where(t == EMPTY, torch.full_like(t, BLANK_CLASS), t)


def _atom_probs(model, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
    """[B, 4] probability the model gives each cell's required class."""
    cells = cells_of(images.float().cpu())                      # [B, 4, 8, 8]
    b = cells.shape[0]
    with torch.no_grad():
        probs = model(cells.reshape(b * 4, 8, 8)).softmax(-1).reshape(b, 4, -1)
    return probs.gather(-1, target_classes(items).unsqueeze(-1)).squeeze(-1)


@functools.lru_cache(maxsize=1)
def _real_feature_bank() -> tuple[Tensor, float, Tensor]:
    """(bank [N, 32] of gen-split digit + blank features, d_real scale, gen-split digit features)."""
    _, judge = load_judges()
    gen_images, _ = digit_splits()["gen"]
    blanks = blank_cells(60, torch.Generator().manual_seed(21))
    with torch.no_grad():
        digit_feats = judge.features(gen_images)
        bank = torch.cat([digit_feats, judge.features(blanks)])
        held, _ = digit_splits()["judge"]
        d_real = _knn_distance(judge.features(held), bank).median()
    return bank, float(d_real), digit_feats


def _knn_distance(queries: Tensor, bank: Tensor) -> Tensor:
    """[Q] mean Euclidean distance to the KNN_K nearest bank rows."""
    return torch.cdist(queries, bank).topk(KNN_K, dim=1, largest=False).values.mean(1)


class TifaReward:
    name = "tifa"

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        tifa, _ = load_judges()
        p = _atom_probs(tifa, images, items).clamp_min(1e-12)
        return check_scores(self.name, p.log().mean(1).exp(), len(items))


class AgreementReward:
    name = "agreement"

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        _, judge = load_judges()
        return check_scores(self.name, _atom_probs(judge, images, items).mean(1), len(items))


class RealismReward:
    name = "realism"

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        _, judge = load_judges()
        bank, d_real, _ = _real_feature_bank()
        cells = cells_of(images.float().cpu())
        with torch.no_grad():
            d = _knn_distance(judge.features(cells.reshape(-1, 8, 8)), bank).reshape(-1, 4)
        return check_scores(self.name, -(d / d_real).mean(1), len(items))


class InkReward:
    name = "ink"

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        return check_scores(self.name, images.float().cpu().flatten(1).mean(1), len(items))


_REWARDS = {"tifa": TifaReward, "agreement": AgreementReward, "realism": RealismReward, "ink": InkReward}


def make_reward(name: str):
    """A world reward by name: one of REWARD_NAMES."""
    if name not in _REWARDS:
        raise ValueError(f"unknown world reward {name!r}; choose one of {REWARD_NAMES}")
    return _REWARDS[name]()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussian fits of feature sets a [N, F] and b [M, F]."""
    from scipy import linalg

    if a.shape[0] < 2 or b.shape[0] < 2:
        return float("nan")                       # undefined (e.g. a policy that draws no digits)
    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    # a small ridge keeps the product well-conditioned (ReLU features have dead dimensions)
    ridge = 1e-6 * np.eye(a64.shape[1])
    ca, cb = np.cov(a64, rowvar=False) + ridge, np.cov(b64, rowvar=False) + ridge
    covmean = linalg.sqrtm(ca @ cb)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2.0 * covmean))


def _read_cells(images: Tensor) -> Tensor:
    """[B, 4] the class the reward classifier reads in each cell (argmax; BLANK_CLASS = empty)."""
    tifa, _ = load_judges()
    cells = cells_of(images.float().cpu())
    with torch.no_grad():
        return tifa(cells.reshape(-1, 8, 8)).argmax(-1).reshape(-1, 4)


def cell_correct(images: Tensor, items: Sequence[PromptItem]) -> Tensor:
    """[B, 4] bool: whether the reward classifier reads each cell as its required class (the atoms of
    `accuracy`: an image is right when all four are)."""
    return _read_cells(images) == target_classes(items)


def evaluate_images(images: Tensor, items: Sequence[PromptItem], group_size: int) -> dict[str, float]:
    """Eval metrics of a batch: items[i] is the prompt of images[i]; consecutive groups of `group_size`
    share a prompt.  Keys: tifa, accuracy, agreement, realism, ink, fid, diversity (fid is NaN when
    fewer than two generated cells hold a digit), and for batches mixing layout sizes tifa_3digit,
    accuracy_3digit, tifa_4digit, accuracy_4digit (the same means over 3- or 4-digit prompts only)."""
    if len(items) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(items)} items")
    tifa, judge = load_judges()
    p = _atom_probs(tifa, images, items)
    cells = cells_of(images.float().cpu())
    pred = _read_cells(images)
    target = target_classes(items)
    with torch.no_grad():
        # FID scores drawing quality, not layout: every cell that holds a digit (classifier says
        # non-blank), wherever it is, against real digits.
        gen_feats = judge.features(cells[pred != BLANK_CLASS])
    _, _, real_digit_feats = _real_feature_bank()
    tifa_each = p.clamp_min(1e-12).log().mean(1).exp()
    correct = (pred == target).all(1).float()
    out = {"tifa": float(tifa_each.mean()),
           "accuracy": float(correct.mean()),
           "agreement": float(AgreementReward()(images, items).mean()),
           "realism": float(RealismReward()(images, items).mean()),
           "ink": float(InkReward()(images, items).mean()),
           "fid": frechet_distance(gen_feats, real_digit_feats),
           "diversity": within_prompt_diversity(images, group_size)}
    # by layout size: 3-digit L shapes (one empty cell) and 4-digit layouts behave very differently
    n_digits = (target != BLANK_CLASS).sum(1)
    for k in (3, 4):
        sel = n_digits == k
        if sel.any() and not sel.all():
            out[f"tifa_{k}digit"] = float(tifa_each[sel].mean())
            out[f"accuracy_{k}digit"] = float(correct[sel].mean())
    return out
