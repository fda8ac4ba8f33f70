"""Building a DiffusersPolicy: from a hub id or a local pipeline directory (`load_diffusers_policy`), or from
a pipeline already built in memory (`policy_from_pipeline`).  The family adapters (flowdppo.policy.sd3 and
flowdppo.policy.flux) subclass flowdppo.policy.diffusers_policy.DiffusersPolicy; this module picks one."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .diffusers_policy import _DTYPES, _is_text_encoder, FAMILIES, PIPELINE_FAMILIES, DiffusersPolicy, detect_family  # noqa: F401
from .flux import Flux2KleinPolicy, FluxPolicy
from .sd3 import SD3Policy


def load_diffusers_policy(model: str, *, family: Optional[str] = None, resolution: int = 512,
                          lora_rank: int = 32, lora_alpha: Optional[float] = 64,
                          lora_target_modules: Sequence[str] | str | None = None, full_finetune: bool = False,
                          dtype: str = "bfloat16", device=None, gradient_checkpointing: bool = False,
                          disable_cudnn_attention: bool = False, max_sequence_length: Optional[int] = None,
                          compile: bool = False, prompt_cache_size: int = 512, decode_batch_size: int = 8,
                          encode_batch_size: int = 16, offload_text_encoders: bool = False) -> DiffusersPolicy:
    """Load a diffusers text-to-image pipeline (hub id or local directory) as a trainable Policy.

    model:                hub id ("stabilityai/stable-diffusion-3.5-medium") or a save_pretrained directory.
    family:               "sd3" | "flux" | "flux2_klein"; None reads model_index.json.
    resolution:           image side in pixels (square); fixes latent_shape.
    lora_rank/alpha:      LoRA r and α (paper: r32/α64 SD3.5, r64/α128 FLUX); alpha None = 2·rank.
    lora_target_modules:  peft target_modules (list of name suffixes or one regex); None = family default.
    full_finetune:        train all transformer weights; reference = a frozen copy (memory: see module doc).
    dtype:                "bfloat16" (frozen weights bf16, bf16 autocast, fp32 trainable weights) or "float32".
    device:               torch device; None = cuda if available else cpu.
    gradient_checkpointing: recompute transformer blocks in backward (less memory, ~30 % more time).
    disable_cudnn_attention: torch.backends.cuda.enable_cudnn_sdp(False), process-wide — a FLUX-architecture
                          LoRA backward crashed on an H100 with cuDNN SDPA (illegal memory access).
    max_sequence_length:  text tokens for T5 / Qwen3; None = the pipeline default (SD3 256, FLUX 512).
    compile:              torch.compile the transformer in place (first call is slow).
    offload_text_encoders: keep the text encoders on the CPU, moving them to `device` only to encode prompts
                          that are not cached yet (saves their whole size on the GPU; costs one transfer
                          per encode of new prompts).
    prompt_cache_size:    encoded prompts kept (CPU) — FLUX.2-klein-9B embeddings are ~12 MB each at 512 tokens.
    decode_batch_size / encode_batch_size: chunk sizes for the VAE decoder and the text encoders.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(_DTYPES)}")
    family = family or detect_family(model)
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: choose one of {FAMILIES}")
    torch_dtype = _DTYPES[dtype]
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if family == "sd3":
        from diffusers import StableDiffusion3Pipeline as pipe_cls
    elif family == "flux":
        from diffusers import FluxPipeline as pipe_cls
    else:
        from diffusers import Flux2KleinPipeline as pipe_cls
    pipe = pipe_cls.from_pretrained(model, dtype=torch_dtype)
    if offload_text_encoders:   # never place the text encoders on the device
        for name, comp in pipe.components.items():
            if isinstance(comp, nn.Module) and not _is_text_encoder(name, comp):
                comp.to(device)
    else:
        pipe.to(device)
    return policy_from_pipeline(pipe, family=family, resolution=resolution, lora_rank=lora_rank,
                                lora_alpha=lora_alpha, lora_target_modules=lora_target_modules,
                                full_finetune=full_finetune, dtype=dtype, device=device,
                                gradient_checkpointing=gradient_checkpointing,
                                disable_cudnn_attention=disable_cudnn_attention,
                                max_sequence_length=max_sequence_length, compile=compile,
                                prompt_cache_size=prompt_cache_size, decode_batch_size=decode_batch_size,
                                encode_batch_size=encode_batch_size, offload_text_encoders=offload_text_encoders)


def policy_from_pipeline(pipe, *, family: Optional[str] = None, resolution: int = 512, lora_rank: int = 32,
                         lora_alpha: Optional[float] = 64, lora_target_modules: Sequence[str] | str | None = None,
                         full_finetune: bool = False, dtype: str = "bfloat16", device=None,
                         gradient_checkpointing: bool = False, disable_cudnn_attention: bool = False,
                         max_sequence_length: Optional[int] = None, compile: bool = False,
                         prompt_cache_size: int = 512, decode_batch_size: int = 8,
                         encode_batch_size: int = 16, offload_text_encoders: bool = False) -> DiffusersPolicy:
    """Wrap an already constructed pipeline (components on `device`, frozen weights in `dtype`) — what
    load_diffusers_policy does after from_pretrained; also used by benchmarks/gpu_bench.py, which builds
    full-size architectures with random weights directly on the GPU.  Arguments as load_diffusers_policy."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(_DTYPES)}")
    family = family or PIPELINE_FAMILIES.get(type(pipe).__name__)
    if family not in FAMILIES:
        raise ValueError(f"{type(pipe).__name__} is not a supported pipeline; pass family= (one of {FAMILIES})")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if disable_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    policy_cls = {"sd3": SD3Policy, "flux": FluxPolicy}.get(family, Flux2KleinPolicy)
    pipe.set_progress_bar_config(disable=True)
    return policy_cls(pipe, resolution=resolution, lora_rank=lora_rank, lora_alpha=lora_alpha,
                      lora_target_modules=lora_target_modules, full_finetune=full_finetune,
                      dtype=_DTYPES[dtype], device=device, gradient_checkpointing=gradient_checkpointing,
                      max_sequence_length=max_sequence_length, compile=compile,
                      prompt_cache_size=prompt_cache_size, decode_batch_size=decode_batch_size,
                      encode_batch_size=encode_batch_size, offload_text_encoders=offload_text_encoders)
