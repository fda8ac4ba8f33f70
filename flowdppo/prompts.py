"""Prompt items: the text a model is conditioned on plus the structured atoms a compositional reward
checks (GenEval2-style).  `meta` holds anything else a reward or metric needs (e.g. the digit layout of
the embedded world)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch


@dataclass(frozen=True)
class PromptItem:
    text: str
    atoms: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


# ----------------------------------------------------------------------------------------------------
# Prompt files
# ----------------------------------------------------------------------------------------------------
# JSONL keys read as the prompt text / the atoms; everything else on a line is kept in `meta`.
_TEXT_KEYS = ("prompt", "text", "caption")
_ATOM_KEYS = ("atoms", "questions", "vqa_list")


def _item_from_record(rec: dict[str, Any], where: str) -> PromptItem:
    """One JSONL record → PromptItem.

    Atoms come from "atoms" or "questions" (lists of strings) or from GenEval2's "vqa_list"
    ([[question, expected answer], …]); expected answers go to meta["answers"] (one per atom; taken from
    "vqa_list" or an explicit "answers" list, else absent = "Yes" for every atom).  All other fields are
    kept in meta unchanged."""
    text_key = next((k for k in _TEXT_KEYS if k in rec), None)
    if text_key is None or not isinstance(rec[text_key], str):
        raise ValueError(f"{where}: no prompt text; expected one of the keys {_TEXT_KEYS}")
    meta = {k: v for k, v in rec.items() if k != text_key}
    atoms: tuple[str, ...] = ()
    atom_key = next((k for k in _ATOM_KEYS if k in rec), None)
    if atom_key == "vqa_list":
        pairs = rec["vqa_list"]
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise ValueError(f"{where}: vqa_list must be [[question, answer], …]")
        atoms = tuple(str(q) for q, _ in pairs)
        meta.setdefault("answers", [str(a) for _, a in pairs])
    elif atom_key is not None:
        raw = rec[atom_key]
        if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
            raise ValueError(f"{where}: {atom_key!r} must be a list of strings")
        atoms = tuple(raw)
        meta.pop(atom_key, None)
    if "answers" in meta and len(meta["answers"]) != len(atoms):
        raise ValueError(f"{where}: {len(meta['answers'])} answers for {len(atoms)} atoms")
    return PromptItem(text=rec[text_key], atoms=atoms, meta=meta)


def load_prompts(path: str | Path) -> list[PromptItem]:
    """Read a prompt file: .jsonl (one JSON object per line, see `_item_from_record`) or plain text
    (one prompt per line; blank lines skipped).  Order is the file's order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        items = []
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not valid JSON ({err})") from err
                if not isinstance(rec, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object per line")
                items.append(_item_from_record(rec, f"{path}:{n}"))
    else:
        items = [PromptItem(text=line.strip()) for line in lines if line.strip()]
    if not items:
        raise ValueError(f"prompt file {path} holds no prompts")
    return items


# ----------------------------------------------------------------------------------------------------
# Deterministic splits and per-iteration sharding
# ----------------------------------------------------------------------------------------------------
def split_prompts(items: Sequence[PromptItem], *, test_fraction: float = 0.05, test_size: Optional[int] = None,
                  seed: int = 0) -> tuple[list[PromptItem], list[PromptItem]]:
    """(train, test): a seeded permutation decides which items are test; each split keeps file order.

    test_size (an absolute count) overrides test_fraction.  The same (items, seed) → the same split on
    every machine (torch's CPU generator is platform-independent)."""
    n = len(items)
    k = test_size if test_size is not None else int(round(test_fraction * n))
    if not 0 <= k < n:
        raise ValueError(f"test split of {k} prompts leaves no training prompts out of {n}; lower "
                         "test_fraction / test_size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    test_idx = set(perm[:k])
    train = [it for i, it in enumerate(items) if i not in test_idx]
    test = [it for i, it in enumerate(items) if i in test_idx]
    return train, test


def load_prompt_splits(path: str | Path, *, seed: int = 0, test_fraction: float = 0.05,
                       test_size: Optional[int] = None, ood: Optional[str | Path] = None) -> dict[str, list[PromptItem]]:
    """{"train", "test", "ood"} prompt lists.

    path: a prompt file (split by `split_prompts`) or a directory holding train.{jsonl,txt} and
    test.{jsonl,txt} (used as given, e.g. GenEval2's synthetic train / official test).
    ood: optional out-of-domain prompt file (e.g. the PickScore test prompts); empty list if None."""
    path = Path(path)
    if path.is_dir():
        found = {}
        for split in ("train", "test"):
            cands = [path / f"{split}{ext}" for ext in (".jsonl", ".txt")]
            hit = next((c for c in cands if c.is_file()), None)
            if hit is None:
                raise FileNotFoundError(f"{path} is a directory but has no {split}.jsonl / {split}.txt")
            found[split] = load_prompts(hit)
        train, test = found["train"], found["test"]
    else:
        train, test = split_prompts(load_prompts(path), test_fraction=test_fraction, test_size=test_size, seed=seed)
    return {"train": train, "test": test, "ood": load_prompts(ood) if ood is not None else []}


def iteration_indices(num_items: int, prompts_per_iter: int, *, seed: int, iteration: int) -> list[int]:
    """The dataset indices of iteration `iteration`'s prompts (global, all ranks), deterministic in
    (seed, iteration): epochs over the dataset, each a fresh seeded permutation, consumed
    prompts_per_iter at a time — every prompt is used once per epoch (an iteration that straddles two
    epochs takes the tail of one and the head of the next)."""
    if num_items < 1 or prompts_per_iter < 1:
        raise ValueError("need at least one item and prompts_per_iter >= 1")
    start = iteration * prompts_per_iter
    out: list[int] = []
    epoch, offset = divmod(start, num_items)
    while len(out) < prompts_per_iter:
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(_mix(seed, epoch))).tolist()
        take = perm[offset: offset + prompts_per_iter - len(out)]
        out += take
        epoch, offset = epoch + 1, 0
    return out


def shard(seq: Sequence, *, rank: int, world_size: int) -> list:
    """Rank `rank`'s contiguous block of `seq` (len divisible by world_size): blocks are disjoint, cover
    seq, and rank r's rows are global rows [r·n/W, (r+1)·n/W) — the prompt-major order gathers restore."""
    n = len(seq)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if n % world_size:
        raise ValueError(f"{n} prompts do not split evenly over {world_size} ranks; use a multiple of the world size")
    per = n // world_size
    return list(seq[rank * per:(rank + 1) * per])


def iteration_prompts(items: Sequence[PromptItem], prompts_per_iter: int, *, seed: int, iteration: int,
                      rank: int = 0, world_size: int = 1) -> list[PromptItem]:
    """This rank's prompts for one iteration: `shard` of the global `iteration_indices` selection."""
    idx = iteration_indices(len(items), prompts_per_iter, seed=seed, iteration=iteration)
    return [items[i] for i in shard(idx, rank=rank, world_size=world_size)]


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit seed from (seed, epoch) via splitmix64, so nearby seeds give unrelated permutations."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF
