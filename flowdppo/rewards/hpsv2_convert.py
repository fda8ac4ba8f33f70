"""Convert an open_clip ViT CLIP checkpoint (HPSv2 / HPSv2.1) into a transformers CLIPModel directory.

HPSv2 and HPSv2.1 (hub xswu/HPSv2: HPS_v2_compressed.pt, HPS_v2.1_compressed.pt) are open_clip
ViT-H-14 state dicts fine-tuned from laion2b_s32b_b79k.  open_clip cannot be installed here (it needs
torchvision), so `make_reward("hpsv2", model=DIR)` runs HPSv2 through transformers' CLIPModel, and this
module produces DIR once:

    python -m flowdppo.rewards.hpsv2_convert HPS_v2.1_compressed.pt hpsv2.1-hf \\
        [--tokenizer laion/CLIP-ViT-H-14-laion2B-s32B-b79K]

The tokenizer (default: the laion ViT-H-14 hub repo, the BPE open_clip's `get_tokenizer('ViT-H-14')`
uses) must be available locally — pass a directory — or downloadable from the hub.  The directory
gets the converted weights (`save_pretrained`), that tokenizer and a CLIPImageProcessor set to HPSv2's
own evaluation preprocessing (open_clip `image_transform(is_train=False)`: resize the short side to the
model's image size, bicubic; centre crop; OpenAI CLIP mean/std).

The mapping (`convert_open_clip_state_dict`), pure key/shape work, open_clip name → transformers name:

    visual.class_embedding / conv1.weight / positional_embedding
                                  → vision_model.embeddings.class_embedding / patch_embedding.weight /
                                    position_embedding.weight
    visual.ln_pre / ln_post       → vision_model.pre_layrnorm / post_layernorm
    visual.proj [W, E]            → visual_projection.weight [E, W]   (transposed: x @ proj = Linear(x))
    token_embedding / positional_embedding → text_model.embeddings.token_embedding / position_embedding
    ln_final                      → text_model.final_layer_norm
    text_projection [W, E]        → text_projection.weight [E, W]     (transposed)
    logit_scale                   → logit_scale
    {visual.,}transformer.resblocks.i.ln_1 / ln_2 → {vision,text}_model.encoder.layers.i.layer_norm1 / 2
        attn.in_proj_weight [3W, W] (and _bias)   → self_attn.q_proj / k_proj / v_proj (rows split q, k, v,
                                                    the order nn.MultiheadAttention packs them in)
        attn.out_proj / mlp.c_fc / mlp.c_proj      → self_attn.out_proj / mlp.fc1 / mlp.fc2
    attn_mask (text causal-mask buffer)            → dropped (transformers builds its own causal mask)

Everything else in the state dict is an error naming the keys (e.g. layer scale, attentional pooling or
a custom text tower: not the plain ViT CLIP this converter reproduces), as is any expected key that is
missing.  What cannot be read from the weights: the number of attention heads (see
`default_heads`; ViT-H-14: 16 and 16), the activation (open_clip ViT-H-14 uses exact GELU, not
QuickGELU) and the LayerNorm eps (open_clip's 1e-5).  Text pooling: open_clip takes the features at
`argmax(token ids)`, i.e. at the end-of-text token because it has the largest id (49407 of 49408); the
config sets eos_token_id = vocab_size - 1, where transformers pools at the first end-of-text token —
the same position for every prompt a CLIP tokenizer produces (it always ends in end-of-text, also
when truncated; the converter checks the tokenizer's end-of-text id is vocab_size - 1).

The HPSv2 score itself is not part of the weights: HPSv2Reward (clip_rewards) scores
cos(image embedding, text embedding) without logit_scale, as HPSv2's hpsv2/img_score.py does.

Verified here (tests/test_hpsv2_convert.py), on tiny random open_clip-named weights: the converted
CLIPModel's image and text embeddings and the HPS score agree (float32, atol = rtol = 1e-5; observed
≤ 1e-6) with an independent forward of the open_clip architecture written in the test from the state
dict with torch primitives (F.multi_head_attention_forward, exact GELU), and the comparison does catch
a q/k swap or QuickGELU; the CLI round-trips a .pt ({"state_dict"}, "module.") to a directory that
CLIPModel.from_pretrained and HPSv2Reward load, and that reward reproduces the oracle's HPS on the
same pixels and token ids; the full ViT-H-14 key/shape mapping is checked on meta tensors.  Not
verified: agreement with real open_clip or with the real HPSv2 weights (neither can be obtained
here), and the image preprocessing (the reward resizes in torch, HPSv2 in PIL: close, not identical).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import Tensor

DEFAULT_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
# open_clip evaluation preprocessing (open_clip/constants.py OPENAI_DATASET_MEAN / _STD)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# open_clip model_configs/*.json vision "head_width" where it is not the default 64:
# ViT-H-14 (width 1280) 80, ViT-g-14 (1408) 88, ViT-bigG-14 (1664) 104.  Text towers all use width / 64.
_VISION_HEAD_WIDTH = {1280: 80, 1408: 88, 1664: 104}
_BLOCK_PARTS = (   # (open_clip block suffix, transformers block suffix, shape as f(width, mlp width))
    ("ln_1.weight", "layer_norm1.weight", lambda w, m: (w,)), ("ln_1.bias", "layer_norm1.bias", lambda w, m: (w,)),
    ("ln_2.weight", "layer_norm2.weight", lambda w, m: (w,)), ("ln_2.bias", "layer_norm2.bias", lambda w, m: (w,)),
    ("attn.out_proj.weight", "self_attn.out_proj.weight", lambda w, m: (w, w)),
    ("attn.out_proj.bias", "self_attn.out_proj.bias", lambda w, m: (w,)),
    ("mlp.c_fc.weight", "mlp.fc1.weight", lambda w, m: (m, w)), ("mlp.c_fc.bias", "mlp.fc1.bias", lambda w, m: (m,)),
    ("mlp.c_proj.weight", "mlp.fc2.weight", lambda w, m: (w, m)),
    ("mlp.c_proj.bias", "mlp.fc2.bias", lambda w, m: (w,)),
)
_IGNORED = ("attn_mask",)   # the text tower's causal-mask buffer (persistent in some open_clip versions)


class ConversionError(ValueError):
    """The checkpoint is not a plain open_clip ViT CLIP state dict (missing / unexpected / misshapen keys)."""


def _require(state: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise ConversionError(f"open_clip state dict has no {key!r}: not a ViT CLIP checkpoint "
                              f"(or a truncated one)")
    return state[key]


def _num_layers(state: Mapping[str, Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in state for m in [pat.match(k)] if m}
    if not idx:
        raise ConversionError(f"open_clip state dict has no {prefix}<i>.* blocks")
    return max(idx) + 1


def default_heads(width: int, tower: str) -> int:
    """open_clip's head count for a tower of this width (heads are not recorded in the weights):
    text towers use 64-wide heads; vision towers too except ViT-H/g/bigG (_VISION_HEAD_WIDTH)."""
    head_width = _VISION_HEAD_WIDTH.get(width, 64) if tower == "vision" else 64
    if width % head_width:
        raise ConversionError(f"{tower} width {width} is not a multiple of the usual head width {head_width}; "
                              f"pass the number of {tower} heads explicitly")
    return width // head_width


def clip_config_for(state: Mapping[str, Tensor], *, vision_heads: Optional[int] = None,
                    text_heads: Optional[int] = None, quick_gelu: bool = False):
    """A transformers CLIPConfig matching an open_clip ViT CLIP state dict, from the tensor shapes:
    widths, layers, MLP widths, patch and image size, vocabulary, context length, projection dim.

    Heads default to `default_heads` (ViT-H-14: 16 vision, 16 text); the activation is exact GELU unless
    quick_gelu (HPSv2: open_clip ViT-H-14 with force_quick_gelu=False → exact GELU); LayerNorm eps 1e-5."""
    from transformers import CLIPConfig

    conv = _require(state, "visual.conv1.weight")                 # [W, 3, p, p]
    vpos = _require(state, "visual.positional_embedding")         # [grid² + 1, W]
    vproj = _require(state, "visual.proj")                        # [W, E]
    tok = _require(state, "token_embedding.weight")               # [V, Wt]
    tpos = _require(state, "positional_embedding")                # [ctx, Wt]
    tproj = _require(state, "text_projection")                    # [Wt, E]
    vfc = _require(state, "visual.transformer.resblocks.0.mlp.c_fc.weight")
    tfc = _require(state, "transformer.resblocks.0.mlp.c_fc.weight")
    v_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = round((vpos.shape[0] - 1) ** 0.5)
    if conv.ndim != 4 or conv.shape[-2] != patch or grid * grid + 1 != vpos.shape[0]:
        raise ConversionError(f"visual.conv1.weight {tuple(conv.shape)} / visual.positional_embedding "
                              f"{tuple(vpos.shape)}: expected square patches and a square grid plus one class token")
    t_width, vocab, ctx = int(tok.shape[1]), int(tok.shape[0]), int(tpos.shape[0])
    if vproj.shape[1] != tproj.shape[1]:
        raise ConversionError(f"visual.proj {tuple(vproj.shape)} and text_projection {tuple(tproj.shape)} "
                              f"project to different dimensions")
    act = "quick_gelu" if quick_gelu else "gelu"
    text_config = dict(
        vocab_size=vocab, hidden_size=t_width, intermediate_size=int(tfc.shape[0]),
        num_hidden_layers=_num_layers(state, "transformer.resblocks."),
        num_attention_heads=int(text_heads or default_heads(t_width, "text")),
        max_position_embeddings=ctx, hidden_act=act, layer_norm_eps=1e-5,
        # open_clip pools at argmax(ids) = the end-of-text token, the largest id of the CLIP BPE vocabulary
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    vision_config = dict(
        hidden_size=v_width, intermediate_size=int(vfc.shape[0]),
        num_hidden_layers=_num_layers(state, "visual.transformer.resblocks."),
        num_attention_heads=int(vision_heads or default_heads(v_width, "vision")),
        image_size=grid * patch, patch_size=patch, hidden_act=act, layer_norm_eps=1e-5)
    for name, cfg in (("text", text_config), ("vision", vision_config)):
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ConversionError(f"{name} width {cfg['hidden_size']} is not divisible by "
                                  f"{cfg['num_attention_heads']} heads")
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=int(vproj.shape[1]))


def _check_causal_mask(mask: Tensor, ctx: int) -> None:
    want = torch.full((ctx, ctx), float("-inf")).triu_(1)
    if tuple(mask.shape) != (ctx, ctx) or (mask.device.type != "meta" and not torch.equal(mask.float().cpu(), want)):
        raise ConversionError(f"attn_mask {tuple(mask.shape)} is not the causal [{ctx}, {ctx}] mask open_clip "
                              f"builds; this converter only reproduces causal text towers")


def convert_open_clip_state_dict(state: Mapping[str, Tensor], config) -> dict[str, Tensor]:
    """open_clip ViT CLIP state dict → transformers CLIPModel state dict (see the module docstring).

    Strict: raises ConversionError naming every expected open_clip key that is missing, every key that
    would be left over, and every tensor whose shape does not fit `config`."""
    vc, tc = config.vision_config, config.text_config
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    bad_shape: list[str] = []

    def take(key: str) -> Optional[Tensor]:
        if key not in state:
            missing.append(key)
            return None
        used.add(key)
        return state[key]

    def put(dst: str, src: str, shape: tuple, transpose: bool = False) -> None:
        t = take(src)
        if t is None:
            return
        if transpose:   # open_clip keeps x @ proj parameters [in, out]; nn.Linear stores [out, in]
            t = t.t() if t.ndim == 2 else t.reshape(-1)
        if tuple(t.shape) != tuple(shape):
            bad_shape.append(f"{src} {tuple(state[src].shape)} (→ {dst}, want {tuple(shape)})")
            return
        out[dst] = t.contiguous()

    def blocks(src_prefix: str, dst_prefix: str, width: int, mlp: int, layers: int) -> None:
        for i in range(layers):
            s, d = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
            for src, dst, shape in _BLOCK_PARTS:
                put(d + dst, s + src, shape(width, mlp))
            for kind in ("weight", "bias"):
                src = f"{s}attn.in_proj_{kind}"
                t = take(src)
                if t is None:
                    continue
                want = (3 * width, width) if kind == "weight" else (3 * width,)
                if tuple(t.shape) != want:
                    bad_shape.append(f"{src} {tuple(t.shape)} (want {want})")
                    continue
                # nn.MultiheadAttention packs the input projections as rows [q; k; v]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0)):
                    out[f"{d}self_attn.{name}.{kind}"] = part.contiguous()

    vw, tw, e = vc.hidden_size, tc.hidden_size, config.projection_dim
    grid = vc.image_size // vc.patch_size
    put("vision_model.embeddings.class_embedding", "visual.class_embedding", (vw,))
    put("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight", (vw, 3, vc.patch_size, vc.patch_size))
    put("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding", (grid * grid + 1, vw))
    for ln_src, ln_dst in (("visual.ln_pre", "vision_model.pre_layrnorm"),
                           ("visual.ln_post", "vision_model.post_layernorm"),
                           ("ln_final", "text_model.final_layer_norm")):
        width = tw if ln_src == "ln_final" else vw
        put(f"{ln_dst}.weight", f"{ln_src}.weight", (width,))
        put(f"{ln_dst}.bias", f"{ln_src}.bias", (width,))
    put("visual_projection.weight", "visual.proj", (e, vw), transpose=True)
    blocks("visual.transformer.resblocks.", "vision_model.encoder.layers.", vw, vc.intermediate_size,
           vc.num_hidden_layers)
    put("text_model.embeddings.token_embedding.weight", "token_embedding.weight", (tc.vocab_size, tw))
    put("text_model.embeddings.position_embedding.weight", "positional_embedding", (tc.max_position_embeddings, tw))
    put("text_projection.weight", "text_projection", (e, tw), transpose=True)
    put("logit_scale", "logit_scale", ())
    blocks("transformer.resblocks.", "text_model.encoder.layers.", tw, tc.intermediate_size, tc.num_hidden_layers)

    for key in _IGNORED:
        if key in state:
            _check_causal_mask(state[key], tc.max_position_embeddings)
            used.add(key)
    unexpected = sorted(set(state) - used)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (not part of a plain open_clip ViT CLIP): "
                        f"{', '.join(unexpected)}")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es): {'; '.join(bad_shape)}")
    if problems:
        raise ConversionError("cannot convert the open_clip state dict: " + " | ".join(problems))
    return out


def unwrap_state_dict(obj) -> dict[str, Tensor]:
    """A loaded checkpoint → its flat state dict: unwraps {"state_dict": …} and strips DDP's "module."."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConversionError("checkpoint is neither a state dict (name → tensor) nor {'state_dict': state dict}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_open_clip_checkpoint(src, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read a .pt/.pth/.bin (torch.load, weights only unless trust_pickle) or .safetensors checkpoint."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {str(src)!r} does not exist (or is not a file)")
    if src.suffix == ".safetensors":
        from safetensors.torch import load_file
        return unwrap_state_dict(load_file(str(src)))
    try:
        obj = torch.load(src, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:   # pickle.UnpicklingError and friends: say what to do
        if trust_pickle:
            raise
        raise ConversionError(f"torch.load(weights_only=True) refused {str(src)!r} ({type(e).__name__}: {e}). "
                              "If you trust the file, pass trust_pickle=True (CLI: --trust-pickle).") from e
    return unwrap_state_dict(obj)


def hpsv2_image_processor(image_size: int):
    """HPSv2's evaluation preprocessing as a CLIPImageProcessor: short side → image_size (bicubic),
    centre crop image_size², OpenAI CLIP mean/std (open_clip image_transform(is_train=False))."""
    try:   # transformers 5 without torchvision: the PIL backend (CLIPImageProcessor would fall back to it, warning)
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              resample=3, do_center_crop=True, do_normalize=True, image_mean=list(OPENAI_CLIP_MEAN),
                              image_std=list(OPENAI_CLIP_STD), do_convert_rgb=True)


def _load_tokenizer(tokenizer):
    from transformers import AutoTokenizer
    if not isinstance(tokenizer, (str, Path)):
        return tokenizer
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except Exception as e:
        raise ConversionError(
            f"could not load the tokenizer {str(tokenizer)!r} ({type(e).__name__}: {e}). It must be a local "
            f"directory or a hub id that is cached or downloadable (default {DEFAULT_TOKENIZER!r}, the "
            "BPE tokenizer open_clip uses for ViT-H-14); pass --tokenizer PATH for a local copy.") from e


def _check_tokenizer(tok, vocab_size: int, ctx: int):
    if tok.eos_token_id != vocab_size - 1:
        raise ConversionError(f"tokenizer end-of-text id {tok.eos_token_id} is not {vocab_size - 1} (vocab_size - 1): "
                              "open_clip pools the text features at the largest token id, so they must coincide")
    if len(tok) > vocab_size:
        raise ConversionError(f"tokenizer has {len(tok)} tokens but the checkpoint's embedding only {vocab_size}")
    if tok.model_max_length > ctx:
        tok.model_max_length = ctx
    return tok


def convert_checkpoint(src, out_dir, tokenizer=DEFAULT_TOKENIZER, *, vision_heads: Optional[int] = None,
                       text_heads: Optional[int] = None, quick_gelu: bool = False, trust_pickle: bool = False):
    """Convert the open_clip checkpoint `src` into a transformers CLIPModel directory `out_dir`.

    tokenizer: a hub id or local directory (or a tokenizer object) — needed locally or on the hub; it is
    loaded first so a missing tokenizer fails before the (slow, ViT-H: ~4 GB) conversion.  Saves the
    model (float32), the tokenizer and HPSv2's image processor (as a CLIPProcessor).  Returns the model."""
    if not Path(src).is_file():   # before any heavy import or tokenizer lookup
        raise FileNotFoundError(f"checkpoint {str(src)!r} does not exist (or is not a file)")
    from transformers import CLIPModel, CLIPProcessor
    tok = _load_tokenizer(tokenizer)
    state = load_open_clip_checkpoint(src, trust_pickle=trust_pickle)
    config = clip_config_for(state, vision_heads=vision_heads, text_heads=text_heads, quick_gelu=quick_gelu)
    tok = _check_tokenizer(tok, config.text_config.vocab_size, config.text_config.max_position_embeddings)
    converted = {k: v.float() for k, v in convert_open_clip_state_dict(state, config).items()}
    del state
    model = CLIPModel(config).eval()
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:   # a mapping bug, not a checkpoint problem
        raise ConversionError(f"converted state dict does not fit CLIPModel: missing {result.missing_keys}, "
                              f"unexpected {result.unexpected_keys}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    image_processor = hpsv2_image_processor(config.vision_config.image_size)
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out_dir)  # processor_config.json
    image_processor.save_pretrained(out_dir)   # preprocessor_config.json too, for readers predating processor_config
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowdppo.rewards.hpsv2_convert",
        description="Convert an open_clip ViT CLIP checkpoint (HPSv2 / HPSv2.1: HPS_v2*_compressed.pt) into a "
                    "transformers CLIPModel directory for make_reward('hpsv2', model=OUT).")
    parser.add_argument("src", help="open_clip checkpoint (.pt/.pth/.bin/.safetensors; {'state_dict': …} and "
                                    "'module.' prefixes are handled)")
    parser.add_argument("out", help="output directory (created; existing files are overwritten)")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                        help=f"hub id or local directory of the CLIP tokenizer (default {DEFAULT_TOKENIZER}; must be "
                             "cached locally or downloadable)")
    parser.add_argument("--vision-heads", type=int, default=None, help="vision attention heads (default: open_clip's "
                        "for that width, 16 for ViT-H-14)")
    parser.add_argument("--text-heads", type=int, default=None, help="text attention heads (default: width / 64)")
    parser.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI-trained towers; "
                        "not HPSv2, which uses exact GELU)")
    parser.add_argument("--trust-pickle", action="store_true", help="torch.load with weights_only=False "
                        "(only for a checkpoint you trust that weights-only loading refuses)")
    args = parser.parse_args(argv)
    try:
        model = convert_checkpoint(args.src, args.out, args.tokenizer, vision_heads=args.vision_heads,
                                   text_heads=args.text_heads, quick_gelu=args.quick_gelu,
                                   trust_pickle=args.trust_pickle)
    except (ConversionError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    vc, tc = model.config.vision_config, model.config.text_config
    print(f"wrote {args.out}: CLIPModel vision {vc.hidden_size}w×{vc.num_hidden_layers}L×{vc.num_attention_heads}h "
          f"patch {vc.patch_size} @ {vc.image_size}px, text {tc.hidden_size}w×{tc.num_hidden_layers}L×"
          f"{tc.num_attention_heads}h ctx {tc.max_position_embeddings}, projection {model.config.projection_dim}; "
          f"use make_reward('hpsv2', model={str(args.out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
