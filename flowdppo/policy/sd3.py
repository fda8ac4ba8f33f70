"""Stable Diffusion 3 / 3.5 (StableDiffusion3Pipeline) as a Policy.

Layout (as in the pipeline): latents [B, C=16, H/8, W/8]; the SD3 transformer patchifies internally.
Conditions: "prompt_embeds" [B, 77 + max_sequence_length, 4096] (CLIP-L ‖ CLIP-G padded to the T5 width,
then T5 along the sequence) and "pooled" [B, 2048] (pooled CLIP-L ‖ CLIP-G), both from the pipeline's
own `encode_prompt`.  Timestep at the model boundary: t = 1000·σ (the scheduler's timesteps).
Decoding: x / scaling_factor + shift_factor → VAE.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from .base import Cond
from .diffusers_policy import DiffusersPolicy

# The attention projections of the joint blocks (flow_grpo's and UniRL's SD3 LoRA targets).
SD3_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


class SD3Policy(DiffusersPolicy):
    family = "sd3"
    true_cfg = True
    guidance_embedded = False
    default_max_sequence_length = 256
    default_lora_targets = SD3_LORA_TARGETS

    def __init__(self, pipe, **kwargs):
        super().__init__(pipe, **kwargs)
        cfg = self._core.config
        self._vae_scale = pipe.vae_scale_factor
        side = self.resolution // self._vae_scale
        self.latent_shape = (int(cfg.in_channels), side, side)
        self._scaling = float(pipe.vae.config.scaling_factor)
        self._shift = float(pipe.vae.config.shift_factor or 0.0)

    def _check_resolution(self) -> None:
        grid = self.pipe.vae_scale_factor * int(self._core.config.patch_size)
        if self.resolution % grid:
            raise ValueError(f"resolution={self.resolution} must be a multiple of {grid} for this SD3 model "
                             "(VAE factor × patch size)")

    def _encode_texts(self, texts: list[str]) -> Cond:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=texts, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled": pooled}

    def _transformer_call(self, module: nn.Module, x: Tensor, sigma: Tensor, cond: Cond,
                          guidance: Optional[Tensor]) -> Tensor:
        return module(hidden_states=x.to(self.compute_dtype), timestep=1000.0 * sigma,
                      encoder_hidden_states=cond["prompt_embeds"], pooled_projections=cond["pooled"],
                      return_dict=False)[0]

    def _decode_to_pixels(self, x: Tensor) -> Tensor:
        vae = self.pipe.vae
        z = x.to(vae.dtype) / self._scaling + self._shift
        return vae.decode(z, return_dict=False)[0]

    def sigma_schedule(self, num_steps: int, grid: str = "pipeline") -> Tensor:
        """grid="pipeline": the scheduler's own set_timesteps(K) — timesteps spaced from σ_max = 1 down to its
        already shifted σ_min, then shifted (SD3.5, shift 3, K = 10: 1, .9601, …, .2780, .0089), then 0.
        grid="official": the scheduler's static shift applied to linspace(1, 1/K, K), then 0 (K = 10: 1,
        .9643, …, .4286, .25, 0), the grid of the published Flow-DPPO code (config.sigma_grid)."""
        sched = self._fresh_scheduler()
        if sched.config.get("use_dynamic_shifting", False):
            raise ValueError("this SD3 scheduler uses dynamic shifting; sigma_schedule supports the static "
                             "shift of the SD3/SD3.5 releases only")
        if grid == "pipeline":
            sched.set_timesteps(num_steps, device="cpu")
        elif grid == "official":
            sched.set_timesteps(num_steps, device="cpu", sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps))
        else:
            raise ValueError(f"grid={grid!r}; choose 'pipeline' or 'official' (config.sigma_grid)")
        return sched.sigmas.to(torch.float64)
