"""JPEG compressibility (DDPO / Flow-GRPO's toy reward): reward = −(JPEG size in kB) at a fixed quality.

Smaller files — flatter, less detailed images — score higher.  Needs only PIL.  `per_megapixel=True`
divides by the image area (MP) so rewards are comparable across resolutions.
"""
from __future__ import annotations

import io
from typing import Sequence

import torch
from torch import Tensor

from ..prompts import PromptItem
from .base import check_scores
from .common import check_images, to_pil


def jpeg_kilobytes(image, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of a PIL image saved as JPEG at `quality`."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


class JpegCompressibility:
    name = "jpeg"

    def __init__(self, *, quality: int = 95, per_megapixel: bool = False):
        if not 1 <= quality <= 100:
            raise ValueError(f"quality={quality} must be in [1, 100]")
        self.quality = int(quality)
        self.per_megapixel = bool(per_megapixel)

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        check_images(self.name, images, len(items))
        area_mp = images.shape[-1] * images.shape[-2] / 1e6 if self.per_megapixel else 1.0
        scores = torch.tensor([-jpeg_kilobytes(im, self.quality) / area_mp for im in to_pil(images)])
        return check_scores(self.name, scores, len(items))
