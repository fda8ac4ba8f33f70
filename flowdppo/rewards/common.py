"""Small helpers shared by the rewards: device choice, tensor → PIL, CLIP-style image preprocessing."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: Optional[str]) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def check_images(name: str, images: Tensor, n_items: int) -> None:
    """images must be [B, 3, H, W] in [0, 1] with one prompt item per image."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"reward {name!r} expects images [B, 3, H, W], got {tuple(images.shape)}")
    if images.shape[0] != n_items:
        raise ValueError(f"reward {name!r}: {images.shape[0]} images but {n_items} prompt items")


def to_uint8_hwc(images: Tensor) -> np.ndarray:
    """[B, C, H, W] in [0, 1] → uint8 [B, H, W, 3] (grey images repeated to RGB), rounding like PIL."""
    x = images.detach().float().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: Tensor) -> list:
    from PIL import Image
    return [Image.fromarray(a) for a in to_uint8_hwc(images)]


def clip_pixel_values(images: Tensor, *, size: int, crop: int, mean, std) -> Tensor:
    """CLIP preprocessing in torch: resize the short side to `size` (bicubic, antialiased), centre-crop
    `crop`×`crop`, normalise.  Equivalent to CLIPImageProcessor up to resampling details (it resizes a
    uint8 PIL image); works batched on the images' device."""
    x = images.float().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    # short side → size, long side → floor(size·long/short), as transformers' resize computes it
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    nh, nw = max(crop, nh), max(crop, nw)
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    x = x[..., top:top + crop, left:left + crop]
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
