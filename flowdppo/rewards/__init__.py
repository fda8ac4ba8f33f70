from .base import Reward, check_scores
from .registry import make_reward, register_reward

__all__ = ["Reward", "check_scores", "make_reward", "register_reward"]
