"""CLIP-family preference rewards: PickScore, CLIP score, HPSv2 — one transformers CLIPModel each.

    score = scale · cos(image_embedding, text_embedding)

  PickScore   yuvalkirstain/PickScore_v1 (processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K);
              scale = the model's exp(logit_scale) (≈ 100), i.e. the ~20–23 values the paper reports.
  CLIP score  openai/clip-vit-large-patch14; scale 1 (plain cosine, ≈ 0.25–0.38 in the paper's tables).
  HPSv2(.1)   an open_clip ViT-H-14 fine-tune; scale 1 (HPSv2's score is the cosine, no logit_scale).
              Runs from a transformers CLIPModel directory made once by
              `python -m flowdppo.rewards.hpsv2_convert HPS_v2.1_compressed.pt OUT` (see hpsv2_convert).

Images are preprocessed in torch on the reward's device (`common.clip_pixel_values`, using the
processor's size / crop / mean / std) so a batch never round-trips through PIL.  Scoring is batched
(`batch_size` images per forward) and runs under no_grad.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..prompts import PromptItem
from .base import check_scores
from .common import check_images, clip_pixel_values, resolve_device, resolve_dtype

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_MODEL = "openai/clip-vit-large-patch14"
HPSV2_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _size_of(value, *keys: str) -> int:
    """An image-processor size entry (an int, a dict or transformers' SizeDict) → the first of `keys` set."""
    if isinstance(value, (int, float)):
        return int(value)
    for key in keys:
        v = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if v:
            return int(v)
    raise ValueError(f"image processor size {value!r} has none of {keys}")


class ClipSimilarityReward:
    """scale · cosine similarity between CLIP image and prompt-text embeddings, one float per image."""

    def __init__(self, name: str, model: str, processor: Optional[str] = None, *, use_logit_scale: bool = False,
                 device: Optional[str] = None, dtype: str = "float32", batch_size: int = 32):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
        self.name = name
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        processor = processor or model
        self.tokenizer = AutoTokenizer.from_pretrained(processor)
        ip = AutoImageProcessor.from_pretrained(processor)
        self._pre = dict(size=_size_of(ip.size, "shortest_edge", "height"),
                         crop=_size_of(ip.crop_size, "height", "shortest_edge"),
                         mean=list(ip.image_mean), std=list(ip.image_std))
        self.model = CLIPModel.from_pretrained(model, dtype=resolve_dtype(dtype)).to(self.device).eval()
        self.model.requires_grad_(False)
        self.use_logit_scale = use_logit_scale
        self._max_len = min(int(self.tokenizer.model_max_length), int(self.model.config.text_config.max_position_embeddings))

    @torch.no_grad()
    def _embed_images(self, images: Tensor) -> Tensor:
        # vision tower + projection directly: stable across transformers versions (get_image_features
        # changed its return type in v5)
        px = clip_pixel_values(images.to(self.device), **self._pre).to(self.model.dtype)
        pooled = self.model.vision_model(pixel_values=px).pooler_output
        return torch.nn.functional.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def _embed_texts(self, texts: Sequence[str]) -> Tensor:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self._max_len,
                             return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
        return torch.nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        check_images(self.name, images, len(items))
        scale = self.model.logit_scale.exp().float() if self.use_logit_scale else 1.0
        out = []
        for i in range(0, len(items), self.batch_size):
            img = self._embed_images(images[i:i + self.batch_size])
            txt = self._embed_texts([it.text for it in items[i:i + self.batch_size]])
            out.append((scale * (img * txt).sum(-1)).cpu())
        return check_scores(self.name, torch.cat(out), len(items))


class PickScoreReward(ClipSimilarityReward):
    """PickScore (Kirstain et al. 2023): exp(logit_scale)·cos — the raw values (~20–23) of the paper."""

    def __init__(self, model: str = PICKSCORE_MODEL, processor: Optional[str] = PICKSCORE_PROCESSOR, **kwargs):
        super().__init__("pickscore", model, processor, use_logit_scale=True, **kwargs)


class ClipScoreReward(ClipSimilarityReward):
    """CLIP score as the paper tracks it: the plain cosine similarity (no ×100, no clamp at 0)."""

    def __init__(self, model: str = CLIP_MODEL, processor: Optional[str] = None, **kwargs):
        super().__init__("clip", model, processor, use_logit_scale=False, **kwargs)


HPSV2_BLOCKED = (
    "HPSv2/HPSv2.1 is published only as an open_clip checkpoint (hub xswu/HPSv2, HPS_v2.1_compressed.pt) "
    "and open_clip needs torchvision, which cannot be installed beside torch 2.13 on these machines. "
    "Convert the checkpoint once into a transformers CLIPModel directory with "
    "`python -m flowdppo.rewards.hpsv2_convert HPS_v2.1_compressed.pt OUT_DIR "
    "[--tokenizer laion/CLIP-ViT-H-14-laion2B-s32B-b79K or a local copy]` and pass "
    "make_reward('hpsv2', model=OUT_DIR).  The score is then HPSv2's own: the cosine of the image and "
    "text embeddings.")


class HPSv2Reward(ClipSimilarityReward):
    """HPSv2 from weights converted to a transformers CLIPModel (`flowdppo.rewards.hpsv2_convert`; a local
    directory or hub id).

    Score = cos(image embedding, text embedding), no logit_scale: HPSv2's own scoring code
    (github.com/tgxs002/HPSv2, hpsv2/img_score.py) computes `image_features @ text_features.T` on
    open_clip's `model(image, text)` outputs, which open_clip L2-normalises, and takes the diagonal;
    the logit_scale the model also returns is not used.

    processor: where the tokenizer and image processor come from — by default the model directory
    itself when it has a (pre)processor_config.json (hpsv2_convert writes both), else the laion ViT-H-14
    hub repo.  Raises a ValueError explaining the block (HPSV2_BLOCKED) when no model is given or when
    given the original open_clip checkpoint."""

    def __init__(self, model: Optional[str] = None, processor: Optional[str] = None, **kwargs):
        if model is None:
            raise ValueError("make_reward('hpsv2') needs model=<transformers CLIPModel directory>. " + HPSV2_BLOCKED)
        if Path(model).suffix in (".pt", ".pth", ".bin", ".safetensors") or model.rstrip("/").endswith("xswu/HPSv2"):
            raise ValueError(f"{model!r} is the original open_clip HPSv2 checkpoint, not a transformers "
                             "CLIPModel. " + HPSV2_BLOCKED)
        if processor is None:
            has_own = any((Path(model) / f).is_file() for f in ("preprocessor_config.json", "processor_config.json"))
            processor = model if has_own else HPSV2_PROCESSOR
        super().__init__("hpsv2", model, processor, use_logit_scale=False, **kwargs)
