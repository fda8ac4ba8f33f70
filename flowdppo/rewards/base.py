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


class ChunkScorer:
    """Reward scoring overlapped with generation (config.overlap_rewards): `submit(rows, latents)` — the
    rollout's callback after each chunk — decodes that chunk's final latents and hands them to ONE background
    thread that scores them while the next chunk is generated; `collect()` waits and returns (images [B, …],
    rewards [B, K]) in row order, as `score` on the whole batch would give them.

    Valid for rewards that score each image on its own (every reward here does: the protocol's one float per
    image); a reward that normalises over its batch would see chunks instead.  Gains most when scoring does not
    compete for the generator's device, e.g. the HTTP `remote` reward.  An exception in a chunk's scoring is
    raised by `collect()`."""

    def __init__(self, rewards: dict[str, Reward], items: list[PromptItem], decode):
        from concurrent.futures import ThreadPoolExecutor
        self.rewards, self.items, self.decode = rewards, items, decode
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
        self._parts: list[tuple[list[int], Tensor, object]] = []

    def submit(self, rows: list[int], latents: Tensor) -> None:
        with torch.no_grad():
            images = self.decode(latents)
        chunk_items = [self.items[r] for r in rows]
        self._parts.append((list(rows), images, self._pool.submit(self._score, images, chunk_items)))

    def _score(self, images: Tensor, items: list[PromptItem]) -> Tensor:
        with torch.no_grad():
            return score(self.rewards, images, items)

    def collect(self) -> tuple[Tensor, Tensor]:
        try:
            n = len(self.items)
            first_rows, first_images, _ = self._parts[0]
            images = torch.empty(n, *first_images.shape[1:], dtype=first_images.dtype, device=first_images.device)
            rewards = torch.empty(n, len(self.rewards))
            for rows, imgs, fut in self._parts:
                idx = torch.as_tensor(rows, dtype=torch.long)
                images[idx.to(images.device)] = imgs
                rewards[idx] = fut.result().to(rewards.dtype).cpu()
            return images, rewards
        finally:
            self._pool.shutdown(wait=True)
