"""The embedded default world: compositional text-to-image RL in miniature, on a CPU.

Canvas: a 2×2 grid of 8×8 sklearn digits (16×16 pixels, one channel).  Every prompt fixes one layout
(the digit or emptiness of each cell), and the rewards score each cell as one atom.

  train / test (in-domain, version 2): four distinct digits placed ONLY by a chain of three relations
      around the square, "a 3 left of a 7, the 7 above a 1, and the 1 right of a 4" (8 wordings per
      layout); 128 training layouts, 64 held-out layouts (unseen combinations of seen atoms).
  transfer (never trained): three digits in an L, "a 7 right of a 3, and a 1 below the 3" — the fourth
      cell must stay empty.  Does what RL learns on chains carry over to another relational family?
  ood (never trained): full grids in another wording, "top row 3 and 7, bottom row 1 and 8" — a
      forgetting probe, as the PickScore prompts are for GenEval2 training.
  pretraining also sees 1–4 digit "place" prompts ("a 3 top left and an 8 bottom right"), row prompts,
      and relation prompts of other layouts (no wording of a train / test / transfer layout).

The base (`world_base`) is an early checkpoint — step 2000 of a 4000-step schedule — so the in-domain
and transfer families start mid-way (held-out accuracy ≈ 0.5 and ≈ 0.3) and RL has room to learn.
`prompt_splits(version=1)` and the `world_base_v1` checkpoint are the first world (3- and 4-digit
relation prompts trained together), on which the first world's runs (paper_figures/first_world/) were made.

Public API (used by the trainer):
    load_policy(checkpoint=None, lora_rank=0, lora_alpha=None, device="cpu") -> TinyFlowPolicy
    prompt_splits(seed=0, version=2) -> {"train", "test", "ood", "transfer"} → list[PromptItem]
    make_reward(name) -> Reward            names: "tifa", "agreement", "realism", "ink"
    evaluate_images(images, items, group_size) -> dict[str, float]
    cell_correct(images, items) -> [B, 4] bool    per-cell right/wrong (the sample grids' marks); CELL_BOXES
    pretrain(out_path, steps=…, seed=…, threads=…, log_every=…) -> dict;  CLI: main_pretrain(argv)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..policy.tiny import TinyFlowPolicy, build_transformer
from .data import prompt_splits
from .pretraining import main as main_pretrain
from .pretraining import pretrain
from .data import CELL_BOXES
from .rewards import LAYOUT_REWARDS, REWARD_NAMES, cell_correct, evaluate_images, make_reward
from .sampling import expand_items

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE_CHECKPOINT = ASSETS / "world_base.safetensors"
# Shipped bases by name: the current default, and the first world's base (the first world's runs were trained
# from it: `checkpoint=world_base_v1`, as `analysis/run_experiments.py --campaign first_world` sets, reruns them).
SHIPPED_BASES = {"world_base": BASE_CHECKPOINT, "world_base_v1": ASSETS / "world_base_v1.safetensors"}


def resolve_checkpoint(checkpoint: Optional[str | Path]) -> Path:
    """A world checkpoint: None / "" = the shipped default base, a shipped base's name, or a file path."""
    if not checkpoint:
        return BASE_CHECKPOINT
    if str(checkpoint) in SHIPPED_BASES:
        return SHIPPED_BASES[str(checkpoint)]
    return Path(checkpoint)


__all__ = ["load_policy", "prompt_splits", "make_reward", "evaluate_images", "cell_correct", "CELL_BOXES",
           "expand_items", "pretrain", "main_pretrain", "REWARD_NAMES", "LAYOUT_REWARDS",
           "BASE_CHECKPOINT", "SHIPPED_BASES", "resolve_checkpoint", "TinyFlowPolicy"]


def load_policy(*, checkpoint: Optional[str | Path] = None, lora_rank: int = 0, lora_alpha: Optional[float] = None,
                device: str = "cpu") -> TinyFlowPolicy:
    """The world's policy, initialised from `checkpoint` (a `pretrain` output, a shipped base's name from
    SHIPPED_BASES, or None = the shipped default base).

    lora_rank = 0: full fine-tuning with a frozen copy of the base as reference; > 0: LoRA adapters
    (alpha defaults to the rank), reference = adapters disabled."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .text import shared_encoder

    path = resolve_checkpoint(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"world checkpoint {path} not found; build one with "
                                f"`python -m flowdppo.world.pretraining {path}`")
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    transformer = build_transformer(config)
    transformer.load_state_dict(load_file(str(path)), strict=True)
    policy = TinyFlowPolicy(transformer, shared_encoder().encode, lora_rank=lora_rank, lora_alpha=lora_alpha)
    return policy.to(device)
