from .base import Reward, check_scores

__all__ = ["Reward", "check_scores"]
