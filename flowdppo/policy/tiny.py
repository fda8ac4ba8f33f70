"""TinyFlowPolicy: a tiny SD3Transformer2DModel in pixel space — the embedded world's policy.

It drives the same model class and call as SD3.5 (hidden_states, encoder_hidden_states = token states,
pooled_projections, timestep = 1000·σ), so everything the trainer does here is what it does to SD3.5,
minus the VAE: latents are pixels scaled to [-1, 1] and `decode` maps them back to [0, 1].

Reference policy π_ref (for KL-to-reference and forgetting metrics):
  * full fine-tuning: a frozen deep copy of the base transformer, swapped in by `reference()`;
  * LoRA (lora_rank > 0): the same transformer with its adapters disabled inside `reference()`.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .base import Cond, cfg_combine, sigma_batch, split_cond, swapped_modules

# The world's transformer: 16×16×1 pixels, patch 4 → 16 image tokens; 24 MiniLM token states.
TINY_CONFIG: dict[str, Any] = dict(
    sample_size=16, patch_size=4, in_channels=1, out_channels=1, num_layers=4, attention_head_dim=16,
    num_attention_heads=4, joint_attention_dim=384, caption_projection_dim=64, pooled_projection_dim=384,
    pos_embed_max_size=4,
)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def build_transformer(config: Optional[dict[str, Any]] = None) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**(config or TINY_CONFIG))


class TinyFlowPolicy:
    """Implements flowdppo.policy.base.Policy.

    transformer:  an SD3Transformer2DModel (its weights = the base unless later fine-tuned).
    encode_text:  texts → (token states [B, L, Dt], pooled [B, Dp]); cached by the caller's encoder.
    lora_rank:    0 = full fine-tuning (all transformer weights trainable), > 0 = LoRA adapters via peft.
    """

    def __init__(self, transformer: nn.Module, encode_text: Callable[[Sequence[str]], tuple[Tensor, Tensor]],
                 *, lora_rank: int = 0, lora_alpha: Optional[float] = None):
        if lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {lora_rank}")
        self.transformer = transformer.eval()
        self.encode_text = encode_text
        self.lora_rank = lora_rank
        cfg = transformer.config
        self.latent_shape: tuple[int, ...] = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if lora_rank > 0:
            from peft import LoraConfig

            transformer.requires_grad_(False)
            transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank,
                                               init_lora_weights="gaussian", target_modules=LORA_TARGETS))
            self._reference: Optional[nn.Module] = None
        else:
            transformer.requires_grad_(True)
            self._reference = copy.deepcopy(transformer).requires_grad_(False).eval()

    # -- conditioning ----------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """{"prompt_embeds" [B, L, 384], "pooled_prompt_embeds" [B, 384]} plus the same for the empty
        prompt under "uncond_" keys (classifier-free guidance; the base was trained with prompt dropout)."""
        states, pooled = self.encode_text(list(prompts))
        u_states, u_pooled = self.encode_text([""])
        dev = self.device
        return {"prompt_embeds": states.to(dev), "pooled_prompt_embeds": pooled.to(dev),
                "uncond_prompt_embeds": u_states.to(dev).expand_as(states).contiguous(),
                "uncond_pooled_prompt_embeds": u_pooled.to(dev).expand_as(pooled).contiguous()}

    # -- the velocity field ----------------------------------------------------------------------------
    def _call(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        # σ → the SD3 timestep at the model boundary (σ-space everywhere else).
        return self.transformer(hidden_states=x, encoder_hidden_states=cond["prompt_embeds"],
                                pooled_projections=cond["pooled_prompt_embeds"], timestep=1000.0 * sigma,
                                return_dict=False)[0]

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond, *, guidance_scale: float = 1.0) -> Tensor:
        """v_θ(x_σ, σ, c) ≈ ε − x0, shape of x [B, 1, 16, 16]; σ is a float or a [B] tensor."""
        s = sigma_batch(sigma, x.shape[0], x)
        pos, neg = split_cond(cond)
        if guidance_scale == 1.0:
            return self._call(x, s, pos)
        if not neg:
            raise ValueError("guidance_scale != 1 needs the 'uncond_' entries that encode_prompts returns")
        both = {k: torch.cat([neg[k], pos[k]]) for k in pos}   # one batched pass: [2B, …]
        v_u, v_c = self._call(torch.cat([x, x]), torch.cat([s, s]), both).chunk(2)
        return cfg_combine(v_u, v_c, guidance_scale)

    def decode(self, x: Tensor) -> Tensor:
        """Pixel latents in [-1, 1] → images [B, 1, 16, 16] in [0, 1]."""
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # -- training surface ------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside: velocity() is the frozen base π_ref (full FT: the frozen copy; LoRA: adapters off)."""
        if self._reference is not None:
            with swapped_modules(self, "transformer", self._reference):
                yield
        else:
            self.transformer.disable_adapters()
            try:
                yield
            finally:
                self.transformer.enable_adapters()

    def fsdp_roots(self) -> list[nn.Module]:
        """Full fine-tuning: [trainable transformer, frozen reference copy] for FSDP2 sharding (their
        state_dict() keys are trainable_state_dict()'s); LoRA: [] (adapters are replicated instead)."""
        return [] if self.lora_rank > 0 else [self.transformer, self._reference]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        if self.lora_rank > 0:
            from peft import get_peft_model_state_dict

            return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.transformer).items()}
        return {k: v.detach().clone() for k, v in self.transformer.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.lora_rank > 0:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.transformer, state)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise KeyError(f"unexpected LoRA keys: {unexpected[:5]}")
        else:
            self.transformer.load_state_dict(state, strict=True)

    # -- housekeeping ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device) -> "TinyFlowPolicy":
        self.transformer.to(device)
        if self._reference is not None:
            self._reference.to(device)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.transformer.parameters())
