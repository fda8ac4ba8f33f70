"""Checks a start makes before it writes anything or loads a model: the inputs the config names exist, fit
together and fit the world size.  Each failure is a ConfigError naming the field and the fix.  (Config
.validate() checks the fields on their own; flowdppo.rundir checks the run directory.)"""
from __future__ import annotations

import os
from pathlib import Path

from .config import Config
from .errors import ConfigError


def check_world_size(cfg: Config, world_size: int) -> None:
    """The batch splits evenly over ranks and minibatches."""
    if cfg.prompts_per_iter % world_size:
        raise ConfigError(f"config.prompts_per_iter={cfg.prompts_per_iter} is not divisible by world size "
                          f"{world_size}. Fix: use a multiple of the number of ranks")
    if (cfg.batch_size // world_size) % cfg.num_minibatches:
        raise ConfigError(f"config.prompts_per_iter: batch {cfg.batch_size} must split evenly over {world_size} "
                          f"ranks × {cfg.num_minibatches} minibatches. Fix: make prompts_per_iter*group_size a "
                          f"multiple of world_size*num_minibatches")


def check_inputs(cfg: Config) -> None:
    """What build_components will read: the prompt file, the base weights, the rewards (names and their fit
    to the prompts).  Reads files, writes nothing, loads no model."""
    items = _check_prompts(cfg)
    _check_rewards(cfg, items)
    _check_base_weights(cfg)


def _check_prompts(cfg: Config):
    """The training prompts (None for the embedded world's, which carry layouts by construction)."""
    if cfg.prompts in ("embedded", "embedded_v1"):
        return None
    from .prompts import load_prompt_splits
    path = Path(cfg.prompts)
    if not path.exists():
        raise ConfigError(f"config.prompts: {path} does not exist (a relative path is read from the working "
                          f"directory, {os.getcwd()}). Fix: give an existing .txt / .jsonl prompt file or a directory "
                          "with train and test files, or prompts=embedded")
    try:
        return load_prompt_splits(path, seed=cfg.seed)["train"]
    except (OSError, ValueError) as err:
        raise ConfigError(f"config.prompts: {path} cannot be used ({err}). Fix: one prompt per line (.txt) or one "
                          "JSON object with a \"prompt\" per line (.jsonl)") from None


def _check_rewards(cfg: Config, items) -> None:
    from .rewards.registry import is_world_reward, known_rewards
    for field_name in ("rewards", "log_rewards"):
        unknown = [n for n in getattr(cfg, field_name) if n not in known_rewards()]
        if unknown:
            raise ConfigError(f"config.{field_name}: unknown reward(s) {unknown}. Fix: choose from {known_rewards()} "
                              "(or register one with flowdppo.rewards.registry.register_reward)")
    if items is None or all("layout" in it.meta for it in items):
        return
    from .world import LAYOUT_REWARDS
    layout = [n for n in (*cfg.rewards, *cfg.log_rewards) if n in LAYOUT_REWARDS and is_world_reward(n)]
    if layout:
        raise ConfigError(f"config.rewards: {layout} are the embedded world's rewards and score a digit layout "
                          f"(meta['layout']) that the prompts in {cfg.prompts} do not carry. Fix: prompts=embedded, "
                          "or rewards that read text prompts (pickscore, clip, hpsv2, geneval2_vlm, ocr, jpeg)")
    if cfg.model == "embedded" and cfg.eval_every:
        raise ConfigError(f"config.prompts: the embedded world evaluates digit layouts (meta['layout']), which the "
                          f"prompts in {cfg.prompts} do not carry. Fix: prompts=embedded, or eval_every=0, or a "
                          "diffusers model (model=…)")


def _check_base_weights(cfg: Config) -> None:
    if cfg.model != "embedded" or not cfg.checkpoint:
        return
    from .world import SHIPPED_BASES, resolve_checkpoint
    path = resolve_checkpoint(cfg.checkpoint)
    if not path.is_file():
        raise ConfigError(f"config.checkpoint: {path} does not exist. Fix: give a file made by `flowdppo pretrain`, "
                          f"a shipped base's name ({', '.join(SHIPPED_BASES)}), or checkpoint= (empty) for the "
                          "default base")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            f.metadata()["config"]
    except Exception as err:  # noqa: BLE001 — any failure to open the header means an unusable file
        raise ConfigError(f"config.checkpoint: {path} is not a readable world checkpoint ({type(err).__name__}: "
                          f"{err}). Fix: rebuild it with `flowdppo pretrain --out {path}`, or checkpoint= (empty) "
                          "for the shipped base") from None
