"""The reward protocol: images and their prompts in, one finite float per image out.

    reward(images [B, C, H, W] in [0, 1], items: Sequence[PromptItem]) -> Tensor [B] (float32, CPU ok)

`items` carry the prompt text and its structured atoms (GenEval2-style), so compositional rewards can
score each atom.  A NaN/inf score is an error (`check_scores`), never a silent zero.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..prompts import PromptItem
from ..scores import check_scores  # noqa: F401  (re-exported: flowdppo.rewards.check_scores)


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor: ...


def score(rewards: dict[str, Reward], images: Tensor, items: list[PromptItem]) -> Tensor:
    """[B, K] finite rewards (NaN/inf raise, naming the reward)."""
    cols = [check_scores(name, fn(images, items), len(items)) for name, fn in rewards.items()]
    return torch.stack(cols, dim=1)
