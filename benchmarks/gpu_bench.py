"""GPU benchmark of the trainer's hot path on a full-size SD3.5-medium architecture (a script, not a test).

Random weights, bf16, 512 px, the paper's recipe: 10 steps, 3 trained Flow-SDE steps drawn from the first
half, one group of 16 samples, LoRA r32/α64, 2 minibatches, micro-batch 8.  Everything runs through
the code the trainer runs: flowdppo.policy.diffusers_policy (the SD3 adapter), flowdppo.rollout.rollout,
flowdppo.trainer.update_minibatch (flowdppo.sde + flowdppo.losses inside).  Measured in one process,
A/B runs interleaved, medians over --reps:

  (a) rollout images/s ÷ StableDiffusion3Pipeline(...) images/s — same steps, batch 16, same LoRA'd
      transformer, prompt embeddings precomputed for both, decode included in both.  Target ≥ 0.97.
  (b) Flow-DPPO ÷ Flow-GRPO iteration time (rollout + the two optimizer steps; losses.flow_dppo vs
      losses.flow_grpo_clip on the replayed steps).  Target ≤ 1.02.
  (c) trainer samples/s ÷ "bare" samples/s: the bare loop calls the transformer directly on the same
      shapes (rollout forwards in the trainer's micro-batch geometry, VAE decode, 3 LoRA forward+backward
      per sample, 2 AdamW steps) with no σ-math, anchors, losses or bookkeeping.  Target ≥ 0.90.
      Measured without and with torch.compile (the adapter's compile=True path, in place).
  Peak GPU memory of the rollout and update phases, and one FLUX.1-dev-architecture (11.9 B) LoRA r64
  smoke iteration (rollout of 14 steps + one optimizer step, gradient checkpointing, cuDNN SDPA off).

    python benchmarks/gpu_bench.py --out bench.json                 # on an H100/H200 (~5–10 min with compile)
    python benchmarks/gpu_bench.py --tiny --out /tmp/bench.json     # CPU smoke test of this script (~20 s)

--tiny swaps in the tiny in-code pipelines of flowdppo/testing/tiny_pipelines (32 px, group 4) so the script's
every path executes on a CPU; its numbers are not meaningful.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from flowdppo.config import make_config
from flowdppo.dist import DistInfo
from flowdppo.policy.pipelines import load_diffusers_policy, policy_from_pipeline
from flowdppo.prompts import PromptItem
from flowdppo.rollout import rollout
from flowdppo.runlog import atomic_write_json
from flowdppo.trainer import minibatch_assignment, policy_loss_fn, split_micro, update_minibatch

# SD3.5-medium transformer (its published diffusers config); 2.24 B parameters.
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))
# The 16-channel VAE of SD3 / FLUX.1 (83 M parameters).
VAE_16CH = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False)
PROMPT = "a photo of seven green croissants on a wooden table"


@dataclass
class Recipe:
    resolution: int = 512
    num_steps: int = 10
    group: int = 16
    sde_indices: tuple = (0, 2, 4)      # 3 SDE steps from the first half of 10 (fixed for comparability)
    eta: float = 0.8
    lora_rank: int = 32
    lora_alpha: int = 64
    num_minibatches: int = 2
    micro: int = 8
    guidance_scale: float = 1.0
    max_sequence_length: int = 256


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def peak_gib(fn, device: torch.device):
    """Run fn once and return the peak allocated GPU memory during it (GiB); None on CPU."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def interleaved(fns: dict, reps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each fn, runs interleaved A, B, C, A, B, C, … so drift hits all equally."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------------------------------
# Random-weight full-size pipelines (built directly on the device in bf16: < 1 s on an H100)
# ----------------------------------------------------------------------------------------------------
def _stub_clip(tok, hidden: int, heads: int, projection: bool):
    """A 1-layer CLIP text encoder of the real width (prompt encoding is cached, not benchmarked)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=heads, max_position_embeddings=77, projection_dim=hidden,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _stub_t5(tok):
    from transformers import T5Config, T5EncoderModel
    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=4096, d_kv=64, d_ff=512, num_layers=1, num_heads=8,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def _on_device_bf16(build, device):
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return build()
    finally:
        torch.set_default_dtype(prev)


def build_sd35_medium(device):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from flowdppo.testing.tiny_pipelines import tiny_clip_tokenizer, tiny_t5_tokenizer
    tok, tok2, tok3 = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()

    def build():
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**SD35_MEDIUM).eval(),
            vae=AutoencoderKL(**VAE_16CH, scaling_factor=1.5305, shift_factor=0.0609).eval(),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            text_encoder=_stub_clip(tok, 768, 12, True).eval(), tokenizer=tok,
            text_encoder_2=_stub_clip(tok2, 1280, 20, True).eval(), tokenizer_2=tok2,
            text_encoder_3=_stub_t5(tok3).eval(), tokenizer_3=tok3)
    return _on_device_bf16(build, device)


def build_flux1_dev(device):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from flowdppo.testing.tiny_pipelines import tiny_clip_tokenizer, tiny_t5_tokenizer
    tok, tok2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()

    def build():
        return FluxPipeline(
            transformer=FluxTransformer2DModel(in_channels=64, num_layers=19, num_single_layers=38,
                                               attention_head_dim=128, num_attention_heads=24,
                                               joint_attention_dim=4096, pooled_projection_dim=768,
                                               guidance_embeds=True, axes_dims_rope=(16, 56, 56)).eval(),
            vae=AutoencoderKL(**VAE_16CH, scaling_factor=0.3611, shift_factor=0.1159).eval(),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
            text_encoder=_stub_clip(tok, 768, 12, False).eval(), tokenizer=tok,
            text_encoder_2=_stub_t5(tok2).eval(), tokenizer_2=tok2)
    return _on_device_bf16(build, device)


# ----------------------------------------------------------------------------------------------------
# The trainer's iteration and the bare equivalent
# ----------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, policy, recipe: Recipe, device: torch.device, loss: str = "flow_dppo"):
        self.policy, self.r, self.device = policy, recipe, device
        self.items = [PromptItem(PROMPT)] * recipe.group
        self.cond = policy.encode_prompts([PROMPT])  # one row per prompt; row_prompt maps samples to it
        self.row_prompt = torch.zeros(recipe.group, dtype=torch.long, device=device)
        self.cond_full = {k: v.repeat_interleave(recipe.group, dim=0) for k, v in self.cond.items()}  # pipeline/bare
        self.sigmas = policy.sigma_schedule(recipe.num_steps)
        self.params = policy.trainable_parameters()
        self.opt = torch.optim.AdamW(self.params, lr=1e-7, betas=(0.9, 0.999), weight_decay=1e-4)
        self.adv = torch.randn(recipe.group, generator=torch.Generator().manual_seed(0)).to(device)
        self.mbs = minibatch_assignment(recipe.group, recipe.num_minibatches, seed=0, iteration=0, epoch=0,
                                        first_global=0)
        self.chunks = [m for mb in self.mbs for m in split_micro(mb, recipe.micro)]
        self.cfgs = {name: self._config(name) for name in ("flow_dppo", "flow_grpo")}
        self.cfgs["flow_dppo_batched"] = self.cfgs["flow_dppo"].replace(batched_replay=True)   # one forward per micro-batch
        self.traj = None
        self.iteration = 0

    def _config(self, loss: str):
        r = self.r
        return make_config({
            "loss": loss, "device": str(self.device), "group_size": r.group, "prompts_per_iter": 1,
            "num_minibatches": r.num_minibatches, "micro_batch_size": r.micro, "num_steps": r.num_steps,
            "kernel": "flow_sde", "eta": r.eta, "delta": 1e-7, "clip_range": 1e-4, "beta": 0.0,
            "guidance_scale": r.guidance_scale, "sde_steps_per_traj": len(r.sde_indices)})

    # -- the trainer's code paths ---------------------------------------------------------------------
    def rollout(self, chunks=None, want_ref: bool = False):
        self.iteration += 1
        self.traj = rollout(self.policy, self.cond, self.row_prompt, self.items, sigmas=self.sigmas, sde_indices=list(self.r.sde_indices),
                            kernel="flow_sde", eta=self.r.eta, guidance_scale=self.r.guidance_scale, seed=0,
                            iteration=self.iteration, global_indices=list(range(self.r.group)),
                            chunks=chunks or self.chunks, want_ref=want_ref,
                            ref_guidance_scale=self.r.guidance_scale)
        with torch.no_grad():
            self.images = self.policy.decode(self.traj.final)

    def update(self, loss: str) -> dict:
        cfg = self.cfgs[loss]
        fields = {}
        for rows in self.mbs:
            fields = update_minibatch(self.policy, self.traj, rows, self.adv, cfg, policy_loss_fn(cfg), self.params,
                                      self.opt, DistInfo())
        return fields

    def iteration_time(self, loss: str):
        self.rollout()
        self.update(loss)

    # -- the plain diffusers pipeline on the same transformer (LoRA included) -------------------------
    def pipeline_call(self):
        pipe, r = self.policy.pipe, self.r
        kw = dict(prompt_embeds=self.cond_full["prompt_embeds"], num_inference_steps=r.num_steps,
                  guidance_scale=r.guidance_scale, height=r.resolution, width=r.resolution, output_type="pt")
        if "pooled" in self.cond_full:
            kw["pooled_prompt_embeds"] = self.cond_full["pooled"]
        with torch.no_grad():
            pipe(**kw)

    # -- bare: the transformer called directly on the same shapes -------------------------------------
    def bare_iteration(self):
        p, r = self.policy, self.r
        tr, vae = p.transformer, p.pipe.vae
        b = r.group
        x = torch.randn(b, *p.latent_shape, device=self.device, dtype=p.compute_dtype)
        t = torch.full((b,), 500.0, device=self.device)
        emb, pooled = self.cond_full["prompt_embeds"], self.cond_full["pooled"]

        def call(rows):
            return tr(hidden_states=x[rows], timestep=t[rows], encoder_hidden_states=emb[rows],
                      pooled_projections=pooled[rows], return_dict=False)[0]

        with torch.no_grad(), p._autocast():
            for rows in self.chunks:
                for _ in range(r.num_steps):
                    call(rows)
            for i in range(0, b, p.decode_batch_size):
                vae.decode(x[i:i + p.decode_batch_size].to(vae.dtype), return_dict=False)
        for rows in self.mbs:
            self.opt.zero_grad(set_to_none=True)
            for micro in split_micro(rows, r.micro):
                for _ in r.sde_indices:
                    with p._autocast():
                        out = call(micro)
                    out.float().square().mean().backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()


def measure_sd3(bench: Bench, reps: int, warmup: int, label: str) -> dict:
    dev = bench.device
    full = [list(range(bench.r.group))]
    out = {}
    # (a) rollout at the pipeline's batch (all 16 rows per forward) vs the pipeline call
    t = interleaved({"rollout": lambda: bench.rollout(chunks=full), "pipeline": bench.pipeline_call}, reps, warmup, dev)
    out["rollout_group_s"], out["pipeline_group_s"] = t["rollout"], t["pipeline"]
    out["ratio_a_rollout_vs_pipeline"] = t["pipeline"] / t["rollout"]
    out["rollout_with_ref_forwards_s"] = statistics.median(
        [timed(lambda: bench.rollout(chunks=full, want_ref=True), dev) for _ in range(max(1, reps))])
    # (b) DPPO vs GRPO: full iterations, interleaved
    bench.rollout()
    t = interleaved({"dppo": lambda: bench.iteration_time("flow_dppo"),
                     "grpo": lambda: bench.iteration_time("flow_grpo")}, reps, warmup, dev)
    out["iteration_dppo_s"], out["iteration_grpo_s"] = t["dppo"], t["grpo"]
    out["ratio_b_dppo_vs_grpo"] = t["dppo"] / t["grpo"]
    tu = interleaved({"dppo": lambda: bench.update("flow_dppo"), "grpo": lambda: bench.update("flow_grpo")},
                     reps, 0, dev)
    out["update_dppo_s"], out["update_grpo_s"] = tu["dppo"], tu["grpo"]
    # (c) trainer vs bare, same work and geometry
    t = interleaved({"trainer": lambda: bench.iteration_time("flow_dppo"), "bare": bench.bare_iteration},
                    reps, warmup, dev)
    out["trainer_iteration_s"], out["bare_iteration_s"] = t["trainer"], t["bare"]
    out["trainer_samples_per_s"] = bench.r.group / t["trainer"]
    out["bare_samples_per_s"] = bench.r.group / t["bare"]
    out["ratio_c_trainer_vs_bare"] = t["bare"] / t["trainer"]
    # batched replay of the trained steps (config.batched_replay) vs one forward/backward per step
    tb = interleaved({"per_step": lambda: bench.update("flow_dppo"), "batched": lambda: bench.update("flow_dppo_batched")},
                     reps, 1, dev)
    out["update_per_step_replay_s"], out["update_batched_replay_s"] = tb["per_step"], tb["batched"]
    out["speedup_batched_replay"] = tb["per_step"] / tb["batched"]
    # memory
    out["peak_gib_rollout"] = peak_gib(bench.rollout, dev)
    out["peak_gib_update"] = peak_gib(lambda: bench.update("flow_dppo"), dev)
    out["peak_gib_update_batched_replay"] = peak_gib(lambda: bench.update("flow_dppo_batched"), dev)
    print(f"[{label}] done", flush=True)
    return out


def memory_sweep(policy, recipe: Recipe, device: torch.device, tiny: bool = False) -> list[dict]:
    """Peak memory (GiB) of one rollout and of one iteration's updates (per-step and batched replay) for each
    number of trained SDE steps × group size, micro-batch fixed at the recipe's: what a user needs to size a run."""
    from dataclasses import replace
    steps = {1: (0,), 3: (0, 2, 4), 5: (0, 1, 2, 3, 4)}
    groups = (4, 8) if tiny else (8, 16, 32)
    rows = []
    for n_steps, idx in steps.items():
        for g in groups:
            r = replace(recipe, group=g, sde_indices=idx, num_minibatches=max(1, g // (2 * recipe.micro)))
            bench = Bench(policy, r, device)
            bench.rollout()
            row = {"trained_steps": n_steps, "group": g, "micro": r.micro, "num_minibatches": r.num_minibatches,
                   "peak_gib_rollout": peak_gib(bench.rollout, device),
                   "peak_gib_update": peak_gib(lambda: bench.update("flow_dppo"), device),
                   "peak_gib_update_batched_replay": peak_gib(lambda: bench.update("flow_dppo_batched"), device)}
            rows.append(row)
            print(f"[memory] {row}", flush=True)
            del bench
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def flux_smoke(policy, device, group: int, num_steps: int, micro: int) -> dict:
    r = Recipe(resolution=policy.resolution, num_steps=num_steps, group=group,
               sde_indices=tuple(range(0, num_steps // 2, 2))[:3], micro=micro, num_minibatches=1,
               guidance_scale=3.5, lora_rank=64, lora_alpha=128)
    bench = Bench(policy, r, device)
    out = {}
    out["rollout_s"] = timed(bench.rollout, device)
    fields = {}
    out["update_s"] = timed(lambda: fields.update(bench.update("flow_dppo")), device)
    out["loss_finite"] = bool(torch.isfinite(torch.tensor(fields.get("loss", float("nan")))))
    out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    out.update(group=group, num_steps=num_steps, micro=micro)
    return out


# ----------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON results path")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode on the tiny in-code pipelines")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (default 5; tiny 1)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", choices=("off", "on", "both", "none"), default=None,
                    help="torch.compile phases (default both on a GPU, off with --tiny; none: no timing phase)")
    ap.add_argument("--memory-sweep", action="store_true",
                    help="peak memory of rollout and update over trained steps × group size (issue: sizing a run)")
    ap.add_argument("--skip-flux", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (tiny mode)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()   # e.g. the tiny tokenizers' truncation notices
    reps = args.reps or (1 if args.tiny else 5)
    compile_mode = args.compile or ("off" if args.tiny else "both")
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke mode")
    recipe = Recipe(resolution=32, group=4, micro=2, max_sequence_length=32) if args.tiny else Recipe()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "tiny": args.tiny, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "recipe": asdict(recipe), "reps": reps, "targets": {"ratio_a_rollout_vs_pipeline": ">= 0.97",
                                                                   "ratio_b_dppo_vs_grpo": "<= 1.02",
                                                                   "ratio_c_trainer_vs_bare": ">= 0.90"}}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool = False) -> None:
        """Write what has been measured so far: a run cut off by a time limit keeps its finished phases."""
        result["complete"] = complete
        atomic_write_json(out_path, result)

    save()
    tmp = tempfile.TemporaryDirectory()
    policy_kw = dict(resolution=recipe.resolution, lora_rank=recipe.lora_rank, lora_alpha=recipe.lora_alpha,
                     dtype="bfloat16", device=device, max_sequence_length=recipe.max_sequence_length)
    if args.tiny:
        from flowdppo.testing.tiny_pipelines import build_tiny_sd3
        build_tiny_sd3(Path(tmp.name) / "sd3")
        policy = load_diffusers_policy(str(Path(tmp.name) / "sd3"), **policy_kw)
    else:
        policy = policy_from_pipeline(build_sd35_medium(device), **policy_kw)
    result["sd3_transformer_params_b"] = sum(p.numel() for p in policy.pipe.transformer.parameters()) / 1e9
    bench = Bench(policy, recipe, device)
    if compile_mode in ("off", "both"):
        result["sd3"] = measure_sd3(bench, reps, args.warmup, "eager")
        save()
    if compile_mode in ("on", "both"):
        policy._core.compile()   # the adapter's compile=True path, applied in place
        result["sd3_compiled"] = measure_sd3(bench, reps, max(2, args.warmup), "compiled")
        save()
    if args.memory_sweep:
        result["memory_sweep"] = memory_sweep(policy, recipe, device, tiny=args.tiny)
        save()
    del bench, policy
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.skip_flux:
        fkw = dict(policy_kw, lora_rank=64, lora_alpha=128, gradient_checkpointing=True,
                   disable_cudnn_attention=True, max_sequence_length=32 if args.tiny else 512)
        if args.tiny:
            from flowdppo.testing.tiny_pipelines import build_tiny_flux
            build_tiny_flux(Path(tmp.name) / "flux")
            fpolicy = load_diffusers_policy(str(Path(tmp.name) / "flux"), **fkw)
        else:
            fpolicy = policy_from_pipeline(build_flux1_dev(device), **fkw)
        result["flux1_dev_transformer_params_b"] = sum(p.numel() for p in fpolicy.pipe.transformer.parameters()) / 1e9
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            result["flux_smoke"] = flux_smoke(fpolicy, device, group=2, num_steps=14, micro=1)
        except Exception as exc:   # keep the SD3 numbers and say what broke (e.g. OOM, a cuDNN SDPA crash)
            result["flux_smoke"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            save()
            raise
    tmp.cleanup()
    save(complete=True)
    print_table(result)


def _gib(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def print_table(res: dict) -> None:
    print(f"\ndevice: {res['device']}  torch {res['torch']}  tiny={res['tiny']}  reps={res['reps']}")
    rows = [("(a) rollout ÷ pipeline images/s", "ratio_a_rollout_vs_pipeline", "≥ 0.97"),
            ("(b) DPPO ÷ GRPO iteration time", "ratio_b_dppo_vs_grpo", "≤ 1.02"),
            ("(c) trainer ÷ bare samples/s", "ratio_c_trainer_vs_bare", "≥ 0.90"),
            ("    trainer samples/s", "trainer_samples_per_s", ""),
            ("    update speed-up, batched replay", "speedup_batched_replay", ""),
            ("    rollout s / pipeline s (one group)", None, ""),
            ("    peak GiB rollout / update", None, "")]
    phases = [k for k in ("sd3", "sd3_compiled") if k in res]
    print(f"{'measure':40s}" + "".join(f"{p:>20s}" for p in phases) + f"{'target':>10s}")
    for name, key, target in rows:
        cells = []
        for p in phases:
            d = res[p]
            if key is not None:
                cells.append(f"{d[key]:.3f}")
            elif "rollout s" in name:
                cells.append(f"{d['rollout_group_s']:.3f}/{d['pipeline_group_s']:.3f}")
            else:
                cells.append(f"{_gib(d['peak_gib_rollout'])}/{_gib(d['peak_gib_update'])}"
                             f" ({_gib(d.get('peak_gib_update_batched_replay'))} batched)")
        print(f"{name:40s}" + "".join(f"{c:>20s}" for c in cells) + f"{target:>10s}")
    for row in res.get("memory_sweep", []):
        print(f"memory: {row['trained_steps']} trained steps, group {row['group']}: rollout "
              f"{_gib(row['peak_gib_rollout'])} GiB, update {_gib(row['peak_gib_update'])} GiB "
              f"({_gib(row['peak_gib_update_batched_replay'])} batched replay)")
    if "flux_smoke" in res and "error" in res["flux_smoke"]:
        print(f"FLUX.1-dev arch smoke FAILED: {res['flux_smoke']['error']}")
    elif "flux_smoke" in res:
        f = res["flux_smoke"]
        print(f"FLUX.1-dev arch smoke: rollout {f['rollout_s']:.2f} s, update {f['update_s']:.2f} s, "
              f"peak {_gib(f['peak_gib'])} GiB, loss finite: {f['loss_finite']}")


if __name__ == "__main__":
    main()
