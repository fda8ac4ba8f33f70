"""make_reward(name, **kwargs): every reward by name, models loaded by hub id or local path.

    name            class (module)                         main kwargs (all optional unless noted)
    "pickscore"     PickScoreReward (clip_rewards)         model, processor, device, dtype, batch_size
    "clip"          ClipScoreReward (clip_rewards)         model, processor, device, dtype, batch_size
    "hpsv2"         HPSv2Reward (clip_rewards)             model (REQUIRED: CLIPModel dir made by
                                                           `python -m flowdppo.rewards.hpsv2_convert`), …
    "geneval2_vlm"  SoftTifaVLMReward (soft_tifa)          model, device, dtype, batch_size, aggregation
    "ocr"           OCRReward (ocr)                        threads, text_score
    "jpeg"          JpegCompressibility (jpeg)             quality, per_megapixel
    "remote"        RemoteReward (service)                 url (REQUIRED), name, timeout

Unknown names go to `register_reward`-ed factories, then to the embedded world's rewards
(flowdppo.world.make_reward: "tifa", "agreement", "realism", "ink"); anything else is a ValueError
listing every known name.  Heavy imports (transformers, rapidocr) happen only when a reward is built.
"""
from __future__ import annotations

from typing import Callable

from .base import Reward

RewardFactory = Callable[..., Reward]


def _pickscore(**kw):
    from .clip_rewards import PickScoreReward
    return PickScoreReward(**kw)


def _clip(**kw):
    from .clip_rewards import ClipScoreReward
    return ClipScoreReward(**kw)


def _hpsv2(**kw):
    from .clip_rewards import HPSv2Reward
    return HPSv2Reward(**kw)


def _geneval2_vlm(**kw):
    from .soft_tifa import SoftTifaVLMReward
    return SoftTifaVLMReward(**kw)


def _ocr(**kw):
    from .ocr import OCRReward
    return OCRReward(**kw)


def _jpeg(**kw):
    from .jpeg import JpegCompressibility
    return JpegCompressibility(**kw)


def _remote(**kw):
    from .service import RemoteReward
    return RemoteReward(**kw)


REWARDS: dict[str, RewardFactory] = {
    "pickscore": _pickscore, "clip": _clip, "hpsv2": _hpsv2, "geneval2_vlm": _geneval2_vlm,
    "ocr": _ocr, "jpeg": _jpeg, "remote": _remote,
}


def register_reward(name: str, factory: RewardFactory, *, overwrite: bool = False) -> None:
    """Add a factory under `name` (e.g. a project-specific scorer); refuses to shadow a name silently."""
    if name in REWARDS and not overwrite:
        raise ValueError(f"reward {name!r} is already registered; pass overwrite=True to replace it")
    REWARDS[name] = factory


def _world_names() -> tuple[str, ...]:
    try:
        from ..world import REWARD_NAMES
        return tuple(REWARD_NAMES)
    except ImportError:
        return ()


def known_rewards() -> list[str]:
    """Every name make_reward accepts: the table, registered factories, then the embedded world's rewards."""
    return sorted(REWARDS) + sorted(n for n in _world_names() if n not in REWARDS)


def is_world_reward(name: str) -> bool:
    """`name` resolves to an embedded-world reward (no registered factory shadows it)."""
    return name not in REWARDS and name in _world_names()


def make_reward(name: str, **kwargs) -> Reward:
    """Build the reward called `name` (see the module table); kwargs go to its constructor."""
    if name in REWARDS:
        return REWARDS[name](**kwargs)
    world_names = _world_names()
    if name in world_names:
        from ..world import make_reward as world_make_reward
        return world_make_reward(name, **kwargs)
    raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS) + sorted(world_names)}")
