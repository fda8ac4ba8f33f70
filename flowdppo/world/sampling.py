"""A plain ODE sampler for measurements (no log-probs); transition math comes from flowdppo.sde."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import sde
from ..policy.base import cond_repeat
from ..prompts import PromptItem


@torch.no_grad()
def sample_images(policy, items: Sequence[PromptItem], *, group_size: int = 1, num_steps: int = 10,
                  guidance_scale: float = 1.0, shift: float = 1.0, seed: int = 0) -> Tensor:
    """Images [P·G, C, H, W] in [0, 1]; rows i·G … i·G+G−1 belong to items[i]."""
    cond = cond_repeat(policy.encode_prompts([it.text for it in items]), group_size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(items) * group_size, *policy.latent_shape, generator=g).to(policy.device)
    sigmas = sde.shifted_sigmas(num_steps, shift)
    for k in range(num_steps):
        s, s_next = float(sigmas[k]), float(sigmas[k + 1])
        v = policy.velocity(x, s, cond, guidance_scale=guidance_scale)
        x = sde.step("ode", x=x, v=v, sigma=s, sigma_next=s_next, eta=0.0).x_next
    return policy.decode(x)


def expand_items(items: Sequence[PromptItem], group_size: int) -> list[PromptItem]:
    """Repeat each item group_size times consecutively (matches sample_images' row order)."""
    return [it for it in items for _ in range(group_size)]
