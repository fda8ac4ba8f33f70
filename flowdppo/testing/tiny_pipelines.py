"""Tiny random-weight diffusers pipelines built entirely in code (no hub access), saved to a directory.

Each builder constructs every component of a real pipeline class from a config — tokenizers from
in-memory vocabularies, text encoders, transformer, VAE, scheduler — saves it with save_pretrained and
returns the pipeline.  Loading the directory back through `load_diffusers_policy(path)` therefore
exercises the same `from_pretrained` path a real checkpoint takes.

Geometry shared by all three (so tests can use one resolution): TINY_RESOLUTION = 32 px images, a VAE
with two blocks (spatial factor 2) → 16×16 latents; SD3 patchifies 2×2 inside the transformer, FLUX
packs 2×2 patches into a 64-token sequence.  Components built from a config start in train mode, so
each is put in eval mode before saving (the loaded copies are eval anyway).

Sizes are a few thousand to tens of thousands of parameters per component; each build takes well
under a second on one CPU core.
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY_RESOLUTION = 32
_LATENT_CHANNELS = 4
_VAE_BLOCKS = (8, 8)     # two blocks → vae_scale_factor 2
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ----------------------------------------------------------------------------------------------------
# Offline tokenizers (byte-level, no merges: every character is its own token)
# ----------------------------------------------------------------------------------------------------
def _byte_chars() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    return list(bytes_to_unicode().values())


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A CLIP BPE tokenizer over single bytes (and their end-of-word forms)."""
    from transformers import CLIPTokenizer
    chars = _byte_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = model_max_length
    return tok


def tiny_t5_tokenizer():
    """A unigram T5 tokenizer over lowercase letters, digits and a few punctuation marks."""
    from transformers import T5TokenizerFast
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,'\"-"]
    pieces += [("▁" + c, -2.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def tiny_qwen_tokenizer():
    """A byte-level Qwen2 tokenizer with the chat tokens and a minimal chat template."""
    from transformers import Qwen2TokenizerFast
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for s in specials:
        vocab[s] = len(vocab)
    tok = Qwen2TokenizerFast(vocab=vocab, merges=[], unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                             eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    tok.chat_template = _CHAT_TEMPLATE
    return tok


# ----------------------------------------------------------------------------------------------------
# Text encoders
# ----------------------------------------------------------------------------------------------------
def _clip_text(vocab_size: int, hidden: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                         hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5_encoder(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                   num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def _qwen3_encoder(vocab_size: int, hidden: int, num_layers: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=hidden // 2, max_position_embeddings=512, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).eval()


def _autoencoder_kl(**extra):
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=_LATENT_CHANNELS,
                         block_out_channels=_VAE_BLOCKS, layers_per_block=1, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         sample_size=TINY_RESOLUTION, **extra).eval()


def _save(pipe, path) -> object:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return pipe


# ----------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------
def build_tiny_sd3(path, seed: int = 0):
    """StableDiffusion3Pipeline: CLIP-L + CLIP-G (with projection) + T5 + SD3Transformer2DModel + AutoencoderKL."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    torch.manual_seed(seed)
    tok_clip, tok_t5 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    te1 = _clip_text(len(tok_clip), 8, projection=True)
    te2 = _clip_text(len(tok_clip), 8, projection=True)
    te3 = _t5_encoder(len(tok_t5), 16)           # joint_attention_dim = T5 width ≥ CLIP-L + CLIP-G widths
    transformer = SD3Transformer2DModel(
        sample_size=TINY_RESOLUTION // 2, patch_size=2, in_channels=_LATENT_CHANNELS, out_channels=_LATENT_CHANNELS,
        num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16, qk_norm="rms_norm",
        dual_attention_layers=(0,)).eval()
    vae = _autoencoder_kl(scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                          use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                                    text_encoder=te1, tokenizer=tok_clip, text_encoder_2=te2,
                                    tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=te3, tokenizer_3=tok_t5)
    return _save(pipe, path)


def build_tiny_flux(path, seed: int = 0, guidance_embeds: bool = True):
    """FluxPipeline (FLUX.1-dev layout: guidance-distilled when guidance_embeds=True): CLIP-L + T5 +
    FluxTransformer2DModel + AutoencoderKL."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    torch.manual_seed(seed)
    tok_clip, tok_t5 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    te1 = _clip_text(len(tok_clip), 8, projection=False)
    te2 = _t5_encoder(len(tok_t5), 16)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * _LATENT_CHANNELS, num_layers=1, num_single_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4)).eval()
    vae = _autoencoder_kl(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                          use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=te1,
                        tokenizer=tok_clip, text_encoder_2=te2, tokenizer_2=tok_t5)
    return _save(pipe, path)


def build_tiny_flux2_klein(path, seed: int = 0, is_distilled: bool = False):
    """Flux2KleinPipeline (FLUX.2-klein base layout: true CFG, no guidance embedding): Qwen3 causal LM
    text encoder + Flux2Transformer2DModel + AutoencoderKLFlux2.

    The pipeline stacks the Qwen3 hidden states of layers (9, 18, 27), so the tiny encoder keeps 27
    (tiny) layers and the transformer's joint_attention_dim is 3 × the encoder width."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    torch.manual_seed(seed)
    tok = tiny_qwen_tokenizer()
    hidden = 8
    te = _qwen3_encoder(len(tok), hidden, num_layers=27)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * _LATENT_CHANNELS, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * hidden,
        timestep_guidance_channels=16, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False).eval()
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, latent_channels=_LATENT_CHANNELS,
                             block_out_channels=_VAE_BLOCKS, layers_per_block=1, norm_num_groups=4,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             sample_size=TINY_RESOLUTION).eval()
    with torch.no_grad():  # non-trivial latent statistics so the bn de-normalisation is exercised
        vae.bn.running_mean.uniform_(-0.5, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
                                                time_shift_type="exponential")
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tok,
                              transformer=transformer, is_distilled=is_distilled)
    return _save(pipe, path)
