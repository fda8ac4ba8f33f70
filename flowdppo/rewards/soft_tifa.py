"""GenEval2-style Soft-TIFA with a vision-language model (paper §4, App. F: Qwen/Qwen3-VL-8B-Instruct, "gm").

For an image and its prompt item, each atom is a VQA question with an expected answer
(item.meta["answers"], default "Yes").  The VLM is asked "{question} Answer in one word." and the atom's
score is the probability of the expected answer at the FIRST generated token — summed over the distinct
first tokens of its surface forms ("Yes"/"yes"/" Yes"/" yes"; a count also as its digit / number word).
The image's reward is the geometric mean over atoms (Soft-TIFA_GM; "am" = arithmetic mean).

    p(atom) = Σ_{t ∈ first_tokens(answer forms)} softmax(logits_next)[t]
    reward  = exp(mean_atoms log p(atom))

Implementation: the tokenizer's chat template renders each (image, question) pair, the image processor
gives the patches and grid, and the image placeholder is expanded to grid_t·grid_h·grid_w / merge² tokens
(what the Qwen-VL processors do).  The processor class itself is not used: without torchvision its
video half cannot be constructed in transformers 5.  All (image, atom) pairs of a batch go through the
model left-padded, `batch_size` pairs per forward, under no_grad.

Items without atoms are an error, never a silent 0.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..prompts import PromptItem
from .base import check_scores
from .common import check_images, resolve_device, resolve_dtype, to_pil

SOFT_TIFA_MODEL = "Qwen/Qwen3-VL-8B-Instruct"
QUESTION_TEMPLATE = "{question} Answer in one word."
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def answer_surface_forms(answer: str) -> tuple[str, ...]:
    """The spellings whose first token counts as the expected answer (order kept, duplicates removed)."""
    a = answer.strip()
    base = [a, a.capitalize(), a.lower()]
    low = a.lower()
    if low in _NUMBER_WORDS:
        base.append(str(_NUMBER_WORDS.index(low)))
    elif a.isdigit() and int(a) < len(_NUMBER_WORDS):
        word = _NUMBER_WORDS[int(a)]
        base += [word, word.capitalize()]
    forms = base + [" " + f for f in base]
    return tuple(dict.fromkeys(forms))


def aggregate(log_probs: Tensor, how: str) -> Tensor:
    """Per-image score from per-atom log-probabilities [A]: "gm" = exp(mean log p), "am" = mean p."""
    if how == "gm":
        return log_probs.mean().exp()
    if how == "am":
        return log_probs.exp().mean()
    raise ValueError(f"aggregation={how!r}: use 'gm' (Soft-TIFA_GM, the paper's) or 'am'")


def _load_chat_template(tokenizer, model: str) -> str:
    """The tokenizer's chat template, else chat_template.json / .jinja shipped next to the processor."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    for name in ("chat_template.jinja", "chat_template.json"):
        local = Path(model) / name
        path = local if local.is_file() else None
        if path is None and not Path(model).exists():
            try:
                from huggingface_hub import hf_hub_download
                path = Path(hf_hub_download(model, name))
            except Exception:  # noqa: BLE001 — the file is optional; try the next name
                path = None
        if path is not None:
            text = path.read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    raise ValueError(f"{model!r} has no chat template (tokenizer, chat_template.jinja or chat_template.json)")


class SoftTifaVLMReward:
    """Soft-TIFA_GM with a Qwen-VL-style model loaded by hub id or path (see module docstring)."""

    name = "geneval2_vlm"

    def __init__(self, model: str = SOFT_TIFA_MODEL, *, device: Optional[str] = None, dtype: str = "bfloat16",
                 batch_size: int = 16, aggregation: str = "gm", question_template: str = QUESTION_TEMPLATE,
                 image_token: str = "<|image_pad|>"):
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
        if aggregation not in ("gm", "am"):
            raise ValueError(f"aggregation={aggregation!r}: use 'gm' or 'am'")
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.aggregation = aggregation
        self.question_template = question_template
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"   # the next-token logits are then at position -1 for every row
        self.image_processor = AutoImageProcessor.from_pretrained(model)
        self.chat_template = _load_chat_template(self.tokenizer, model)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=resolve_dtype(dtype)).to(self.device)
        self.model.eval().requires_grad_(False)
        self.image_token = image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"{model!r}: tokenizer has no image placeholder token {image_token!r}")
        self.merge_size = int(getattr(self.image_processor, "merge_size", 2))
        self._wants_mm_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters
        self._answer_ids: dict[str, list[int]] = {}

    def answer_token_ids(self, answer: str) -> list[int]:
        """Distinct first-token ids of the answer's surface forms."""
        if answer not in self._answer_ids:
            ids = []
            for form in answer_surface_forms(answer):
                enc = self.tokenizer.encode(form, add_special_tokens=False)
                if enc:
                    ids.append(enc[0])
            if not ids:
                raise ValueError(f"answer {answer!r} tokenizes to nothing")
            self._answer_ids[answer] = list(dict.fromkeys(ids))
        return self._answer_ids[answer]

    def render(self, question: str) -> str:
        """The chat-formatted text of one (image, question) query, before placeholder expansion."""
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.question_template.format(question=question)}]}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  chat_template=self.chat_template)

    @torch.no_grad()
    def answer_log_probs(self, images: list, questions: list[str], answers: list[str]) -> Tensor:
        """log p(expected first token) for each (PIL image, question, answer) triple → [N] float32."""
        out = []
        for i in range(0, len(images), self.batch_size):
            imgs, qs, ans = images[i:i + self.batch_size], questions[i:i + self.batch_size], answers[i:i + self.batch_size]
            vis = self.image_processor(images=imgs, return_tensors="pt")
            grid = vis["image_grid_thw"]
            texts = []
            for q, thw in zip(qs, grid):
                n_tokens = int(thw.prod()) // self.merge_size ** 2
                texts.append(self.render(q).replace(self.image_token, self.image_token * n_tokens, 1))
            tok = self.tokenizer(texts, padding=True, return_tensors="pt")
            inputs = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
                      "pixel_values": vis["pixel_values"].to(self.model.dtype), "image_grid_thw": grid}
            if self._wants_mm_types:  # 1 marks image tokens for the multimodal RoPE (transformers ≥ 5.2x)
                inputs["mm_token_type_ids"] = (tok["input_ids"] == self.image_token_id).int()
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            logits = self.model(**inputs).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, a in zip(logp, ans):
                out.append(torch.logsumexp(row[self.answer_token_ids(a)], dim=0).cpu())
        return torch.stack(out)

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        check_images(self.name, images, len(items))
        pil = to_pil(images)
        flat_img, flat_q, flat_a, owner = [], [], [], []
        for k, (img, it) in enumerate(zip(pil, items)):
            if not it.atoms:
                raise ValueError(f"reward {self.name!r}: prompt {it.text!r} has no atoms (VQA questions); load "
                                 "GenEval2-style JSONL with 'vqa_list' / 'atoms'")
            answers = it.meta.get("answers") or ["Yes"] * len(it.atoms)
            for q, a in zip(it.atoms, answers):
                flat_img.append(img)
                flat_q.append(q)
                flat_a.append(str(a))
                owner.append(k)
        logp = self.answer_log_probs(flat_img, flat_q, flat_a)
        owner_t = torch.tensor(owner)
        scores = torch.stack([aggregate(logp[owner_t == k], self.aggregation) for k in range(len(items))])
        return check_scores(self.name, scores, len(items))


__all__ = ["SoftTifaVLMReward", "answer_surface_forms", "aggregate", "SOFT_TIFA_MODEL", "QUESTION_TEMPLATE"]
