"""A toy policy, prompts and reward for fast trainer tests (no world, no diffusers).

Velocity: a small MLP of (x, σ, prompt embedding) on a 1×4×4 latent; reference = a frozen copy of the
initial weights.  Reward: closeness of the image mean to a per-prompt target brightness."""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from flowdppo.policy.base import cfg_combine, split_cond
from flowdppo.prompts import PromptItem
from flowdppo.assembly import Components


class ToyNet(nn.Module):
    def __init__(self, n_prompts: int = 16, dim: int = 16, hidden: int = 64):
        super().__init__()
        self.emb = nn.Embedding(n_prompts + 1, 8)  # last row = unconditional
        self.net = nn.Sequential(nn.Linear(dim + 1 + 8, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, sigma, ids):
        h = torch.cat([x.flatten(1), sigma[:, None], self.emb(ids)], 1)
        return self.net(h).view_as(x)


class ToyPolicy:
    latent_shape = (1, 4, 4)

    def __init__(self, seed: int = 0, n_prompts: int = 16):
        torch.manual_seed(seed)
        self.net = ToyNet(n_prompts)
        self.ref = copy.deepcopy(self.net).requires_grad_(False)
        self.n_prompts = n_prompts
        self._use_ref = False

    def encode_prompts(self, prompts):
        ids = torch.tensor([int(p.split()[-1]) for p in prompts])
        return {"ids": ids, "uncond_ids": torch.full_like(ids, self.n_prompts)}

    def velocity(self, x, sigma, cond, *, guidance_scale=1.0):
        net = self.ref if self._use_ref else self.net
        pos, neg = split_cond(cond)
        v = net(x, sigma, pos["ids"])
        if guidance_scale != 1.0:
            v = cfg_combine(net(x, sigma, neg["ids"]), v, guidance_scale)
        return v

    def decode(self, x):
        return (x.clamp(-1, 1) + 1) / 2

    def trainable_parameters(self):
        return list(self.net.parameters())

    @contextlib.contextmanager
    def reference(self):
        self._use_ref = True
        try:
            yield
        finally:
            self._use_ref = False

    def trainable_state_dict(self):
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state_dict(self, state):
        self.net.load_state_dict(state)


class BrightnessReward:
    name = "brightness"

    def __call__(self, images, items):
        target = torch.tensor([it.meta["target"] for it in items])
        return -(images.flatten(1).mean(1) - target).abs()


def toy_components(seed: int = 0) -> Components:
    items = [PromptItem(text=f"prompt {i}", atoms=(f"b{i}",), meta={"target": (i % 8) / 8 + 0.06}) for i in range(16)]
    return Components(policy=ToyPolicy(seed), splits={"train": items[:12], "test": items[12:], "ood": items[12:]},
                      rewards={"brightness": BrightnessReward()}, log_rewards={"brightness": BrightnessReward()})
