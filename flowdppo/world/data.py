"""Digits, layouts, canvases and prompts of the embedded world.

The canvas is a 2×2 grid of 8×8 cells (16×16, one channel).  A *layout* is a tuple of four cell
contents in reading order (top left, top right, bottom left, bottom right); each is a digit 0–9 or
EMPTY.  Every prompt determines exactly one layout, so each cell is one checkable atom.  Wordings:
  places     "a 3 top left and an 8 bottom right"            (pretraining only)
  relations  "a 7 right of a 3, and a 1 below the 3"          (in-domain: RL train/test)
  rows       "top row 3 and 7, bottom row 1 and 8"            (out-of-domain: full grids)

Splits of sklearn's 1797 digit images (seeded permutation, fixed forever):
  gen    60 %  the generator's pretraining pixels and the realism reference set
  cls    20 %  trains the in-domain reward classifier ("tifa")
  judge  20 %  trains the independent judge ("agreement")
"""
from __future__ import annotations

import functools
import itertools
import random
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..prompts import PromptItem

EMPTY = -1
BLANK_CLASS = 10            # classifier class index for an empty cell
NUM_CLASSES = 11            # digits 0–9 + blank
CELL = 8                    # cell side in pixels
CANVAS = (1, 16, 16)        # (C, H, W)
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
CELL_SLICES = tuple((slice(r * CELL, (r + 1) * CELL), slice(c * CELL, (c + 1) * CELL))
                    for r in range(2) for c in range(2))

Layout = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------------
# Digit images
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def digit_splits() -> dict[str, tuple[Tensor, Tensor]]:
    """{"gen", "cls", "judge"} → (images [N, 8, 8] float32 in [0, 1], labels [N] int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.as_tensor(d.images / 16.0, dtype=torch.float32)
    labels = torch.as_tensor(d.target, dtype=torch.int64)
    perm = torch.as_tensor(np.random.RandomState(0).permutation(len(labels)))
    n_gen, n_cls = int(0.6 * len(perm)), int(0.2 * len(perm))
    parts = {"gen": perm[:n_gen], "cls": perm[n_gen:n_gen + n_cls], "judge": perm[n_gen + n_cls:]}
    return {k: (images[idx], labels[idx]) for k, idx in parts.items()}


def blank_cells(n: int, generator: torch.Generator) -> Tensor:
    """Empty cells as classifier training examples: zero ink plus faint speckle ([n, 8, 8] in [0, 1]),
    so a near-blank generated cell reads as blank rather than as the nearest digit."""
    amp = torch.rand(n, 1, 1, generator=generator) * 0.15
    return torch.rand(n, CELL, CELL, generator=generator) * amp * (torch.rand(n, CELL, CELL, generator=generator) < 0.3)


def cells_of(images: Tensor) -> Tensor:
    """Cut canvases [B, 1, 16, 16] into cells [B, 4, 8, 8] (reading order)."""
    if images.shape[1:] != CANVAS:
        raise ValueError(f"expected images of shape [B, {CANVAS}], got {tuple(images.shape)}")
    return torch.stack([images[:, 0, rs, cs] for rs, cs in CELL_SLICES], dim=1)


class CanvasSampler:
    """Composes canvases for layouts from one split's digit images (a random instance per cell)."""

    def __init__(self, split: str = "gen"):
        self.images, self.labels = digit_splits()[split]
        self.by_class = [torch.nonzero(self.labels == k).flatten() for k in range(10)]

    def __call__(self, layouts: Sequence[Layout], generator: torch.Generator) -> Tensor:
        out = torch.zeros(len(layouts), *CANVAS)
        for b, layout in enumerate(layouts):
            for cell, digit in enumerate(layout):
                if digit == EMPTY:
                    continue
                pool = self.by_class[digit]
                pick = pool[int(torch.randint(len(pool), (1,), generator=generator))]
                rs, cs = CELL_SLICES[cell]
                out[b, 0, rs, cs] = self.images[pick]
        return out


# ----------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------
def _article(d: int) -> str:
    return f"an {d}" if d == 8 else f"a {d}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def text_places(layout: Layout) -> str:
    """The place template (pretraining, in-domain): "a 3 top left, a 7 top right and a 1 bottom left"."""
    return _join([f"{_article(d)} {POSITIONS[i]}" for i, d in enumerate(layout) if d != EMPTY])


def text_rows(layout: Layout) -> str:
    """The row template (pretraining, out-of-domain), full grids only: "top row 3 and 7, bottom row 1 and 8"."""
    if EMPTY in layout:
        raise ValueError("the row template describes full grids only")
    return f"top row {layout[0]} and {layout[1]}, bottom row {layout[2]} and {layout[3]}"


# Cell geometry: (row, col) of each cell in reading order.
_RC = ((0, 0), (0, 1), (1, 0), (1, 1))
RELATION_VARIANTS = 8


def _relation(a: int, b: int) -> str:
    """The relation word for cell a relative to an adjacent cell b ("a {A} <rel> a {B}")."""
    (ra, ca), (rb, cb) = _RC[a], _RC[b]
    if ra == rb:
        return "left of" if ca < cb else "right of"
    return "above" if ra < rb else "below"


def text_relations(layout: Layout, variant: int = 0) -> str:
    """The relation template (in-domain): three distinct digits in an L, described only by relations
    to each other, e.g. "a 7 right of a 3, and a 1 below the 3".  The corner cell (the one diagonal to
    the empty cell) is adjacent to both others; clause 1 relates the corner to one neighbour, clause 2
    places the other neighbour relative to "the" corner digit.  Neither clause alone fixes any cell:
    the model must combine both (binding + reasoning).  variant ∈ [0, 8) picks which neighbour clause 1
    uses, which digit is its subject, and the clause-2 wording."""
    if sum(d == EMPTY for d in layout) != 1:
        raise ValueError("the relation template describes exactly three digits")
    digits = [d for d in layout if d != EMPTY]
    if len(set(digits)) != 3:
        raise ValueError("the relation template needs three distinct digits (it refers to 'the 3')")
    hole = layout.index(EMPTY)
    corner = 3 - hole                                        # the cell diagonal to the hole
    horiz = corner ^ 1                                       # same row, other column
    vert = corner ^ 2                                        # same column, other row
    first, second = (horiz, vert) if variant & 1 == 0 else (vert, horiz)
    a, b = (corner, first) if variant & 2 == 0 else (first, corner)
    clause1 = f"{_article(layout[a])} {_relation(a, b)} {_article(layout[b])}"
    if variant & 4 == 0:
        clause2 = f"{_article(layout[second])} {_relation(second, corner)} the {layout[corner]}"
    else:
        clause2 = f"the {layout[corner]} {_relation(corner, second)} {_article(layout[second])}"
    return f"{clause1}, and {clause2}"


TEMPLATES = {"places": text_places, "rows": text_rows, "relations": text_relations}


def atoms_of(layout: Layout) -> tuple[str, ...]:
    """One atom per cell: the digit that must be there, or that the cell must stay empty."""
    return tuple(f"{d} {POSITIONS[i]}" if d != EMPTY else f"nothing {POSITIONS[i]}"
                 for i, d in enumerate(layout))


def make_item(layout: Layout, template: str, family: str, variant: int = 0) -> PromptItem:
    text = text_relations(layout, variant) if template == "relations" else TEMPLATES[template](layout)
    return PromptItem(text=text, atoms=atoms_of(layout),
                      meta={"layout": tuple(layout), "template": template, "family": family,
                            "num_digits": sum(d != EMPTY for d in layout), "variant": variant})


def _random_layout(rng: random.Random, num_digits: int) -> Layout:
    cells = rng.sample(range(4), num_digits)
    return tuple(rng.randrange(10) if i in cells else EMPTY for i in range(4))  # type: ignore[return-value]


SPLIT_SIZES = {"train": 256, "test": 128, "ood": 128}


def relation_layouts() -> list[Layout]:
    """All 2880 in-domain layouts: three distinct digits in three of the four cells."""
    return [ds[:hole] + (EMPTY,) + ds[hole:] for hole in range(4)
            for ds in itertools.permutations(range(10), 3)]


@functools.lru_cache(maxsize=4)
def _splits(seed: int) -> dict[str, tuple[PromptItem, ...]]:
    # In-domain: relation prompts; train and test use disjoint layouts (test = unseen combinations of
    # seen atoms), one random wording each.  OOD: full 4-digit grids in the row template — more slots,
    # different wording, no relations; RL never sees it.
    rng = random.Random(1000 + seed)
    layouts = relation_layouts()
    rng.shuffle(layouts)
    n_tr, n_te = SPLIT_SIZES["train"], SPLIT_SIZES["test"]
    in_domain = [make_item(l, "relations", "in_domain", rng.randrange(RELATION_VARIANTS))
                 for l in layouts[:n_tr + n_te]]
    four = rng.sample(list(itertools.product(range(10), repeat=4)), SPLIT_SIZES["ood"])
    return {"train": tuple(in_domain[:n_tr]), "test": tuple(in_domain[n_tr:]),
            "ood": tuple(make_item(l, "rows", "ood") for l in four)}


def prompt_splits(seed: int = 0) -> dict[str, list[PromptItem]]:
    """{"train", "test", "ood"} → prompt items (disjoint, deterministic in `seed`).

    train/test: in-domain 3-digit relation prompts on disjoint layouts (test = held-out combinations);
    ood: 4-digit full grids in the row template."""
    return {k: list(v) for k, v in _splits(seed).items()}


def excluded_from_pretraining(seed: int = 0) -> set[str]:
    """Texts pretraining never sees: every wording of every evaluation layout, and the OOD prompts."""
    sp = _splits(seed)
    out = {it.text for it in sp["ood"]}
    for it in sp["train"] + sp["test"]:
        out.update(text_relations(it.meta["layout"], v) for v in range(RELATION_VARIANTS))
    return out


def pretraining_pool(size: int, seed: int, exclude: set[str]) -> list[PromptItem]:
    """A deterministic pool of pretraining prompts, skipping every text in `exclude`.
    Mix (by draw): relations 45 %; places with 1/2/3/4 digits 5/10/15/10 %; full grids in rows 15 %."""
    rng = random.Random(seed)
    pool: list[PromptItem] = []
    seen: set[str] = set(exclude)
    kinds = ([(1, "places")] + [(2, "places")] * 2 + [(3, "places")] * 3 + [(4, "places")] * 2
             + [(4, "rows")] * 3 + [(3, "relations")] * 9)
    attempts = 0
    while len(pool) < size:
        attempts += 1
        if attempts > 100 * size:
            raise RuntimeError(f"could not draw {size} distinct pretraining prompts")
        k, template = rng.choice(kinds)
        if template == "relations":
            item = make_item(rng.choice(_RELATION_LAYOUTS), template, "pretrain", rng.randrange(RELATION_VARIANTS))
        else:
            item = make_item(_random_layout(rng, k), template, "pretrain")
        if item.text in seen:
            continue
        seen.add(item.text)
        pool.append(item)
    return pool


_RELATION_LAYOUTS = relation_layouts()
