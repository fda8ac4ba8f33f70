"""Assembly of a run: what it trains and scores (`Components`), the σ grid, the configured loss, the
parallel layout, and the progress bar / TensorBoard writers.  The training loop (flowdppo.trainer) calls
these once, before its first iteration."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch import Tensor

from . import dist, losses, sde
from .config import Config
from .errors import ConfigError
from .policy.base import Policy
from .prompts import PromptItem
from .rewards.base import Reward


@dataclass
class Components:
    """What a run trains and scores: the policy, prompt splits ("train", "test", "ood") and rewards."""
    policy: Policy
    splits: dict[str, list[PromptItem]]
    rewards: dict[str, Reward]
    log_rewards: Optional[dict[str, Reward]] = None          # scored for the logs only (weight 0)
    evaluate_images: Optional[Callable[..., dict[str, float]]] = None  # (images, items, group_size) -> metrics
    cell_marks: Optional[Callable[..., Tensor]] = None        # (images, items) -> [B, n_cells] bool right/wrong
    cell_boxes: Optional[Sequence[tuple[int, int, int, int]]] = None  # (y0, y1, x0, x1) of each marked cell


def build_components(cfg: Config) -> Components:
    """The embedded world, or a diffusers pipeline with the registry's rewards."""
    from .rewards.registry import make_reward
    if cfg.model == "embedded":
        from . import world
        policy = world.load_policy(checkpoint=cfg.checkpoint or None, lora_rank=cfg.lora_rank,
                                   lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank, device=cfg.device)
        evaluate = world.evaluate_images
        marks, boxes = world.cell_correct, world.CELL_BOXES
    else:
        from .policy.pipelines import load_diffusers_policy
        policy = load_diffusers_policy(
            cfg.model, family=cfg.model_family, resolution=cfg.resolution, lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank, full_finetune=cfg.lora_rank == 0, dtype=cfg.dtype,
            device=cfg.device, gradient_checkpointing=cfg.gradient_checkpointing,
            disable_cudnn_attention=cfg.disable_cudnn_attention, compile=cfg.compile,
            offload_text_encoders=cfg.offload_text_encoders,
            encode_batch_size=1)  # one prompt per text-encoder call: embeddings independent of batch mates
        evaluate, marks, boxes = None, None, None
    if cfg.prompts in ("embedded", "embedded_v1"):
        from . import world
        splits = world.prompt_splits(version=1 if cfg.prompts == "embedded_v1" else 2)
    else:
        from .prompts import load_prompt_splits
        splits = load_prompt_splits(cfg.prompts, seed=cfg.seed)
    def build(name: str) -> Reward:
        kwargs = cfg.reward_kwargs.get(name, {})
        try:
            return make_reward(name, **kwargs)
        except TypeError as err:   # an argument the reward's constructor does not take
            raise ConfigError(f"config.reward_kwargs.{name}: {kwargs} does not fit reward {name!r} ({err}). Fix: "
                              f"see its constructor in flowdppo.rewards.registry's table") from None

    rewards = {name: build(name) for name in cfg.rewards}
    log_rewards = {name: build(name) for name in cfg.log_rewards}
    return Components(policy=policy, splits=splits, rewards=rewards, log_rewards=log_rewards,
                      evaluate_images=evaluate, cell_marks=marks, cell_boxes=boxes)


def sigma_grid(policy: Policy, num_steps: int, shift: float, grid: str = "pipeline") -> Tensor:
    """The σ grid [1, …, 0] (num_steps + 1 points): the policy's own scheduler grid when it has one
    (diffusers pipelines: SD3's static shift, FLUX's resolution-dependent shift; `grid` = config.sigma_grid),
    else `shifted_sigmas`, which is the official shift(linspace(1, 1/K, K)) grid already."""
    own = getattr(policy, "sigma_schedule", None)
    if own is None:
        return sde.shifted_sigmas(num_steps, shift)
    return own(num_steps) if grid == "pipeline" else own(num_steps, grid=grid)


def policy_loss_fn(cfg: Config):
    """The configured loss from the table, with its hyperparameters bound."""
    fn = losses.POLICY_LOSSES[cfg.loss]
    if cfg.loss.startswith("flow_dppo"):
        kw = dict(delta=cfg.delta, kl_reduction=cfg.kl_reduction, logp_reduction=cfg.logp_reduction,
                  kl_tie=cfg.kl_tie)
        if cfg.loss == "flow_dppo_predictive":
            kw["step_size"] = cfg.predictive_step_size
    elif cfg.loss == "no_trust_region":
        kw = dict(logp_reduction=cfg.logp_reduction)
    else:
        kw = dict(clip_range=cfg.clip_range, logp_reduction=cfg.logp_reduction)
    if cfg.loss in ("flow_dppo", "flow_dppo_symmetric", "flow_grpo", "no_trust_region"):   # CPS-scale choice
        kw["logp_scale"] = cfg.logp_scale
    return functools.partial(fn, **kw)


def setup_parallel(cfg: Config, policy: Policy, info: dist.DistInfo) -> dist.DistInfo:
    """Apply config.parallel: shard the policy's full-fine-tuning modules with FSDP2, or keep replicas."""
    roots = [m for m in (policy.fsdp_roots() if hasattr(policy, "fsdp_roots") else []) if m is not None]
    if cfg.parallel == "fsdp" and not roots:
        raise ConfigError("config.parallel='fsdp' shards full fine-tuning, but this policy has no full-fine-tuning "
                          "modules (LoRA, or a policy without fsdp_roots()). Fix: set lora_rank=0 for full "
                          "fine-tuning, or parallel=replicate (LoRA adapters are small: replicas + all-reduce)")
    if not info.enabled or cfg.parallel == "replicate" or not roots:
        return info
    for module in roots:
        dist.fsdp_shard(module, dist.local_device(cfg.device))
    return dataclasses.replace(info, fsdp=True)


def progress_bar(cfg: Config, info: dist.DistInfo, start: int):
    if not (cfg.progress and info.is_main):
        return None
    from tqdm.auto import tqdm
    return tqdm(total=cfg.iterations, initial=start, desc="flowdppo", unit="it", dynamic_ncols=True)


def tensorboard_writer(cfg: Config, run_dir: Path):
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(run_dir / "tb"))


def tensorboard_write(tb, record: dict, step: int) -> None:
    if tb is None:
        return
    for k, v in record.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            tb.add_scalar(k, v, step)
