"""open_clip → transformers CLIPModel conversion (flowdppo/rewards/hpsv2_convert.py), checked against an
INDEPENDENT oracle: a forward of the open_clip ViT CLIP architecture written below directly from the
open_clip-named state dict with torch primitives (F.conv2d, F.layer_norm, F.multi_head_attention_forward,
exact F.gelu), following open_clip's model.py (VisualTransformer / Transformer / encode_text) and
HPSv2's scoring (hpsv2/img_score.py: diagonal of normalised image features @ normalised text features^T).
No transformers code is used by the oracle.

Tiny random configuration: vision width 64, 2 layers, 4 heads, patch 8, 32 px; text width 48, 2 layers,
4 heads, context 16; embed dim 32; vocabulary 100 (end-of-text = 99, the largest id, as in CLIP's BPE).
Tolerance: float32, atol = rtol = 1e-5 on the unnormalised embeddings (|x| ~ 1) and on the HPS score.

What this does NOT check: agreement with real open_clip (needs torchvision, not installable here) or
with the real HPSv2 weights (not obtainable here); the ViT-H-14 mapping is checked for keys and shapes
only (meta tensors, no values)."""
from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from flowdppo.prompts import PromptItem

torch.set_num_threads(1)

V_WIDTH, V_LAYERS, V_HEADS, PATCH, IMAGE = 64, 2, 4, 8, 32
T_WIDTH, T_LAYERS, T_HEADS, CTX, VOCAB = 48, 2, 4, 16, 100
EMBED = 32
ATOL = RTOL = 1e-5


# ----------------------------------------------------------------------------------------------------
# A random open_clip-named state dict and the independent open_clip forward
# ----------------------------------------------------------------------------------------------------
def _blocks(sd, prefix, width, layers, g):
    r = lambda *s: torch.randn(*s, generator=g)       # noqa: E731
    for i in range(layers):
        p = f"{prefix}{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + 0.2 * r(width), 0.2 * r(width)
        # large q/k weights: peaked attention, so a q/k mix-up or a wrong head split shows in the outputs
        sd[p + "attn.in_proj_weight"] = r(3 * width, width) * 2.0 * width ** -0.5
        sd[p + "attn.in_proj_bias"] = 0.2 * r(3 * width)
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = r(width, width) * width ** -0.5, 0.1 * r(width)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = r(4 * width, width) * width ** -0.5, 0.5 * r(4 * width)
        sd[p + "mlp.c_proj.weight"] = r(width, 4 * width) * (4 * width) ** -0.5
        sd[p + "mlp.c_proj.bias"] = 0.1 * r(width)


def open_clip_state(vocab: int = VOCAB, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under open_clip's ViT CLIP names (incl. its causal attn_mask buffer)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)       # noqa: E731
    grid = IMAGE // PATCH
    sd = {"visual.class_embedding": 0.5 * r(V_WIDTH), "visual.positional_embedding": 0.5 * r(grid * grid + 1, V_WIDTH),
          "visual.conv1.weight": r(V_WIDTH, 3, PATCH, PATCH) * (3 * PATCH * PATCH) ** -0.5,
          "visual.ln_pre.weight": 1 + 0.2 * r(V_WIDTH), "visual.ln_pre.bias": 0.2 * r(V_WIDTH),
          "visual.ln_post.weight": 1 + 0.2 * r(V_WIDTH), "visual.ln_post.bias": 0.2 * r(V_WIDTH),
          "visual.proj": r(V_WIDTH, EMBED) * V_WIDTH ** -0.5,
          "token_embedding.weight": r(vocab, T_WIDTH), "positional_embedding": 0.5 * r(CTX, T_WIDTH),
          "ln_final.weight": 1 + 0.2 * r(T_WIDTH), "ln_final.bias": 0.2 * r(T_WIDTH),
          "text_projection": r(T_WIDTH, EMBED) * T_WIDTH ** -0.5, "logit_scale": torch.tensor(math.log(100.0)),
          "attn_mask": torch.full((CTX, CTX), float("-inf")).triu_(1)}
    _blocks(sd, "visual.transformer.resblocks.", V_WIDTH, V_LAYERS, g)
    _blocks(sd, "transformer.resblocks.", T_WIDTH, T_LAYERS, g)
    return sd


def _ln(sd, p, x):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)


def _residual_block(sd, p, x, heads, attn_mask=None):
    """open_clip ResidualAttentionBlock on x [L, N, D] (nn.MultiheadAttention's sequence-first layout)."""
    h = _ln(sd, p + "ln_1", x)
    a, _ = F.multi_head_attention_forward(
        h, h, h, embed_dim_to_check=x.shape[-1], num_heads=heads,
        in_proj_weight=sd[p + "attn.in_proj_weight"], in_proj_bias=sd[p + "attn.in_proj_bias"],
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=sd[p + "attn.out_proj.weight"], out_proj_bias=sd[p + "attn.out_proj.bias"],
        training=False, need_weights=False, attn_mask=attn_mask)
    x = x + a
    h = _ln(sd, p + "ln_2", x)
    h = F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))   # nn.GELU: exact erf GELU
    return x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])


def oracle_encode_image(sd, pixels, heads=V_HEADS):
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])   # [N, W, g, g]
    x = x.flatten(2).permute(0, 2, 1)                                                            # [N, g², W]
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln(sd, "visual.ln_pre", x).permute(1, 0, 2)
    n_layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("visual.transformer.resblocks."))
    for i in range(n_layers):
        x = _residual_block(sd, f"visual.transformer.resblocks.{i}.", x, heads)
    x = x.permute(1, 0, 2)
    return _ln(sd, "visual.ln_post", x[:, 0]) @ sd["visual.proj"]


def oracle_encode_text(sd, ids, heads=T_HEADS):
    """ids [N, ctx] padded like open_clip's tokenizer (zeros after end-of-text), causal mask, features at
    argmax(ids) — the end-of-text token, the largest id."""
    ctx = sd["positional_embedding"].shape[0]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    mask = torch.full((ctx, ctx), float("-inf")).triu_(1)
    x = x.permute(1, 0, 2)
    n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    for i in range(n_layers):
        x = _residual_block(sd, f"transformer.resblocks.{i}.", x, heads, attn_mask=mask)
    x = _ln(sd, "ln_final", x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


def oracle_hps(sd, pixels, ids):
    """HPSv2 (hpsv2/img_score.py): diag(normalised image features @ normalised text features^T)."""
    img = F.normalize(oracle_encode_image(sd, pixels), dim=-1)
    txt = F.normalize(oracle_encode_text(sd, ids), dim=-1)
    return torch.diagonal(img @ txt.T)


def _text_ids(vocab=VOCAB, lengths=(3, 9, CTX - 2), seed=1):
    """[bos, tokens…, eot, 0, 0, …] rows of length CTX (open_clip pads with 0); eot = vocab - 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), CTX, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0] = vocab - 2
        ids[row, 1:n + 1] = torch.randint(0, vocab - 2, (n,), generator=g)
        ids[row, n + 1] = vocab - 1
    return ids


def _hf_features(model, pixels, ids):
    """transformers side, as the reward computes it: vision tower + projection; text cut to the longest
    prompt with an attention mask (what tokenizer padding=True gives)."""
    eot = ids.argmax(-1)
    length = int(eot.max()) + 1
    mask = (torch.arange(length)[None] <= eot[:, None]).long()
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        txt = model.text_projection(model.text_model(input_ids=ids[:, :length], attention_mask=mask).pooler_output)
    return img, txt


def _converted_model(sd, **config_kw):
    from transformers import CLIPModel

    from flowdppo.rewards.hpsv2_convert import clip_config_for, convert_open_clip_state_dict
    cfg = clip_config_for(sd, vision_heads=V_HEADS, text_heads=T_HEADS, **config_kw)
    model = CLIPModel(cfg).eval()
    model.load_state_dict(convert_open_clip_state_dict(sd, cfg), strict=True)
    return model


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------
def test_config_is_read_from_the_shapes():
    from flowdppo.rewards.hpsv2_convert import clip_config_for
    cfg = clip_config_for(open_clip_state(), vision_heads=V_HEADS, text_heads=T_HEADS)
    vc, tc = cfg.vision_config, cfg.text_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.patch_size, vc.image_size,
            vc.intermediate_size) == (V_WIDTH, V_LAYERS, V_HEADS, PATCH, IMAGE, 4 * V_WIDTH)
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.max_position_embeddings, tc.vocab_size,
            tc.intermediate_size, tc.eos_token_id) == (T_WIDTH, T_LAYERS, T_HEADS, CTX, VOCAB, 4 * T_WIDTH, VOCAB - 1)
    assert cfg.projection_dim == EMBED
    assert vc.hidden_act == tc.hidden_act == "gelu" and vc.layer_norm_eps == tc.layer_norm_eps == 1e-5


def test_converted_clipmodel_matches_the_independent_open_clip_forward():
    sd = open_clip_state()
    model = _converted_model(sd)
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    ids = _text_ids()
    img, txt = _hf_features(model, pixels, ids)
    with torch.no_grad():
        o_img, o_txt = oracle_encode_image(sd, pixels), oracle_encode_text(sd, ids)
        o_hps = oracle_hps(sd, pixels, ids)
    assert o_img.abs().mean() > 0.1 and o_txt.abs().mean() > 0.1          # non-degenerate features
    torch.testing.assert_close(img, o_img, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(txt, o_txt, atol=ATOL, rtol=RTOL)
    hps = (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)
    torch.testing.assert_close(hps, o_hps, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(model.logit_scale.detach(), sd["logit_scale"])

    # the comparison is sharp enough to catch the likely mapping mistakes
    swapped = dict(sd)
    w = sd["transformer.resblocks.1.attn.in_proj_weight"]
    q, k, v = w.chunk(3)
    swapped["transformer.resblocks.1.attn.in_proj_weight"] = torch.cat([k, q, v])
    bad_txt = _hf_features(_converted_model(swapped), pixels, ids)[1]    # q and k exchanged in one layer
    assert (bad_txt - o_txt).abs().max() > 1e-2
    bad_img = _hf_features(_converted_model(sd, quick_gelu=True), pixels, ids)[0]     # QuickGELU instead of GELU
    assert (bad_img - o_img).abs().max() > 1e-3


def test_wrapped_and_prefixed_checkpoints_convert_and_missing_or_extra_keys_are_named(tmp_path):
    from flowdppo.rewards.hpsv2_convert import (ConversionError, clip_config_for, convert_open_clip_state_dict,
                                                load_open_clip_checkpoint, unwrap_state_dict)
    sd = open_clip_state()
    cfg = clip_config_for(sd, vision_heads=V_HEADS, text_heads=T_HEADS)
    ref = convert_open_clip_state_dict(sd, cfg)
    for wrapped in ({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3},
                    {"module." + k: v for k, v in sd.items()}, {"state_dict": sd}):
        got = convert_open_clip_state_dict(unwrap_state_dict(wrapped), cfg)
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ckpt.pt")
    assert load_open_clip_checkpoint(tmp_path / "ckpt.pt").keys() == sd.keys()

    missing = {k: v for k, v in sd.items() if k != "transformer.resblocks.1.mlp.c_fc.bias"}
    with pytest.raises(ConversionError, match=re.escape("missing 1 key(s): transformer.resblocks.1.mlp.c_fc.bias")):
        convert_open_clip_state_dict(missing, cfg)
    with pytest.raises(ConversionError, match=re.escape("'visual.proj'")):
        clip_config_for({k: v for k, v in sd.items() if k != "visual.proj"}, vision_heads=V_HEADS, text_heads=T_HEADS)
    extra = sd | {"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(V_WIDTH)}     # layer scale: not plain CLIP
    with pytest.raises(ConversionError, match=re.escape("unexpected key(s)") + ".*ls_1.gamma"):
        convert_open_clip_state_dict(extra, cfg)
    shaped = sd | {"transformer.resblocks.0.attn.in_proj_bias": torch.zeros(T_WIDTH)}
    with pytest.raises(ConversionError, match=re.escape("transformer.resblocks.0.attn.in_proj_bias (48,)")):
        convert_open_clip_state_dict(shaped, cfg)
    with pytest.raises(ConversionError, match="state dict"):
        unwrap_state_dict({"state_dict": {"a": 1}})


def test_vit_h_14_key_and_shape_mapping_on_meta_tensors():
    """The full-size HPSv2 architecture: config inferred with default heads, every converted key and shape
    equal to transformers' CLIPModel's (meta tensors: no memory, no values)."""
    from transformers import CLIPModel

    from flowdppo.rewards.hpsv2_convert import clip_config_for, convert_open_clip_state_dict
    m = lambda *s: torch.empty(s, device="meta")      # noqa: E731
    sd = {"visual.class_embedding": m(1280), "visual.positional_embedding": m(257, 1280),
          "visual.conv1.weight": m(1280, 3, 14, 14), "visual.proj": m(1280, 1024),
          "token_embedding.weight": m(49408, 1024), "positional_embedding": m(77, 1024),
          "text_projection": m(1024, 1024), "logit_scale": m(), "attn_mask": m(77, 77)}
    for ln in ("visual.ln_pre", "visual.ln_post"):
        sd |= {ln + ".weight": m(1280), ln + ".bias": m(1280)}
    sd |= {"ln_final.weight": m(1024), "ln_final.bias": m(1024)}
    for prefix, w, layers in (("visual.transformer.resblocks.", 1280, 32), ("transformer.resblocks.", 1024, 24)):
        for i in range(layers):
            p = f"{prefix}{i}."
            sd |= {p + "ln_1.weight": m(w), p + "ln_1.bias": m(w), p + "ln_2.weight": m(w), p + "ln_2.bias": m(w),
                   p + "attn.in_proj_weight": m(3 * w, w), p + "attn.in_proj_bias": m(3 * w),
                   p + "attn.out_proj.weight": m(w, w), p + "attn.out_proj.bias": m(w),
                   p + "mlp.c_fc.weight": m(4 * w, w), p + "mlp.c_fc.bias": m(4 * w),
                   p + "mlp.c_proj.weight": m(w, 4 * w), p + "mlp.c_proj.bias": m(w)}
    cfg = clip_config_for(sd)
    vc, tc = cfg.vision_config, cfg.text_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.patch_size, vc.image_size,
            vc.intermediate_size, vc.hidden_act) == (1280, 32, 16, 14, 224, 5120, "gelu")
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.max_position_embeddings, tc.vocab_size,
            tc.intermediate_size, tc.eos_token_id, tc.hidden_act) == (1024, 24, 16, 77, 49408, 4096, 49407, "gelu")
    assert cfg.projection_dim == 1024
    with torch.device("meta"):
        model = CLIPModel(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in convert_open_clip_state_dict(sd, cfg).items()}
    assert got == want


def _tiny_eot_last_tokenizer(path):
    """A byte-level CLIP BPE tokenizer built offline like flowdppo/testing/tiny_pipelines.tiny_clip_tokenizer, but
    with CLIP's id layout: <|startoftext|> and <|endoftext|> are the two last ids (eot = largest)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {}
    for c in bytes_to_unicode().values():
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = CTX
    tok.save_pretrained(path)
    return tok


def test_cli_round_trip_and_the_hpsv2_reward_scores_like_the_oracle(tmp_path, capsys):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from flowdppo.rewards.clip_rewards import HPSv2Reward
    from flowdppo.rewards.common import clip_pixel_values
    from flowdppo.rewards.hpsv2_convert import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, main
    tok = _tiny_eot_last_tokenizer(tmp_path / "tok")
    sd = open_clip_state(vocab=len(tok), seed=3)
    src, out = tmp_path / "HPS_tiny_compressed.pt", tmp_path / "hps_hf"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, src)
    assert main([str(src), str(out), "--tokenizer", str(tmp_path / "tok"), "--vision-heads", str(V_HEADS),
                 "--text-heads", str(T_HEADS)]) == 0
    assert "wrote" in capsys.readouterr().out

    model = CLIPModel.from_pretrained(out).eval()
    ref = _converted_model(sd).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    ip, tok_out = AutoImageProcessor.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert (ip.size["shortest_edge"], ip.crop_size["height"], int(ip.resample)) == (IMAGE, IMAGE, 3)   # 3 = bicubic
    assert tuple(ip.image_mean) == OPENAI_CLIP_MEAN and tuple(ip.image_std) == OPENAI_CLIP_STD
    assert tok_out.eos_token_id == len(tok) - 1 and tok_out.model_max_length == CTX

    # the reward on the converted directory = the oracle's HPS on the same pixels and token ids
    hps = HPSv2Reward(model=str(out), device="cpu", batch_size=2)
    items = [PromptItem("a cat"), PromptItem("two red cups on a table"), PromptItem("x")]
    images = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(4))
    scores = hps(images, items)
    ids = tok([it.text for it in items], padding="max_length", max_length=CTX, truncation=True,
              return_tensors="pt")["input_ids"]
    ids = ids * (torch.arange(CTX) <= ids.argmax(-1, keepdim=True))      # open_clip pads with 0 after eot
    pixels = clip_pixel_values(images, size=IMAGE, crop=IMAGE, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    with torch.no_grad():
        torch.testing.assert_close(scores, oracle_hps(sd, pixels, ids), atol=ATOL, rtol=RTOL)


def test_cli_errors_are_clear(tmp_path, capsys):
    from flowdppo.rewards.hpsv2_convert import main
    tok_dir = tmp_path / "tok"
    tok = _tiny_eot_last_tokenizer(tok_dir)
    sd = open_clip_state(vocab=len(tok))
    del sd["visual.transformer.resblocks.1.ln_2.weight"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "broken.pt"), str(tmp_path / "out"), "--tokenizer", str(tok_dir), "--vision-heads", "4",
              "--text-heads", "4"])
    assert e.value.code == 2
    assert "visual.transformer.resblocks.1.ln_2.weight" in capsys.readouterr().err
    torch.save(open_clip_state(vocab=VOCAB), tmp_path / "small_vocab.pt")         # tokenizer eot ≠ vocab - 1
    with pytest.raises(SystemExit):
        main([str(tmp_path / "small_vocab.pt"), str(tmp_path / "out"), "--tokenizer", str(tok_dir),
              "--vision-heads", "4", "--text-heads", "4"])
    assert "end-of-text id" in capsys.readouterr().err
    # the real entry point, in a child process: a missing checkpoint is reported before any tokenizer lookup
    r = subprocess.run([sys.executable, "-m", "flowdppo.rewards.hpsv2_convert", str(tmp_path / "nope.pt"),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_hpsv2_reward_points_to_the_converter(tmp_path):
    from flowdppo.rewards.clip_rewards import HPSv2Reward
    from flowdppo.rewards.registry import make_reward
    with pytest.raises(ValueError, match="flowdppo.rewards.hpsv2_convert"):
        make_reward("hpsv2")
    with pytest.raises(ValueError, match="hpsv2_convert"):
        HPSv2Reward(model=str(tmp_path / "HPS_v2.1_compressed.pt"))
