"""OCR reward with rapidocr (PP-OCR ONNX models shipped inside the wheel: runs offline, on CPU).

    reward = 1 − min(lev(read, target), |target|) / |target|        ∈ [0, 1]

`target` is the text in double quotes in the prompt ('a sign that says "open late"' → "open late"), or
item.meta["ocr_text"] when present.  Both strings are compared case-insensitively with all whitespace
removed (Flow-GRPO's OCR reward convention); `read` is every detected line concatenated in reading
order.  An image where nothing is detected reads as "" (reward 0).  A prompt with no target is an error.
Install with `pip install rapidocr onnxruntime` (the `ocr` extra).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..prompts import PromptItem
from .base import check_scores
from .common import check_images, to_uint8_hwc

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')


def target_text(item: PromptItem) -> str:
    """The text an image should show: meta["ocr_text"], else the quoted spans of the prompt joined."""
    if "ocr_text" in item.meta:
        return str(item.meta["ocr_text"])
    spans = [a or b for a, b in _QUOTED.findall(item.text)]
    if not spans:
        raise ValueError(f"reward 'ocr': prompt {item.text!r} quotes no target text and has no meta['ocr_text']")
    return " ".join(spans)


def normalise(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1), O(|a|·|b|) dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_similarity(read: str, target: str) -> float:
    """1 − normalised edit distance on normalised strings, clipped to [0, 1]."""
    r, t = normalise(read), normalise(target)
    if not t:
        raise ValueError("empty OCR target after normalisation")
    return 1.0 - min(levenshtein(r, t), len(t)) / len(t)


class OCRReward:
    name = "ocr"

    def __init__(self, *, threads: int = 1, text_score: float = 0.5, params: Optional[dict] = None):
        try:
            from rapidocr import RapidOCR
        except ImportError as err:
            raise ImportError("the OCR reward needs `pip install rapidocr onnxruntime` (extra: flowdppo[ocr])") from err
        cfg = {"Global.log_level": "error", "Global.text_score": float(text_score),
               "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
               "EngineConfig.onnxruntime.inter_op_num_threads": 1}
        cfg.update(params or {})
        self.engine = RapidOCR(params=cfg)

    def read(self, image_hwc) -> str:
        """All text rapidocr detects in one uint8 HWC RGB image, lines joined by spaces."""
        out = self.engine(image_hwc)
        txts = getattr(out, "txts", None)
        return " ".join(txts) if txts else ""

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        check_images(self.name, images, len(items))
        targets = [target_text(it) for it in items]   # validate every item before the slow part
        arrays = to_uint8_hwc(images)
        scores = torch.tensor([text_similarity(self.read(a), t) for a, t in zip(arrays, targets)])
        return check_scores(self.name, scores, len(items))
