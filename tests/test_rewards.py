"""Rewards behind the protocol (flowdppo/rewards): CLIP family on a tiny CLIPModel, Soft-TIFA on a tiny
random Qwen3-VL built in code, OCR on text rendered with PIL (real PP-OCR models), JPEG, the registry,
and the loopback reward service (a real child process serving the JPEG reward; slow, oversized and
malformed clients on 127.0.0.1)."""
from __future__ import annotations

import math
import time

import pytest
import torch

from flowdppo.testing.tiny_pipelines import tiny_clip_tokenizer
from flowdppo.prompts import PromptItem
from flowdppo.rewards.base import Reward

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------
# Tiny models built in code
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_clip")
    tok = tiny_clip_tokenizer()
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=8)
    CLIPModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


_VLM_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    """A random Qwen3-VL (2 text layers, 1 vision block, width 16) with a byte-level tokenizer carrying the
    Qwen vision tokens and a Qwen-style chat template, saved like a hub checkpoint (tokenizer + image
    processor + model; no processor class, see soft_tifa's docstring)."""
    from transformers import Qwen2TokenizerFast, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_vlm")
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    for s in specials:
        vocab[s] = len(vocab)
    for word in ("Yes", "ĠYes", "seven", "Ġseven"):   # whole-word tokens so "Yes"/" Yes" differ from "yes"
        vocab[word] = len(vocab)
    merges = [("Y", "e"), ("Ye", "s"), ("Ġ", "Yes"), ("s", "e"), ("se", "v"), ("sev", "e"), ("seve", "n"),
              ("Ġ", "seven")]
    vocab.update({"Ye": len(vocab), "se": len(vocab) + 1, "sev": len(vocab) + 2, "seve": len(vocab) + 3})
    tok = Qwen2TokenizerFast(vocab=vocab, merges=merges, unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                             eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    tok.chat_template = _VLM_TEMPLATE
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=16, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    Qwen3VLForConditionalGeneration(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=8, temporal_patch_size=2, merge_size=2, min_pixels=32 * 32,
                             max_pixels=64 * 64).save_pretrained(path)
    return str(path)


ITEMS3 = [PromptItem("a cat"), PromptItem("a dog"), PromptItem("three red cups")]


# ----------------------------------------------------------------------------------------------------
# CLIP family
# ----------------------------------------------------------------------------------------------------
def test_pickscore_is_clip_logits_and_clip_is_their_cosine(tiny_clip_dir):
    from transformers import CLIPModel, CLIPTokenizer

    from flowdppo.rewards.clip_rewards import ClipScoreReward, PickScoreReward
    from flowdppo.rewards.common import clip_pixel_values
    pick = PickScoreReward(model=tiny_clip_dir, processor=tiny_clip_dir, device="cpu", batch_size=2)
    clip = ClipScoreReward(model=tiny_clip_dir, device="cpu")
    assert isinstance(pick, Reward) and pick.name == "pickscore" and clip.name == "clip"
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    p, c = pick(images, ITEMS3), clip(images, ITEMS3)
    assert p.shape == (3,) and c.shape == (3,) and (c.abs() <= 1).all()
    # oracle: CLIPModel's own forward — logits_per_image = exp(logit_scale)·cos
    model, tok = CLIPModel.from_pretrained(tiny_clip_dir).eval(), CLIPTokenizer.from_pretrained(tiny_clip_dir)
    t = tok([it.text for it in ITEMS3], padding=True, return_tensors="pt")
    px = clip_pixel_values(images, size=32, crop=32, mean=pick._pre["mean"], std=pick._pre["std"])
    with torch.no_grad():
        logits = model(input_ids=t.input_ids, attention_mask=t.attention_mask, pixel_values=px).logits_per_image.diag()
    torch.testing.assert_close(p, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, logits / model.logit_scale.exp().detach(), rtol=1e-5, atol=1e-6)


def test_clip_preprocessing_matches_the_image_processor(tiny_clip_dir):
    from transformers import AutoImageProcessor

    from flowdppo.rewards.common import clip_pixel_values, to_pil
    ip = AutoImageProcessor.from_pretrained(tiny_clip_dir)
    # smooth images (like generated ones): on white noise any two antialiasing filters disagree
    coarse = torch.rand(2, 3, 8, 6, generator=torch.Generator().manual_seed(1))
    images = torch.nn.functional.interpolate(coarse, size=(64, 48), mode="bilinear", align_corners=False)
    ours = clip_pixel_values(images, size=32, crop=32, mean=ip.image_mean, std=ip.image_std)
    ref = ip(images=to_pil(images), return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().mean() < 0.01    # PIL resamples uint8; we resample floats


def test_nan_images_fail_loudly(tiny_clip_dir):
    from flowdppo.rewards.clip_rewards import ClipScoreReward
    images = torch.rand(3, 3, 32, 32)
    images[1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ClipScoreReward(model=tiny_clip_dir, device="cpu")(images, ITEMS3)


def test_hpsv2_block_is_explained_and_converted_weights_load(tiny_clip_dir, tmp_path):
    from flowdppo.rewards.clip_rewards import HPSv2Reward
    with pytest.raises(ValueError, match="torchvision"):
        HPSv2Reward()
    with pytest.raises(ValueError, match="open_clip"):
        HPSv2Reward(model=str(tmp_path / "HPS_v2.1_compressed.pt"))
    hps = HPSv2Reward(model=tiny_clip_dir, processor=tiny_clip_dir, device="cpu")
    assert hps.name == "hpsv2" and hps(torch.rand(3, 3, 32, 32), ITEMS3).shape == (3,)


# ----------------------------------------------------------------------------------------------------
# Soft-TIFA with a VLM
# ----------------------------------------------------------------------------------------------------
def test_answer_forms_and_aggregation():
    from flowdppo.rewards.soft_tifa import aggregate, answer_surface_forms
    assert answer_surface_forms("Yes") == ("Yes", "yes", " Yes", " yes")
    forms = answer_surface_forms("seven")
    assert {"seven", "Seven", "7", " seven", " 7"} <= set(forms)
    assert {"3", "three", " Three"} <= set(answer_surface_forms("3"))
    lp = torch.log(torch.tensor([0.9, 0.5, 0.2]))
    assert math.isclose(float(aggregate(lp, "gm")), (0.9 * 0.5 * 0.2) ** (1 / 3), rel_tol=1e-6)
    assert math.isclose(float(aggregate(lp, "am")), (0.9 + 0.5 + 0.2) / 3, rel_tol=1e-6)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(lp, "median")


def test_soft_tifa_on_a_tiny_qwen3_vl(tiny_vlm_dir):
    from flowdppo.rewards.soft_tifa import SoftTifaVLMReward
    batched = SoftTifaVLMReward(tiny_vlm_dir, device="cpu", dtype="float32", batch_size=8)
    single = SoftTifaVLMReward(tiny_vlm_dir, device="cpu", dtype="float32", batch_size=1)
    # first tokens of the surface forms: "Yes" and " Yes" are whole-word tokens, "yes"/" yes" start at "y"/"Ġ"
    tk = batched.tokenizer
    assert set(batched.answer_token_ids("Yes")) == {tk.convert_tokens_to_ids(t) for t in ("Yes", "ĠYes", "y", "Ġ")}
    items = [PromptItem("two dogs", atoms=("Is there a dog?", "How many dogs are there?"),
                        meta={"answers": ["Yes", "seven"]}),
             PromptItem("a cup", atoms=("Is there a cup?",))]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    scores = batched(images, items)
    assert scores.shape == (2,) and ((scores > 0) & (scores <= 1)).all()
    # oracle 1: left-padded batching changes nothing — one unpadded forward per (image, question)
    from flowdppo.rewards.common import to_pil
    pil = to_pil(images)
    lp_b = batched.answer_log_probs([pil[0], pil[0], pil[1]], list(items[0].atoms) + list(items[1].atoms),
                                    ["Yes", "seven", "Yes"])
    lp_s = single.answer_log_probs([pil[0], pil[0], pil[1]], list(items[0].atoms) + list(items[1].atoms),
                                   ["Yes", "seven", "Yes"])
    torch.testing.assert_close(lp_b, lp_s, rtol=1e-4, atol=1e-5)
    # oracle 2: the reward is the geometric mean of the atoms' probabilities
    torch.testing.assert_close(scores, torch.stack([lp_b[:2].mean().exp(), lp_b[2].exp()]), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="no atoms"):
        batched(images, [items[0], PromptItem("no questions")])


# ----------------------------------------------------------------------------------------------------
# OCR (real rapidocr models) and JPEG
# ----------------------------------------------------------------------------------------------------
def _render(text: str, size=(96, 320)) -> torch.Tensor:
    import matplotlib
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    img = Image.new("RGB", (size[1], size[0]), "white")
    font = ImageFont.truetype(matplotlib.get_data_path() + "/fonts/ttf/DejaVuSans.ttf", 40)
    ImageDraw.Draw(img).text((12, 22), text, fill="black", font=font)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


def test_ocr_helpers():
    from flowdppo.rewards.ocr import levenshtein, target_text, text_similarity
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert target_text(PromptItem('a neon sign that says "Open Late" on a wall')) == "Open Late"
    assert target_text(PromptItem("plain", meta={"ocr_text": "xyz"})) == "xyz"
    with pytest.raises(ValueError, match="quotes no target"):
        target_text(PromptItem("a sign"))
    assert text_similarity("open  LATE", "Open Late") == 1.0
    assert text_similarity("", "abcd") == 0.0 and text_similarity("abXd", "abcd") == 0.75
    assert text_similarity("a much longer reading", "ab") == 0.0     # clipped at 0


def test_ocr_reads_rendered_text():
    pytest.importorskip("rapidocr")
    from flowdppo.rewards.ocr import OCRReward
    images = torch.stack([_render("HELLO 42"), _render("HELLO 42"), torch.ones(3, 96, 320)])
    items = [PromptItem('a sign that says "hello 42"'), PromptItem('a sign that says "goodbye"'),
             PromptItem('a sign that says "hello 42"')]
    scores = OCRReward()(images, items)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] < 0.5
    assert scores[2] == 0.0


def test_jpeg_compressibility():
    from flowdppo.rewards.jpeg import JpegCompressibility, jpeg_kilobytes
    from flowdppo.rewards.common import to_pil
    flat = torch.full((1, 3, 64, 64), 0.5)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = torch.cat([flat, noise])
    r = JpegCompressibility()(images, [PromptItem("a"), PromptItem("b")])
    assert r[0] > r[1]
    assert float(r[1]) == pytest.approx(-jpeg_kilobytes(to_pil(noise)[0], 95))
    per_mp = JpegCompressibility(per_megapixel=True)(images, [PromptItem("a"), PromptItem("b")])
    torch.testing.assert_close(per_mp, r / (64 * 64 / 1e6))


# ----------------------------------------------------------------------------------------------------
# Registry and service
# ----------------------------------------------------------------------------------------------------
def test_registry_names_kwargs_world_fallback_and_errors(tiny_clip_dir):
    from flowdppo.rewards.registry import make_reward, register_reward
    assert make_reward("jpeg", quality=80).quality == 80
    assert make_reward("clip", model=tiny_clip_dir, device="cpu").name == "clip"
    world = make_reward("ink")                       # the embedded world's reward, via the fallback
    assert isinstance(world, Reward) and world.name == "ink"
    with pytest.raises(ValueError, match="pickscore"):
        make_reward("no_such_reward")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("jpeg", lambda: None)
    with pytest.raises(ValueError, match="model="):
        make_reward("hpsv2")


class _NanReward:
    name = "nan_maker"

    def __call__(self, images, items):
        return torch.tensor([0.0, float("nan")])


def test_reward_service_in_a_child_process_matches_local_scores():
    from flowdppo.rewards.jpeg import JpegCompressibility
    from flowdppo.rewards.service import spawn_reward_server
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    images[0] = 0.25
    items = [PromptItem("a"), PromptItem("b", atoms=("q",), meta={"answers": ["Yes"], "k": 1})]
    remote = spawn_reward_server("jpeg", kwargs={"quality": 90})
    try:
        assert isinstance(remote, Reward) and remote.name == "jpeg"
        quantised = (images * 255).round() / 255        # the wire carries uint8 images
        torch.testing.assert_close(remote(images, items), JpegCompressibility(quality=90)(quantised, items))
    finally:
        remote.close()


def test_reward_service_errors_reach_the_client():
    from flowdppo.rewards.service import RemoteReward, RewardServer
    with pytest.raises(ValueError, match="loopback"):
        RewardServer(_NanReward(), host="0.0.0.0")
    server = RewardServer(_NanReward()).start()
    try:
        client = RemoteReward(f"http://127.0.0.1:{server.port}")
        assert client.name == "nan_maker"
        with pytest.raises(RuntimeError, match=r"reward 'nan_maker' failed: ValueError: .*NaN"):   # 500, no traceback
            client(torch.rand(2, 3, 8, 8), [PromptItem("a"), PromptItem("b")])
    finally:
        server.close()


# ----------------------------------------------------------------------------------------------------
# The service under a slow, an oversized and a malformed client (127.0.0.1 only; every socket timed out)
# ----------------------------------------------------------------------------------------------------
class _MeanReward:
    """Mean intensity per image; counts its calls (requests that reached the scorer)."""
    name = "mean"

    def __init__(self):
        self.calls = 0

    def __call__(self, images, items):
        self.calls += 1
        return images.flatten(1).mean(1)


def _raw_request(port: int, head: str, body: bytes = b"", *, timeout: float = 10.0) -> tuple[str, float]:
    """Send a hand-written request on a fresh socket; (status line + JSON reply, seconds until the reply)."""
    import socket
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode("utf-8", "replace"), time.perf_counter() - t0


def test_reward_service_slow_client_does_not_block_others():
    """A client that declares Content-Length 100000000 and sends 10 bytes holds only its own connection: GET
    /info answers at once while it hangs (bound: 1.5 s, well under the 3 s connection timeout that would
    be its wait if the server served one request at a time), and the stalled request gets 408."""
    import socket
    from flowdppo.rewards.service import RewardServer
    server = RewardServer(_MeanReward(), timeout=3.0).start()
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10.0)
    try:
        slow.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"0123456789")
        time.sleep(0.2)                                   # the server is now reading the slow body
        for _ in range(3):
            reply, took = _raw_request(server.port, "GET /info HTTP/1.1\r\nHost: x")
            assert reply.startswith("HTTP/1.0 200") and '"max_body_bytes"' in reply and took < 1.5, (reply, took)
        t0 = time.perf_counter()
        data = b""
        while chunk := slow.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.0 408") and b"did not arrive within 3 s" in data, data
        assert time.perf_counter() - t0 < 5.0
    finally:
        slow.close()
        server.close()


def test_reward_service_refuses_an_oversized_body_before_reading_it():
    """Content-Length above max_body_bytes gets 413 at once — the body is never sent here, so a server that
    tried to read it would answer 408 after its 3 s timeout instead."""
    from flowdppo.rewards.service import RewardServer
    reward = _MeanReward()
    server = RewardServer(reward, max_body_bytes=2**20, timeout=3.0).start()
    try:
        reply, took = _raw_request(server.port, f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: {256 * 2**20}")
        assert reply.startswith("HTTP/1.0 413") and "exceeds this server's limit of 1048576 bytes" in reply, reply
        assert took < 1.5 and reward.calls == 0
    finally:
        server.close()


@pytest.mark.parametrize("length,body,status,message", [
    (None, b"", "411", "Content-Length is required"),
    ("-1", b"", "400", "non-negative integer"),
    ("1e3", b"", "400", "non-negative integer"),
    ("{n}", b"{oops}\n", "400", "header line is not JSON"),
    ("{n}", b'{"shape": [1, 1, 2, 2], "dtype": "uint8", "items": []}\n1234', "400", "items must be a list of 1"),
    ("{n}", b'{"shape": [1, 1, 2, 2], "dtype": "float", "items": [{}]}\n12', "400", "unsupported image dtype"),
    ("{n}", b'{"shape": [1, 1, 2, 2], "dtype": "uint8", "items": [{}]}\n12', "400", "do not match shape"),
])
def test_reward_service_answers_bad_requests_with_4xx_and_a_message(length, body, status, message):
    from flowdppo.rewards.service import RewardServer
    reward = _MeanReward()
    server = RewardServer(reward, timeout=3.0).start()
    try:
        head = "POST /score HTTP/1.1\r\nHost: x" + ("" if length is None else
                                                   f"\r\nContent-Length: {length.format(n=len(body))}")
        reply, took = _raw_request(server.port, head, body)
        assert reply.startswith(f"HTTP/1.0 {status}") and message in reply and "Traceback" not in reply, reply
        assert took < 1.5 and reward.calls == 0
    finally:
        server.close()


def test_remote_reward_splits_a_batch_under_the_body_limit():
    """8 images of 3×16×16 bytes against a 2000-byte limit: several requests, the local scores exactly."""
    from flowdppo.rewards.service import RemoteReward, RewardServer
    reward = _MeanReward()
    server = RewardServer(reward, max_body_bytes=2000).start()
    try:
        client = RemoteReward(f"http://127.0.0.1:{server.port}", timeout=10.0)
        images = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).round() / 255
        items = [PromptItem(f"p{i}") for i in range(8)]
        torch.testing.assert_close(client(images, items), images.flatten(1).mean(1))
        assert reward.calls == 4             # 2 images (2 × 768 bytes + headers) per request
    finally:
        server.close()
