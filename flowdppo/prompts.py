"""Prompt items: the text a model is conditioned on plus the structured atoms a compositional reward
checks (GenEval2-style).  `meta` holds anything else a reward or metric needs (e.g. the digit layout of
the embedded world)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptItem:
    text: str
    atoms: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
