"""The embedded default world: compositional text-to-image RL in miniature, on a CPU.

Canvas: a 2×2 grid of 8×8 sklearn digits (16×16 pixels, one channel).  Every prompt fixes one layout
(the digit or emptiness of each cell), and the rewards score each cell as one atom.

  in-domain (RL train / held-out test): distinct digits placed ONLY by relations to each other —
      half with three digits in an L (2 relations, the fourth cell must stay empty):
          "a 7 right of a 3, and a 1 below the 3"
      half with four digits (a chain of 3 relations around the square):
          "a 3 left of a 7, the 7 above a 1, and the 1 right of a 4"
      No clause fixes a cell on its own: the model must combine relations and resolve "the 3".
      8 wordings per layout; train and test use disjoint layouts (test = unseen combinations).
  out-of-domain (never seen by RL): full 4-digit grids in another wording, "top row 3 and 7, bottom
      row 1 and 8" — a forgetting probe, as the PickScore prompts are for GenEval2 training.
  pretraining also sees 1–4 digit "place" prompts ("a 3 top left and an 8 bottom right").

Why this difficulty: with place wording ("a 3 top left, a 7 top right and a 1 bottom left") the same
0.63 M-param model reached 96 % layout accuracy after 3000 steps — saturated like the probe's
two-digit strip — and with 3-digit relations alone 67 % after 4000 steps.  Relation chains make the
base draw recognisable digits in the wrong cells (or in the empty cell) — the failure GenEval2's
position atoms catch — while staying learnable.

Public API (used by the trainer):
    load_policy(checkpoint=None, lora_rank=0, lora_alpha=None, device="cpu") -> TinyFlowPolicy
    prompt_splits(seed=0) -> {"train", "test", "ood"} → list[PromptItem] (meta["layout"] = the cells)
    make_reward(name) -> Reward            names: "tifa", "agreement", "realism", "ink"
    evaluate_images(images, items, group_size) -> dict[str, float]
    cell_correct(images, items) -> [B, 4] bool    per-cell right/wrong (the sample grids' marks); CELL_BOXES
    sample_images(policy, items, group_size=…, num_steps=…, guidance_scale=…) -> images (ODE, for eval)
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
from .sampling import expand_items, sample_images

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE_CHECKPOINT = ASSETS / "world_base.safetensors"
# Shipped bases by name: the current default, and the first world's base (the committed paper_runs/ were
# trained from it: `checkpoint=world_base_v1` regenerates them).
SHIPPED_BASES = {"world_base": BASE_CHECKPOINT, "world_base_v1": ASSETS / "world_base_v1.safetensors"}


def resolve_checkpoint(checkpoint: Optional[str | Path]) -> Path:
    """A world checkpoint: None / "" = the shipped default base, a shipped base's name, or a file path."""
    if not checkpoint:
        return BASE_CHECKPOINT
    if str(checkpoint) in SHIPPED_BASES:
        return SHIPPED_BASES[str(checkpoint)]
    return Path(checkpoint)


__all__ = ["load_policy", "prompt_splits", "make_reward", "evaluate_images", "cell_correct", "CELL_BOXES",
           "sample_images", "expand_items", "pretrain", "main_pretrain", "REWARD_NAMES", "LAYOUT_REWARDS",
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
