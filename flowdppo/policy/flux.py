"""FLUX.1 (FluxPipeline) and FLUX.2-klein (Flux2KleinPipeline) as Policies.

Both keep latents in the transformer's own packed layout, latent_shape = (tokens, channels) with
tokens = (H/16)·(W/16) (2×2 latent patches); decode() unpacks exactly as the pipelines do.  The noise
of a rollout is i.i.d. N(0, I) in either layout, so packing is only a permutation of coordinates.

Timestep at the model boundary: the pipelines pass timestep/1000 = σ, and the transformers multiply by
1000 internally, so `timestep=σ` here.

FLUX.1: conditions "prompt_embeds" [B, L, 4096] (T5) and "pooled" [B, 768] (CLIP-L); position ids are
  zeros for text and (0, row, col) for image tokens.  FLUX.1-dev is guidance-distilled
  (transformer.config.guidance_embeds): velocity(guidance_scale=w) feeds w to the guidance embedding
  in a single forward (the pipeline's default is 3.5) and no "uncond_" entries are produced.  A FLUX.1
  transformer without a guidance embedding gets true CFG with "" as the negative prompt.
FLUX.2-klein: condition "prompt_embeds" [B, L, 3·d] — the Qwen3 hidden states of layers (9, 18, 27)
  stacked per token, as Flux2KleinPipeline builds them (chat template, padded to max_sequence_length).
  The base model uses true CFG with "" as the negative prompt; a step-distilled klein
  (model_index is_distilled=True) has no CFG and velocity(w ≠ 1) raises.  Latents are patchified 2×2
  and batch-normalised by the VAE's running statistics; decode() undoes both.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from .base import Cond
from .diffusers_policy import DiffusersPolicy

# Attention projections of the double-stream blocks (also matched in the single-stream blocks of FLUX.1).
FLUX_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                     "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
# FLUX.2: the same double-stream projections plus the single-stream fused QKV+MLP input and its output.
# A regex because "attn.to_out" names a ModuleList in the double blocks and a Linear in the single ones.
FLUX2_LORA_TARGETS = (r".*transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|"
                      r"add_v_proj|to_add_out)"
                      r"|.*single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)")


def _check_grid(grid: str) -> None:
    if grid not in ("pipeline", "official"):
        raise ValueError(f"grid={grid!r}; choose 'pipeline' or 'official' (config.sigma_grid)")


def _packed_side(resolution: int, vae_scale_factor: int) -> int:
    """Packed-token grid side: the latent side (a multiple of 2) halved, as the pipelines compute it."""
    return (2 * (resolution // (vae_scale_factor * 2))) // 2


class FluxPolicy(DiffusersPolicy):
    family = "flux"
    default_max_sequence_length = 512
    default_lora_targets = FLUX_LORA_TARGETS

    def __init__(self, pipe, **kwargs):
        super().__init__(pipe, **kwargs)
        cfg = self._core.config
        self.guidance_embedded = bool(cfg.guidance_embeds)
        self.true_cfg = not self.guidance_embedded
        self._side = _packed_side(self.resolution, pipe.vae_scale_factor)
        self.latent_shape = (self._side * self._side, int(cfg.in_channels))
        self._img_ids = pipe._prepare_latent_image_ids(1, self._side, self._side, self.device, torch.float32)
        self._txt_ids: dict[int, Tensor] = {}
        self._scaling = float(pipe.vae.config.scaling_factor)
        self._shift = float(pipe.vae.config.shift_factor or 0.0)

    def _check_resolution(self) -> None:
        grid = 2 * self.pipe.vae_scale_factor
        if self.resolution % grid:
            raise ValueError(f"resolution={self.resolution} must be a multiple of {grid} for FLUX "
                             "(VAE factor × 2×2 packing)")

    def _encode_texts(self, texts: list[str]) -> Cond:
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=texts, prompt_2=None, device=self.device,
                                                    num_images_per_prompt=1,
                                                    max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled": pooled}

    def _text_ids(self, length: int) -> Tensor:
        if length not in self._txt_ids:  # FLUX.1 text tokens all sit at position (0, 0, 0)
            self._txt_ids[length] = torch.zeros(length, 3, device=self.device)
        return self._txt_ids[length]

    def _transformer_call(self, module: nn.Module, x: Tensor, sigma: Tensor, cond: Cond,
                          guidance: Optional[Tensor]) -> Tensor:
        embeds = cond["prompt_embeds"]
        return module(hidden_states=x.to(self.compute_dtype), timestep=sigma, guidance=guidance,
                      pooled_projections=cond["pooled"], encoder_hidden_states=embeds,
                      txt_ids=self._text_ids(embeds.shape[1]), img_ids=self._img_ids, return_dict=False)[0]

    def _decode_to_pixels(self, x: Tensor) -> Tensor:
        vae = self.pipe.vae
        z = self.pipe._unpack_latents(x, self.resolution, self.resolution, self.pipe.vae_scale_factor)
        z = (z / self._scaling + self._shift).to(vae.dtype)
        return vae.decode(z, return_dict=False)[0]

    def sigma_schedule(self, num_steps: int, grid: str = "pipeline") -> Tensor:
        """FluxPipeline's grid: linspace(1, 1/K, K) time-shifted by μ(image tokens), then 0.  It already has
        the official form (config.sigma_grid), so both grids are this one."""
        _check_grid(grid)
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift
        sched = self._fresh_scheduler()
        c = sched.config
        mu = calculate_shift(self.latent_shape[0], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        sched.set_timesteps(num_steps, device="cpu", sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps), mu=mu)
        return sched.sigmas.to(torch.float64)


class Flux2KleinPolicy(DiffusersPolicy):
    family = "flux2_klein"
    guidance_embedded = False   # the klein pipeline passes guidance=None
    default_max_sequence_length = 512
    default_lora_targets = FLUX2_LORA_TARGETS
    text_encoder_out_layers: tuple[int, ...] = (9, 18, 27)

    def __init__(self, pipe, **kwargs):
        super().__init__(pipe, **kwargs)
        self.true_cfg = not bool(pipe.config.get("is_distilled", False))
        self._side = _packed_side(self.resolution, pipe.vae_scale_factor)
        self.latent_shape = (self._side * self._side, int(self._core.config.in_channels))
        probe = torch.zeros(1, 1, self._side, self._side)
        self._img_ids = pipe._prepare_latent_ids(probe).to(self.device)   # [1, tokens, 4]
        self._txt_ids: dict[int, Tensor] = {}
        bn = pipe.vae.bn
        self._bn_mean = bn.running_mean.detach().float().view(1, -1, 1, 1)
        self._bn_std = torch.sqrt(bn.running_var.detach().float().view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)

    def _check_resolution(self) -> None:
        grid = 2 * self.pipe.vae_scale_factor
        if self.resolution % grid:
            raise ValueError(f"resolution={self.resolution} must be a multiple of {grid} for FLUX.2 "
                             "(VAE factor × 2×2 patchify)")

    def _encode_texts(self, texts: list[str]) -> Cond:
        embeds, _ = self.pipe.encode_prompt(prompt=texts, device=self.device, num_images_per_prompt=1,
                                            max_sequence_length=self.max_sequence_length,
                                            text_encoder_out_layers=self.text_encoder_out_layers)
        return {"prompt_embeds": embeds}

    def _text_ids(self, length: int) -> Tensor:
        if length not in self._txt_ids:
            self._txt_ids[length] = self.pipe._prepare_text_ids(torch.zeros(1, length, 1)).to(self.device)
        return self._txt_ids[length]

    def _transformer_call(self, module: nn.Module, x: Tensor, sigma: Tensor, cond: Cond,
                          guidance: Optional[Tensor]) -> Tensor:
        embeds = cond["prompt_embeds"]
        out = module(hidden_states=x.to(self.compute_dtype), timestep=sigma, guidance=None,
                     encoder_hidden_states=embeds, txt_ids=self._text_ids(embeds.shape[1]),
                     img_ids=self._img_ids, return_dict=False)[0]
        return out[:, : x.shape[1]]

    def _decode_to_pixels(self, x: Tensor) -> Tensor:
        vae, pipe = self.pipe.vae, self.pipe
        ids = self._img_ids.expand(x.shape[0], -1, -1)
        z = pipe._unpack_latents_with_ids(x.float(), ids, self._side, self._side)    # [b, 4C, h/2, w/2]
        z = z * self._bn_std.to(z.device) + self._bn_mean.to(z.device)
        z = pipe._unpatchify_latents(z).to(vae.dtype)                                 # [b, C, h, w]
        return vae.decode(z, return_dict=False)[0]

    def sigma_schedule(self, num_steps: int, grid: str = "pipeline") -> Tensor:
        """Flux2KleinPipeline's grid: linspace(1, 1/K, K) shifted by its empirical μ(tokens, K), then 0.  It
        already has the official form (config.sigma_grid), so both grids are this one."""
        _check_grid(grid)
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
        sched = self._fresh_scheduler()
        mu = compute_empirical_mu(image_seq_len=self.latent_shape[0], num_steps=num_steps)
        sched.set_timesteps(num_steps, device="cpu", sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps), mu=mu)
        return sched.sigmas.to(torch.float64)
