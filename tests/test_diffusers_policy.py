"""The diffusers policy adapters on tiny random-weight SD3, FLUX.1 and FLUX.2-klein pipelines built in code,
saved to disk and loaded back through load_diffusers_policy(path) — the real loading path.

Oracles: the diffusers pipelines themselves (an ODE rollout through policy.velocity + flowdppo.sde must
reproduce pipeline(...) images from the same noise), separate cond/uncond forwards for CFG, and parameter
snapshots for "only LoRA changes".
"""
from __future__ import annotations

import pytest
import torch

from flowdppo.testing.tiny_pipelines import TINY_RESOLUTION, build_tiny_flux, build_tiny_flux2_klein, build_tiny_sd3
from flowdppo import sde
from flowdppo.policy.base import Policy
from flowdppo.policy.pipelines import detect_family, load_diffusers_policy

torch.set_num_threads(1)
FAMILIES = ("sd3", "flux", "flux2_klein")
PROMPTS = ["a red cat", "two dogs"]
# guidance used in the pipeline-equivalence test: true CFG for sd3 / flux2_klein, embedded for flux (dev)
GUIDANCE = {"sd3": 3.0, "flux": 3.5, "flux2_klein": 4.0}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_pipelines")
    out = {}
    for fam, build in (("sd3", build_tiny_sd3), ("flux", build_tiny_flux), ("flux2_klein", build_tiny_flux2_klein)):
        build(root / fam)
        out[fam] = str(root / fam)
    build_tiny_flux2_klein(root / "flux2_distilled", is_distilled=True)
    out["flux2_distilled"] = str(root / "flux2_distilled")
    return out


def _load(path, **kw):
    kw.setdefault("dtype", "float32")
    kw.setdefault("lora_rank", 4)
    kw.setdefault("lora_alpha", 8)
    kw.setdefault("max_sequence_length", 32)
    return load_diffusers_policy(path, resolution=TINY_RESOLUTION, device="cpu", **kw)


def _all_params(policy) -> dict[str, torch.Tensor]:
    """Every parameter of every pipeline component (text encoders, VAE, transformer), cloned."""
    out = {}
    for cname, comp in policy.pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            out.update({f"{cname}.{n}": p.detach().clone() for n, p in comp.named_parameters()})
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_family_detected_from_model_index(paths, family):
    assert detect_family(paths[family]) == family


def test_unknown_model_directory_fails_loudly(tmp_path):
    with pytest.raises(ValueError, match="family="):
        detect_family(str(tmp_path))


def _ode_images(policy, x0, w, steps: int = 2):
    """A `steps`-step Euler rollout through policy.velocity + flowdppo.sde on the pipeline's σ grid, decoded."""
    sig = policy.sigma_schedule(steps)
    cond = policy.encode_prompts(PROMPTS)
    x = x0
    with torch.no_grad():
        for i in range(steps):
            v = policy.velocity(x, float(sig[i]), cond, guidance_scale=w)
            x = sde.step("ode", x=x, v=v, sigma=float(sig[i]), sigma_next=float(sig[i + 1]), eta=0.0).x_next
        return policy.decode(x)


def _pipeline_images(path, family, x0, w, max_sequence_length, lora_dir=None, steps: int = 2):
    """The same generation by the plain diffusers pipeline (optionally with a saved LoRA loaded)."""
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    latents = x0
    if family == "flux2_klein":  # this pipeline takes unpacked [B, C, h, w] latents and packs them itself
        side = int(x0.shape[1] ** 0.5)
        latents = x0.permute(0, 2, 1).reshape(x0.shape[0], -1, side, side)
    with torch.no_grad():
        out = pipe(prompt=PROMPTS, height=TINY_RESOLUTION, width=TINY_RESOLUTION, num_inference_steps=steps,
                   guidance_scale=w, latents=latents, output_type="pt", max_sequence_length=max_sequence_length)
    return out.images.float()


@pytest.mark.parametrize("family", FAMILIES)
def test_ode_rollout_reproduces_the_diffusers_pipeline(paths, family):
    """σ schedule, σ→timestep conversion, CFG / guidance embedding, packing and decoding all agree with
    the pipeline: a 2-step Euler rollout via flowdppo.sde gives the pipeline's images from the same noise."""
    policy = _load(paths[family], max_sequence_length=None)   # the pipeline's default text length
    assert isinstance(policy, Policy)
    sig = policy.sigma_schedule(2)
    assert sig.shape == (3,) and sig[0] == 1.0 and sig[-1] == 0.0
    x0 = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    ours = _ode_images(policy, x0, GUIDANCE[family])
    ref = _pipeline_images(paths[family], family, x0, GUIDANCE[family], policy.max_sequence_length)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_velocity_decode_and_sde_rollout(paths, family):
    policy = _load(paths[family])
    cond = policy.encode_prompts(PROMPTS)
    assert all(v.shape[0] == 2 for v in cond.values())
    assert any(k.startswith("uncond_") for k in cond) == (family != "flux")
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
    sig = policy.sigma_schedule(2)
    with torch.no_grad():
        v = policy.velocity(x, torch.full((2,), 0.7), cond)
        assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
        # step 0: Flow-SDE (sampled), step 1: ODE to σ = 0
        v0 = policy.velocity(x, float(sig[0]), cond)
        st = sde.step("flow_sde", x=x, v=v0, sigma=float(sig[0]), sigma_next=float(sig[1]), eta=0.8,
                      generator=torch.Generator().manual_seed(2))
        assert torch.isfinite(st.logp_per_dim).all() and st.x_next.shape == x.shape
        replay = sde.step("flow_sde", x=x, v=policy.velocity(x, float(sig[0]), cond), sigma=float(sig[0]),
                          sigma_next=float(sig[1]), eta=0.8, x_next=st.x_next)
        torch.testing.assert_close(replay.logp_per_dim, st.logp_per_dim, rtol=0, atol=1e-6)
        v1 = policy.velocity(st.x_next, float(sig[1]), cond)
        x_final = sde.step("ode", x=st.x_next, v=v1, sigma=float(sig[1]), sigma_next=0.0, eta=0.0).x_next
        img = policy.decode(x_final)
    assert img.shape == (2, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_training_reference_and_state_roundtrip(paths, family, tmp_path):
    policy = _load(paths[family])
    cond = policy.encode_prompts(PROMPTS)
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(3))
    w = 2.0 if family == "sd3" else 1.0   # exercise the CFG path under gradients once
    with torch.no_grad():
        v_before = policy.velocity(x, 0.6, cond, guidance_scale=w)
    params = policy.trainable_parameters()
    lora_names = {n for n, p in policy.pipe.transformer.named_parameters() if p.requires_grad}
    assert params and all("lora_" in n for n in lora_names)
    assert all(p.dtype == torch.float32 for p in params)
    before = _all_params(policy)
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):  # two steps: lora_B starts at 0, so lora_A only gets a gradient from step 2
        opt.zero_grad()
        policy.velocity(x, 0.6, cond, guidance_scale=w).pow(2).mean().backward()
        opt.step()
    after = _all_params(policy)
    changed = {name for name, p in before.items() if not torch.equal(p, after[name])}
    lora_all = {name for name in before if "lora_" in name}
    assert changed <= lora_all, f"non-LoRA weights changed: {sorted(changed - lora_all)[:3]}"
    # most LoRA tensors move; a few legitimately get zero gradient (e.g. the context-query projection
    # of SD3's last block, whose context output is discarded)
    assert len(changed) >= 0.8 * len(lora_all), (len(changed), len(lora_all))
    for cname, comp in policy.pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            for n, p in comp.named_parameters():
                assert (p.grad is not None) == ("lora_" in n), f"{cname}.{n} grad"
    with torch.no_grad():
        v_after = policy.velocity(x, 0.6, cond, guidance_scale=w)
        with policy.reference():
            v_ref = policy.velocity(x, 0.6, cond, guidance_scale=w)
        v_after_again = policy.velocity(x, 0.6, cond, guidance_scale=w)
    assert not torch.allclose(v_after, v_before)
    torch.testing.assert_close(v_ref, v_before, rtol=0, atol=1e-6)
    torch.testing.assert_close(v_after_again, v_after, rtol=0, atol=0)   # adapters re-enabled

    state = policy.trainable_state_dict()
    assert state and all("lora_" in k for k in state)
    torch.save(state, tmp_path / "lora.pt")
    fresh = _load(paths[family])
    fresh.load_trainable_state_dict(torch.load(tmp_path / "lora.pt"))
    for k, v in fresh.trainable_state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, 0.6, fresh.encode_prompts(PROMPTS), guidance_scale=w),
                                   v_after, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="LoRA state mismatch"):
        fresh.load_trainable_state_dict({k: v for k, v in list(state.items())[1:]})

    # the LoRA also works in a plain diffusers pipeline (evaluation / inference outside flowdppo)
    policy.save_lora_for_diffusers(tmp_path / "lora_diffusers")
    x0 = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(7))
    ref = _pipeline_images(paths[family], family, x0, GUIDANCE[family], policy.max_sequence_length,
                           lora_dir=tmp_path / "lora_diffusers")
    torch.testing.assert_close(_ode_images(policy, x0, GUIDANCE[family]), ref, rtol=0, atol=1e-4)


def test_full_finetune_reference_is_a_frozen_copy(paths):
    policy = _load(paths["sd3"], full_finetune=True)
    cond = policy.encode_prompts(PROMPTS)
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        v_before = policy.velocity(x, 0.5, cond)
    params = policy.trainable_parameters()
    assert len(params) == len(list(policy.pipe.transformer.parameters()))
    others = {k: v for k, v in _all_params(policy).items() if not k.startswith("transformer.")}
    opt = torch.optim.AdamW(params, lr=1e-3)
    policy.velocity(x, 0.5, cond).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        v_after = policy.velocity(x, 0.5, cond)
        with policy.reference():
            v_ref = policy.velocity(x, 0.5, cond)
    assert not torch.allclose(v_after, v_before)
    torch.testing.assert_close(v_ref, v_before, rtol=0, atol=1e-6)
    for k, v in _all_params(policy).items():
        if k in others:
            assert torch.equal(v, others[k]), k
    state = policy.trainable_state_dict()
    assert set(state) == set(policy.pipe.transformer.state_dict())


def test_prompts_are_encoded_once_per_text(paths):
    policy = _load(paths["sd3"], prompt_cache_size=2)
    seen = []
    inner = policy._encode_texts
    policy._encode_texts = lambda texts: (seen.extend(texts), inner(texts))[1]
    a = policy.encode_prompts(["x", "y", "x"])
    torch.testing.assert_close(a["prompt_embeds"][0], a["prompt_embeds"][2])
    assert not torch.equal(a["prompt_embeds"][0], a["prompt_embeds"][1])
    policy.encode_prompts(["y", "x"])
    assert sorted(seen) == ["", "x", "y"]           # "" = the unconditional embedding, encoded once
    policy.encode_prompts(["z"])                       # cache size 2: evicts the least recently used ("y")
    policy.encode_prompts(["x"])
    policy.encode_prompts(["y"])
    assert seen.count("y") == 2 and seen.count("x") == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_offloaded_text_encoders_visit_the_device_only_to_encode(paths, family):
    """offload_text_encoders: every text encoder moves to the policy's device right before an encode of
    uncached prompts and back to the CPU right after (recorded .to() calls, in order); cached prompts move
    nothing; the embeddings equal those of a policy whose encoders never move."""
    plain = _load(paths[family])
    policy = _load(paths[family], offload_text_encoders=True)
    moves: list[tuple[str, str]] = []
    encoder_names = [n for n, m in policy.pipe.components.items()
                     if n.startswith("text_encoder") and isinstance(m, torch.nn.Module)]
    assert encoder_names, family
    for name in encoder_names:
        module = policy.pipe.components[name]
        assert all(p.device.type == "cpu" for p in module.parameters())
        original = module.to

        def spy(*args, _name=name, _to=original, **kw):
            moves.append((_name, str(torch.device(args[0]) if args else kw.get("device"))))
            return _to(*args, **kw)
        module.to = spy
    got = policy.encode_prompts(PROMPTS)
    want = plain.encode_prompts(PROMPTS)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    device = str(policy.device)
    per_encode = [(n, device) for n in encoder_names] + [(n, "cpu") for n in encoder_names]
    n_encodes = 2 if policy.true_cfg else 1          # the prompts, then "" for the unconditional embedding
    assert moves == per_encode * n_encodes
    moves.clear()
    policy.encode_prompts(PROMPTS)                    # cached: the encoders stay where they are
    assert moves == []
    policy.encode_prompts(["a new prompt"])
    assert moves == per_encode


def test_cfg_is_uncond_plus_scaled_difference(paths):
    policy = _load(paths["flux2_klein"])
    cond = policy.encode_prompts(PROMPTS)
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(5))
    pos = {k: v for k, v in cond.items() if not k.startswith("uncond_")}
    neg = {k[len("uncond_"):]: v for k, v in cond.items() if k.startswith("uncond_")}
    with torch.no_grad():
        v_c, v_u = policy.velocity(x, 0.4, pos), policy.velocity(x, 0.4, neg)
        v = policy.velocity(x, 0.4, cond, guidance_scale=4.0)
    torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="uncond_"):
        policy.velocity(x, 0.4, pos, guidance_scale=4.0)


def test_guidance_embedding_and_distilled_models(paths):
    flux = _load(paths["flux"])
    cond = flux.encode_prompts(PROMPTS)
    x = torch.randn(2, *flux.latent_shape)
    with torch.no_grad():
        assert not torch.allclose(flux.velocity(x, 0.5, cond, guidance_scale=1.0),
                                  flux.velocity(x, 0.5, cond, guidance_scale=3.5))
    distilled = _load(paths["flux2_distilled"])
    cond = distilled.encode_prompts(PROMPTS)
    assert not any(k.startswith("uncond_") for k in cond)
    with pytest.raises(ValueError, match="no classifier-free guidance"):
        distilled.velocity(x, 0.5, cond, guidance_scale=4.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_weights_autocast_and_fp32_outputs(paths, family):
    policy = _load(paths[family], dtype="bfloat16", gradient_checkpointing=True)
    assert policy.pipe.transformer.dtype == torch.bfloat16 or any(
        p.dtype == torch.bfloat16 for p in policy.pipe.transformer.parameters())
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    cond = policy.encode_prompts(PROMPTS)
    x = torch.randn(2, *policy.latent_shape)
    v = policy.velocity(x, 0.5, cond)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    v.pow(2).mean().backward()
    grads = [p.grad for p in policy.trainable_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    img = policy.decode(x)
    assert img.dtype == torch.float32 and torch.isfinite(img).all()


def test_gradient_checkpointing_gives_the_same_gradients(paths):
    grads = []
    for ckpt in (False, True):
        policy = _load(paths["sd3"], gradient_checkpointing=ckpt)
        torch.manual_seed(0)
        for p in policy.trainable_parameters():   # non-zero B so every LoRA weight gets a gradient
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(6))
        policy.velocity(x, 0.5, policy.encode_prompts(PROMPTS)).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_configuration_errors_name_the_fix(paths):
    with pytest.raises(ValueError, match="multiple of"):
        load_diffusers_policy(paths["sd3"], resolution=30, dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="matched no module"):
        _load(paths["sd3"], lora_target_modules=["no_such_layer"])
    with pytest.raises(ValueError, match="dtype"):
        load_diffusers_policy(paths["sd3"], dtype="float16")


def test_paper_configs_load_and_their_flux_shift_is_the_pipeline_grid(paths):
    """configs/*.json parse with the trainer's schema, and the static `shift` written for the FLUX recipes
    reproduces the pipelines' own σ grid at 512 px (1024 packed tokens) — checked on the tiny pipelines
    at the resolution that gives 1024 tokens there (VAE factor 2 → 128 px)."""
    import json
    from pathlib import Path

    from flowdppo.config import make_config
    root = Path(__file__).resolve().parents[1] / "configs"
    cfgs = {n: make_config(json.loads((root / f"{n}.json").read_text())) for n in
            ("sd35_medium_geneval2", "flux1_dev_geneval2", "flux2_klein_geneval2")}
    assert cfgs["sd35_medium_geneval2"].lora_rank == 32 and cfgs["flux2_klein_geneval2"].lora_rank == 64
    for name, fam in (("flux1_dev_geneval2", "flux"), ("flux2_klein_geneval2", "flux2_klein")):
        cfg = cfgs[name]
        policy = load_diffusers_policy(paths[fam], resolution=128, dtype="float32", device="cpu", lora_rank=1,
                                       lora_alpha=1)
        assert policy.latent_shape[0] == 1024
        torch.testing.assert_close(policy.sigma_schedule(cfg.num_steps), sde.shifted_sigmas(cfg.num_steps, cfg.shift),
                                   rtol=0, atol=2e-5)


def test_lora_alpha_none_means_twice_the_rank(paths):
    policy = _load(paths["flux"], lora_rank=3, lora_alpha=None)
    cfg = policy.pipe.transformer.peft_config["default"]
    assert cfg.r == 3 and cfg.lora_alpha == 6


def test_sigma_grid_convention_on_the_sd3_adapter_and_the_flux_adapters(paths):
    """config.sigma_grid through trainer.sigma_grid (docs/conventions.md): SD3 (scheduler shift 3, K = 10)
    "pipeline" = the scheduler's set_timesteps(10) grid 1, .9601, …, .2780, .0089, 0 and "official" =
    shift(linspace(1, 1/10, 10)) ∪ {0} = 1, 27/28, …, 3/7, 1/4, 0 (the scheduler's shift, not config.shift);
    their largest gap is 0.241, at the last step.  The FLUX adapters already use the official form: both
    grids are identical.  Values pinned to 4 decimals (pipeline) and to the exact rationals at fp32 (official)."""
    from flowdppo.trainer import sigma_grid
    sd3 = _load(paths["sd3"])
    pipeline = sigma_grid(sd3, 10, 1.0, "pipeline")
    official = sigma_grid(sd3, 10, 1.0, "official")
    torch.testing.assert_close(pipeline, torch.tensor([1.0, .9601, .9133, .8577, .7904, .7073, .6022, .4649, .2780,
                                                       .0089, 0.0], dtype=torch.float64), rtol=0, atol=5e-5)
    exact = [1, 27 / 28, 12 / 13, 7 / 8, 9 / 11, 3 / 4, 2 / 3, 9 / 16, 3 / 7, 1 / 4, 0]
    torch.testing.assert_close(official, torch.tensor(exact, dtype=torch.float64), rtol=0, atol=1e-7)
    gap = (official - pipeline).abs()
    assert int(gap.argmax()) == 9 and abs(float(gap.max()) - 0.2411) < 1e-4
    with pytest.raises(ValueError, match="sigma_grid"):
        sd3.sigma_schedule(10, grid="uniform")
    for fam in ("flux", "flux2_klein"):
        policy = _load(paths[fam])
        assert torch.equal(sigma_grid(policy, 10, 1.0, "official"), sigma_grid(policy, 10, 1.0, "pipeline"))
