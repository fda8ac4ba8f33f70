"""Digits, layouts, canvases and prompts of the embedded world.

The canvas is a 2×2 grid of 8×8 cells (16×16, one channel).  A *layout* is a tuple of four cell
contents in reading order (top left, top right, bottom left, bottom right); each is a digit 0–9 or
EMPTY.  Every prompt determines exactly one layout, so each cell is one checkable atom.  Wordings:
  places     "a 3 top left and an 8 bottom right"            (pretraining only)
  relations  "a 7 right of a 3, and a 1 below the 3"          (in-domain: RL train/test)
             "a 3 left of a 7, the 7 above a 1, and the 1 right of a 4"
  rows       "top row 3 and 7, bottom row 1 and 8"            (out-of-domain: full grids)

Splits of sklearn's 1797 digit images (seeded permutation, fixed forever):
  gen    60 %  the generator's pretraining pixels and the realism reference set
  cls    20 %  trains the in-domain reward classifier ("tifa")
  judge  20 %  trains the independent judge ("agreement")
"""
from __future__ import annotations

import dataclasses
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
CELL_BOXES = tuple((r * CELL, (r + 1) * CELL, c * CELL, (c + 1) * CELL) for r in range(2) for c in range(2))
"""(y0, y1, x0, x1) pixel box of each cell, reading order (for drawing per-cell marks)."""
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
    """Composes canvases for layouts from one split's digit images: each filled cell gets a uniformly
    random instance of its digit (vectorised: one uniform draw per cell, EMPTY cells stay 0)."""

    def __init__(self, split: str = "gen"):
        images, labels = digit_splits()[split]
        self.images = images[torch.argsort(labels, stable=True)]      # grouped by class
        self.counts = torch.bincount(labels, minlength=10)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def __call__(self, layouts: Tensor | Sequence[Layout], generator: torch.Generator) -> Tensor:
        """layouts [B, 4] (digit or EMPTY) → canvases [B, 1, 16, 16] in [0, 1]."""
        layouts = torch.as_tensor(layouts, dtype=torch.int64)
        b = layouts.shape[0]
        out = torch.zeros(b, *CANVAS)
        u = torch.rand(b, 4, generator=generator)
        for cell, (rs, cs) in enumerate(CELL_SLICES):
            d = layouts[:, cell]
            dc = d.clamp(min=0)
            pick = self.offsets[dc] + (u[:, cell] * self.counts[dc]).long().clamp(max=self.counts[dc] - 1)
            out[:, 0, rs, cs] = self.images[pick] * (d != EMPTY).view(b, 1, 1)
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


def _text_relations_l(layout: Layout, variant: int) -> str:
    # Three digits in an L.  The corner cell (diagonal to the empty cell) is adjacent to both others;
    # clause 1 relates the corner to one neighbour, clause 2 places the other neighbour relative to
    # "the" corner digit.  Bits of `variant`: which neighbour clause 1 uses, which digit is its subject,
    # and the clause-2 word order.
    hole = layout.index(EMPTY)
    corner = 3 - hole                                        # the cell diagonal to the hole
    horiz, vert = corner ^ 1, corner ^ 2                     # same row / same column neighbours
    first, second = (horiz, vert) if variant & 1 == 0 else (vert, horiz)
    a, b = (corner, first) if variant & 2 == 0 else (first, corner)
    clause1 = f"{_article(layout[a])} {_relation(a, b)} {_article(layout[b])}"
    if variant & 4 == 0:
        clause2 = f"{_article(layout[second])} {_relation(second, corner)} the {layout[corner]}"
    else:
        clause2 = f"the {layout[corner]} {_relation(corner, second)} {_article(layout[second])}"
    return f"{clause1}, and {clause2}"


_CYCLE = (0, 1, 3, 2)   # the four cells around the square


def _text_relations_chain(layout: Layout, variant: int) -> str:
    # Four digits: a chain of three relations around the square ("a 3 left of a 7, the 7 above a 1,
    # and the 1 right of a 4"); the first digit's row is only known at the second hop.  `variant`
    # picks the start cell (0–3) and the direction (bit 2).
    step = 1 if variant & 4 == 0 else -1
    path = [_CYCLE[(variant % 4 + step * i) % 4] for i in range(4)]
    d = [layout[c] for c in path]
    return (f"{_article(d[0])} {_relation(path[0], path[1])} {_article(d[1])}, "
            f"the {d[1]} {_relation(path[1], path[2])} {_article(d[2])}, "
            f"and the {d[2]} {_relation(path[2], path[3])} {_article(d[3])}")


def text_relations(layout: Layout, variant: int = 0) -> str:
    """The relation template (in-domain): distinct digits placed only by relations to each other.

    Three digits (an L, one cell empty): "a 7 right of a 3, and a 1 below the 3".
    Four digits (full grid): "a 3 left of a 7, the 7 above a 1, and the 1 right of a 4".
    No clause fixes a cell on its own: the model must combine the relations and resolve "the 3".
    variant ∈ [0, RELATION_VARIANTS) picks one of 8 wordings of the same layout."""
    digits = [d for d in layout if d != EMPTY]
    if len(set(digits)) != len(digits):
        raise ValueError("the relation template needs distinct digits (it refers to 'the 3')")
    if len(digits) == 3:
        return _text_relations_l(layout, variant)
    if len(digits) == 4:
        return _text_relations_chain(layout, variant)
    raise ValueError("the relation template describes three or four digits")


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


def relation_layouts(num_digits: int) -> list[Layout]:
    """In-domain layouts with distinct digits: 3 digits in 3 of the 4 cells (2880) or 4 (5040)."""
    if num_digits == 3:
        return [ds[:hole] + (EMPTY,) + ds[hole:] for hole in range(4)
                for ds in itertools.permutations(range(10), 3)]
    if num_digits == 4:
        return list(itertools.permutations(range(10), 4))
    raise ValueError(f"relation layouts have 3 or 4 digits, got {num_digits}")


@functools.lru_cache(maxsize=4)
def _splits(seed: int) -> dict[str, tuple[PromptItem, ...]]:
    # In-domain: relation prompts, half with three digits (4 atoms incl. the empty cell, 2 relations)
    # and half with four (3 chained relations); train and test use disjoint layouts (test = unseen
    # combinations of seen atoms), one random wording each.  OOD: full 4-digit grids (digits may
    # repeat) in the row template — different wording, no relations; RL never sees it.
    rng = random.Random(1000 + seed)
    n_tr, n_te = SPLIT_SIZES["train"] // 2, SPLIT_SIZES["test"] // 2
    train, test = [], []
    for k in (3, 4):
        layouts = relation_layouts(k)
        rng.shuffle(layouts)
        items = [make_item(l, "relations", "in_domain", rng.randrange(RELATION_VARIANTS))
                 for l in layouts[:n_tr + n_te]]
        train += items[:n_tr]
        test += items[n_tr:]
    rng.shuffle(train)
    rng.shuffle(test)
    four = rng.sample(list(itertools.product(range(10), repeat=4)), SPLIT_SIZES["ood"])
    return {"train": tuple(train), "test": tuple(test),
            "ood": tuple(make_item(l, "rows", "ood") for l in four)}


WORLD_VERSIONS = (1, 2)
WORLD_VERSION = 2
EVAL_SPLITS = ("test", "ood", "transfer")   # evaluated splits, in this order (those a version has)


def prompt_splits(seed: int = 0, version: int = WORLD_VERSION) -> dict[str, list[PromptItem]]:
    """The world's prompt splits (disjoint, deterministic in `seed`).

    version 2 (the default):
      train     128 four-digit relation chains — the RL prompts;
      test       64 held-out four-digit chains (unseen layouts) — the held-out in-domain family;
      ood       128 full grids in the row template — never trained (forgetting probe);
      transfer  192 three-digit L shapes in the relation template — never trained: does what RL learns on
                chains transfer to another relational family?  (Trained directly, L shapes do not
                generalise to held-out L layouts here: their implied empty cell is placed by memorising
                layouts — README, "The embedded default world".)
    version 1 (the first world, behind paper_figures/first_world/): train 256 / test 128 relation prompts, half
      3-digit, half 4-digit, and ood.
    Both versions draw from the same layouts, so one pretraining exclusion serves both."""
    if version not in WORLD_VERSIONS:
        raise ValueError(f"world version {version} unknown; choose one of {WORLD_VERSIONS}")
    v1 = {k: list(v) for k, v in _splits(seed).items()}
    if version == 1:
        return v1
    four = lambda items: [it for it in items if it.meta["num_digits"] == 4]    # noqa: E731
    three = [it for it in v1["train"] + v1["test"] if it.meta["num_digits"] == 3]
    return {"train": four(v1["train"]), "test": four(v1["test"]), "ood": v1["ood"],
            "transfer": [dataclasses.replace(it, meta={**it.meta, "family": "transfer"}) for it in three]}


def excluded_from_pretraining(seed: int = 0) -> set[str]:
    """Texts pretraining never sees: every wording of every evaluation layout, and the OOD prompts."""
    sp = _splits(seed)
    out = {it.text for it in sp["ood"]}
    for it in sp["train"] + sp["test"]:
        out.update(text_relations(it.meta["layout"], v) for v in range(RELATION_VARIANTS))
    return out


RELATION_SHARE = 0.1
RELATION3_FRACTION = 0.5


def pretraining_pool(size: int, seed: int, exclude: set[str], relation_share: float = RELATION_SHARE,
                     relation3_fraction: float = RELATION3_FRACTION) -> list[PromptItem]:
    """A deterministic pool of pretraining prompts, skipping every text in `exclude`.

    Mix (by draw): `relation_share` relation prompts (a `relation3_fraction` of them 3-digit, the rest
    4-digit); the rest is place
    prompts with 1/2/3/4 digits (1:2:2:2) and full grids in the row template (3).  Relation prompts are
    deliberately rare, as GenEval-style compositional captions are rare in a T2I model's pretraining
    data: the base learns digits and places well and relations only partly."""
    if not 0.0 <= relation_share < 1.0:
        raise ValueError(f"relation_share must be in [0, 1), got {relation_share}")
    if not 0.0 <= relation3_fraction <= 1.0:
        raise ValueError(f"relation3_fraction must be in [0, 1], got {relation3_fraction}")
    rng = random.Random(seed)
    pool: list[PromptItem] = []
    seen: set[str] = set(exclude)
    r = 10.0 * relation_share / (1.0 - relation_share)     # the other kinds weigh 10 in total
    kinds = [(1, "places"), (2, "places"), (3, "places"), (4, "places"), (4, "rows"), (3, "relations"), (4, "relations")]
    weights = [1, 2, 2, 2, 3, r * relation3_fraction, r * (1.0 - relation3_fraction)]
    attempts = 0
    while len(pool) < size:
        attempts += 1
        if attempts > 100 * size:
            raise RuntimeError(f"could not draw {size} distinct pretraining prompts")
        k, template = rng.choices(kinds, weights)[0]
        if template == "relations":
            layout = rng.choice(_RELATION_LAYOUTS[k])
            item = make_item(layout, template, "pretrain", rng.randrange(RELATION_VARIANTS))
        else:
            item = make_item(_random_layout(rng, k), template, "pretrain")
        if item.text in seen:
            continue
        seen.add(item.text)
        pool.append(item)
    return pool


_RELATION_LAYOUTS = {k: relation_layouts(k) for k in (3, 4)}
