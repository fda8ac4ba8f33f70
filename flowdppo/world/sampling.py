"""Batch layout helper of the embedded world."""
from __future__ import annotations

from typing import Sequence

from ..prompts import PromptItem


def expand_items(items: Sequence[PromptItem], group_size: int) -> list[PromptItem]:
    """Repeat each item group_size times consecutively (prompt-major, as every batch of the trainer and the
    evaluation)."""
    return [it for it in items for _ in range(group_size)]
