"""Policies backed by real diffusers pipelines (SD3/SD3.5, FLUX.1, FLUX.2-klein), loaded by hub id or path.

    from flowdppo.policy.pipelines import load_diffusers_policy
    policy = load_diffusers_policy("stabilityai/stable-diffusion-3.5-medium", resolution=512, lora_rank=32)

One base class holds everything the families share; sd3.py and flux.py only say how a family encodes a
prompt, calls its transformer (σ → timestep conversion, latent packing, guidance) and decodes latents.

What the base class guarantees (the Policy protocol, flowdppo/policy/base.py):
  * Prompts are encoded once per distinct text: an LRU cache (CPU, `prompt_cache_size` entries) keyed
    by the text; text encoders are frozen, in eval mode, and run under no_grad.
  * `velocity` returns fp32.  With dtype="bfloat16" the frozen weights are stored in bf16 and the
    forward runs under bf16 autocast; trainable weights (LoRA, or the whole transformer when
    full_finetune) are kept in fp32 so AdamW updates are not rounded to bf16.  Anchors computed from
    velocities (old means, log-probs) therefore stay fp32.
  * Classifier-free guidance: families with true CFG put unconditional ("") embeddings under "uncond_"
    keys and velocity(w ≠ 1) runs one batched [uncond; cond] forward → v_u + w·(v_c − v_u).
    Guidance-distilled FLUX.1 (transformer.config.guidance_embeds) takes w as its guidance embedding
    instead — one forward, no "uncond_" keys (so use w ≈ 3.5 for FLUX.1-dev, as its pipeline does).
  * LoRA through peft (`transformer.add_adapter`); `reference()` disables the adapters, so inside it
    velocity() is the frozen base model.  trainable_state_dict() is the LoRA weights only
    (peft's `get_peft_model_state_dict` naming).
  * full_finetune=True trains every transformer weight; the reference is a frozen copy of the base
    transformer in `dtype`.  Memory per transformer parameter: 4 B fp32 weight + 4 B grad + 8 B AdamW
    state + 2 B bf16 reference ≈ 18 B, i.e. ≈ 40 GB for SD3.5-medium (2.24 B params) and ≈ 215 GB for
    FLUX (11.9 B) per GPU when replicated; under torchrun the trainer shards both transformers with
    FSDP2 (config.parallel, `fsdp_roots()`), dividing that by the number of ranks.

Extra (not in the protocol): `sigma_schedule(num_steps, grid)` gives the pipeline's own σ grid (its scheduler
shift / resolution-dependent shift) so rollouts can match the diffusers sampler, or the official
shift(linspace(1, 1/K, K)) grid (config.sigma_grid); `wrap_transformer(fn)`
lets a trainer wrap the transformer (e.g. torch.compile) while LoRA toggling keeps acting on the bare
module; `fsdp_roots()` hands the full-fine-tuning modules to the trainer's FSDP2 sharding;
`save_lora_for_diffusers(dir)` writes the LoRA so a plain pipeline can `load_lora_weights(dir)`;
`pipelines.policy_from_pipeline(pipe, …)` wraps an already built pipeline (the benchmark's random full-size ones).

Costs to know: with torch.compile, the first reference() forward recompiles (adapter toggling changes
the graph); "uncond_" entries are expanded views, but the trainer's cond_repeat materialises them — for
FLUX.2-klein-9B at 512 tokens that is ~12.6 MB per sample and per (un)conditional entry.
"""
from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from typing import Callable, Iterator, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from .base import Cond, cfg_combine, sigma_batch, split_cond

Family = Literal["sd3", "flux", "flux2_klein"]
FAMILIES: tuple[str, ...] = ("sd3", "flux", "flux2_klein")

# model_index.json "_class_name" → family.  Only the plain text-to-image pipelines are accepted.
PIPELINE_FAMILIES: dict[str, str] = {
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "Flux2KleinPipeline": "flux2_klein",
}
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def detect_family(model: str) -> str:
    """The family of a pipeline directory or hub id, read from its model_index.json."""
    from diffusers import DiffusionPipeline
    try:
        index = DiffusionPipeline.load_config(model)
    except Exception as err:  # diffusers raises several types (EnvironmentError, HF hub errors, …)
        raise ValueError(f"cannot read model_index.json of {model!r} ({err}); pass family= explicitly "
                         f"(one of {FAMILIES}) or check the path / hub id") from err
    name = index.get("_class_name", "")
    if name not in PIPELINE_FAMILIES:
        raise ValueError(f"{model!r} is a {name or 'unknown'} pipeline; supported: "
                         f"{sorted(PIPELINE_FAMILIES)} — pass family= only if it really is one of {FAMILIES}")
    return PIPELINE_FAMILIES[name]


def _is_text_encoder(name: str, component) -> bool:
    """Pipeline components named text_encoder, text_encoder_2, … (SD3: three; FLUX.1: two; FLUX.2: one)."""
    return name.startswith("text_encoder") and isinstance(component, nn.Module)


class DiffusersPolicy:
    """Shared machinery of the diffusers adapters.  Subclasses set `family`, `latent_shape`,
    `true_cfg`, `guidance_embedded`, `default_max_sequence_length`, `default_lora_targets` and implement
    `_encode_texts`, `_transformer_call`, `_decode_to_pixels` and `sigma_schedule`."""

    family: str = ""
    latent_shape: tuple[int, ...]
    true_cfg: bool = True            # unconditional embeddings exist and w ≠ 1 means true CFG
    guidance_embedded: bool = False  # w is fed to a guidance embedding (guidance-distilled FLUX.1)
    default_max_sequence_length: int = 256
    default_lora_targets: Sequence[str] | str = ()

    def __init__(self, pipe, *, resolution: int, lora_rank: int, lora_alpha: Optional[float],
                 lora_target_modules: Sequence[str] | str | None, full_finetune: bool, dtype: torch.dtype,
                 device: torch.device, gradient_checkpointing: bool, max_sequence_length: Optional[int],
                 compile: bool, prompt_cache_size: int, decode_batch_size: int, encode_batch_size: int,
                 offload_text_encoders: bool = False):
        self.pipe = pipe
        self.offload_text_encoders = bool(offload_text_encoders)
        self.resolution = int(resolution)
        self.device = device
        self.compute_dtype = dtype
        self.full_finetune = bool(full_finetune)
        self.max_sequence_length = int(max_sequence_length or self.default_max_sequence_length)
        self.prompt_cache_size = int(prompt_cache_size)
        self.decode_batch_size = int(decode_batch_size)
        self.encode_batch_size = int(encode_batch_size)
        if self.prompt_cache_size < 1 or self.decode_batch_size < 1 or self.encode_batch_size < 1:
            raise ValueError("prompt_cache_size, decode_batch_size and encode_batch_size must be >= 1")
        self._cache: OrderedDict[str, Cond] = OrderedDict()
        self._uncond: Optional[Cond] = None
        self._in_reference = False

        # Everything frozen and in eval mode first; then make exactly the trainable part trainable.
        for name, module in pipe.components.items():
            if isinstance(module, nn.Module):
                module.requires_grad_(False).eval()
        core: nn.Module = pipe.transformer
        self._core = core                 # the bare transformer: adapters, state dicts
        self.transformer: nn.Module = core  # what velocity() calls (may be wrapped by wrap_transformer)
        self._ref_transformer: Optional[nn.Module] = None
        if self.full_finetune:
            self._ref_transformer = copy.deepcopy(core).to(dtype).requires_grad_(False).eval()
            core.to(torch.float32).requires_grad_(True)
        else:
            self._add_lora(lora_rank, lora_alpha, lora_target_modules)
        if gradient_checkpointing:
            core.enable_gradient_checkpointing()
        if compile:
            core.compile()
            if self._ref_transformer is not None:
                self._ref_transformer.compile()
        if self.offload_text_encoders:
            for module in self._text_encoders():
                module.to("cpu")
        self._check_resolution()

    # ------------------------------------------------------------------------------------------------
    # Construction helpers
    # ------------------------------------------------------------------------------------------------
    def _add_lora(self, rank: int, alpha: float, targets) -> None:
        from peft import LoraConfig
        if rank < 1:
            raise ValueError(f"lora_rank={rank} must be >= 1 (or set full_finetune=True)")
        targets = self.default_lora_targets if targets is None else targets
        alpha = 2 * rank if alpha is None else alpha   # None: the paper's α = 2r
        if isinstance(targets, (list, tuple)):
            targets = list(targets)
        config = LoraConfig(r=int(rank), lora_alpha=float(alpha), init_lora_weights="gaussian",
                            target_modules=targets, lora_dropout=0.0)
        try:
            self._core.add_adapter(config)
        except ValueError as err:   # peft: "Target modules … not found in the base model"
            raise ValueError(f"lora_target_modules={targets!r} matched no module of the {self.family} "
                             f"transformer ({err}); list module names from transformer.named_modules()") from err
        n = 0
        for name, p in self._core.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(torch.float32)   # fp32 master weights for the optimizer
                p.requires_grad_(True)
                n += 1
            else:
                p.requires_grad_(False)
        if n == 0:
            raise ValueError(f"lora_target_modules={targets!r} matched no module of the {self.family} "
                             "transformer; list module names from transformer.named_modules()")

    def _check_resolution(self) -> None:
        """Subclasses raise if the resolution does not fit the VAE/patch grid."""

    def wrap_transformer(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the module velocity() calls by wrapper(transformer) (e.g. a compiled or instrumented
        module).  Adapter toggling, state dicts and trainable_parameters keep using the bare transformer."""
        self.transformer = wrapper(self._core)

    # ------------------------------------------------------------------------------------------------
    # Prompt encoding (cached)
    # ------------------------------------------------------------------------------------------------
    def _encode_texts(self, texts: list[str]) -> Cond:
        """Encode a batch of texts with the pipeline's frozen text encoders → batch-first tensors."""
        raise NotImplementedError

    def _text_encoders(self) -> list[nn.Module]:
        return [m for name, m in self.pipe.components.items() if _is_text_encoder(name, m)]

    @contextlib.contextmanager
    def _text_encoders_on_device(self) -> Iterator[None]:
        """With offload_text_encoders, the text encoders live on the CPU and visit self.device only while
        prompts not yet in the cache are encoded (their whole size is freed for the transformer between
        encodes: T5-XXL's 4.8 B parameters are ≈ 9.5 GB in bf16).  A no-op otherwise."""
        encoders = self._text_encoders() if self.offload_text_encoders else []
        for m in encoders:
            m.to(self.device)
        try:
            yield
        finally:
            for m in encoders:
                m.to("cpu")

    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> list[Cond]:
        out: list[Cond] = []
        with self._text_encoders_on_device():
            for i in range(0, len(texts), self.encode_batch_size):
                chunk = texts[i:i + self.encode_batch_size]
                enc = self._encode_texts(chunk)
                out += [{k: v[j:j + 1].detach().to("cpu") for k, v in enc.items()} for j in range(len(chunk))]
        return out

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """Batch-first conditions for `prompts` (on self.device).  Each distinct text runs through the
        text encoders once while it stays in the LRU cache; "uncond_" keys hold the "" embedding when
        the family uses true CFG."""
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise ValueError("encode_prompts needs at least one prompt")
        missing = [t for t in dict.fromkeys(prompts) if t not in self._cache]
        fresh = dict(zip(missing, self._encode_uncached(missing))) if missing else {}
        rows = []
        for t in prompts:
            if t in fresh:
                rows.append(fresh[t])
            else:
                rows.append(self._cache[t])
                self._cache.move_to_end(t)
        for t, c in fresh.items():
            self._cache[t] = c
        while len(self._cache) > self.prompt_cache_size:
            self._cache.popitem(last=False)
        cond = {k: torch.cat([r[k] for r in rows]).to(self.device) for k in rows[0]}
        if self.true_cfg:
            if self._uncond is None:
                self._uncond = {k: v.to(self.device) for k, v in self._encode_uncached([""])[0].items()}
            b = len(prompts)
            # expand: a view, no copy per row; cond_repeat / cond_index / cat materialise as needed
            cond.update({"uncond_" + k: v.expand(b, *v.shape[1:]) for k, v in self._uncond.items()})
        return cond

    # ------------------------------------------------------------------------------------------------
    # Velocity
    # ------------------------------------------------------------------------------------------------
    def _transformer_call(self, module: nn.Module, x: Tensor, sigma: Tensor, cond: Cond,
                          guidance: Optional[Tensor]) -> Tensor:
        """One forward of `module` on latents x [B, *latent_shape] at σ [B] (fp32); σ → timestep here."""
        raise NotImplementedError

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def velocity(self, x: Tensor, sigma, cond: Cond, *, guidance_scale: float = 1.0) -> Tensor:
        """v_θ(x, σ, c) in fp32, shape of x.  σ: a float or a [B] tensor.  See the module docstring for
        what guidance_scale means per family."""
        b = x.shape[0]
        s = sigma_batch(sigma, b, x)
        pos, neg = split_cond(cond)
        module = self._ref_transformer if (self._in_reference and self._ref_transformer is not None) \
            else self.transformer
        with self._autocast():
            if self.guidance_embedded:
                g = torch.full((b,), float(guidance_scale), device=x.device, dtype=torch.float32)
                return self._transformer_call(module, x, s, pos, g).float()
            if guidance_scale == 1.0:
                return self._transformer_call(module, x, s, pos, None).float()
            if not self.true_cfg:
                raise ValueError(f"guidance_scale={guidance_scale} but this {self.family} model has no "
                                 "classifier-free guidance (step-distilled); set guidance_scale=1.0")
            if not neg:
                raise ValueError("guidance_scale != 1 needs the 'uncond_' entries from encode_prompts; "
                                 "do not drop them from the condition dict")
            both = {k: torch.cat([neg[k], pos[k]]) for k in pos}
            v = self._transformer_call(module, torch.cat([x, x]), torch.cat([s, s]), both, None).float()
        v_uncond, v_cond = v.chunk(2)
        return cfg_combine(v_uncond, v_cond, guidance_scale)

    # ------------------------------------------------------------------------------------------------
    # Decoding
    # ------------------------------------------------------------------------------------------------
    def _decode_to_pixels(self, x: Tensor) -> Tensor:
        """Latents [b, *latent_shape] → VAE output in [-1, 1] (approximately), [b, 3, H, W]."""
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Latents → images [B, 3, H, W] in [0, 1], fp32 (VAE run in chunks of decode_batch_size)."""
        out = []
        for i in range(0, x.shape[0], self.decode_batch_size):
            img = self._decode_to_pixels(x[i:i + self.decode_batch_size])
            out.append((img.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    def sigma_schedule(self, num_steps: int, grid: str = "pipeline") -> Tensor:
        """The σ grid [σ_0 = 1, …, σ_K = 0] (num_steps + 1 values, float64): the pipeline's own ("pipeline")
        or shift(linspace(1, 1/K, K)) with the scheduler's shift ("official", config.sigma_grid)."""
        raise NotImplementedError

    def _fresh_scheduler(self):
        return type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)

    # ------------------------------------------------------------------------------------------------
    # Training interface
    # ------------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self._core.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside: velocity() is the frozen base model (LoRA adapters disabled, or the frozen copy)."""
        if self._in_reference:   # re-entrant
            yield
            return
        self._in_reference = True
        try:
            if self._ref_transformer is not None:
                yield
            else:
                self._core.disable_adapters()
                try:
                    yield
                finally:
                    self._core.enable_adapters()
        finally:
            self._in_reference = False

    def fsdp_roots(self) -> list[nn.Module]:
        """Full fine-tuning: [trainable transformer, frozen reference copy] for FSDP2 sharding (the first's
        state_dict() keys are trainable_state_dict()'s); LoRA: [] (adapters are replicated instead)."""
        return [self._core, self._ref_transformer] if self.full_finetune else []

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """LoRA weights only (peft naming, adapter name stripped) or, when full_finetune, the whole
        transformer; detached CPU copies."""
        if self.full_finetune:
            state = self._core.state_dict()
        else:
            from peft import get_peft_model_state_dict
            state = get_peft_model_state_dict(self._core)
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Strict inverse of trainable_state_dict: same keys and shapes, or a ValueError."""
        if self.full_finetune:
            self._core.load_state_dict(state, strict=True)
            return
        from peft import get_peft_model_state_dict
        expected = get_peft_model_state_dict(self._core)
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"LoRA state mismatch: missing {missing[:3]}… ({len(missing)}), unexpected "
                             f"{extra[:3]}… ({len(extra)}); was it saved with the same rank/targets/family?")
        params = {self._peft_key(n): p for n, p in self._core.named_parameters() if "lora_" in n}
        with torch.no_grad():
            for k, v in state.items():
                if params[k].shape != v.shape:
                    raise ValueError(f"LoRA weight {k}: shape {tuple(v.shape)} != {tuple(params[k].shape)}")
                params[k].copy_(v)

    def save_lora_for_diffusers(self, directory) -> None:
        """Write the LoRA in diffusers' format (pytorch_lora_weights.safetensors) so a plain pipeline can
        use it: `pipe.load_lora_weights(directory)`.  LoRA policies only."""
        if self.full_finetune:
            raise ValueError("save_lora_for_diffusers needs a LoRA policy; for full fine-tuning save "
                             "pipe.transformer with save_pretrained")
        from peft import get_peft_model_state_dict
        config = self._core.peft_config["default"].to_dict()   # r, lora_alpha, targets: the scaling α/r
        type(self.pipe).save_lora_weights(str(directory), transformer_lora_layers=get_peft_model_state_dict(self._core),
                                          transformer_lora_adapter_metadata=config)

    @staticmethod
    def _peft_key(param_name: str) -> str:
        """'…to_q.lora_A.default.weight' → '…to_q.lora_A.weight' (peft's saved naming)."""
        return param_name.replace(".default.", ".")
