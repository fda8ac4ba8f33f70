"""Run a reward in another process (another GPU, another venv) behind a loopback HTTP endpoint.

    # terminal / launcher (e.g. CUDA_VISIBLE_DEVICES=1):
    python -m flowdppo.rewards.service --reward pickscore --port 8765 --kwargs '{"device": "cuda"}'
    # trainer:
    reward = RemoteReward("http://127.0.0.1:8765")          # implements the Reward protocol
    # or both in one call (the child process is stopped with .close()):
    reward = spawn_reward_server("jpeg")

Wire format (no pickle): POST /score with body = one JSON header line + "\n" + the raw image bytes.
The header holds {"shape": [B, C, H, W], "dtype": "uint8", "items": [{"text", "atoms", "meta"}, …]};
images travel as uint8 (the precision every PIL-based scorer sees anyway).  The reply is
{"name", "scores": [B floats]} or, on any server-side exception, HTTP 500 with {"error": message} —
the client re-raises it as RuntimeError naming the reward.  GET /info answers {"name"}.
The server binds loopback addresses only and scores one request at a time (one model, one device).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..prompts import PromptItem
from .base import Reward, check_scores
from .common import check_images

LOOPBACK = ("127.0.0.1", "localhost")


def encode_request(images: Tensor, items: Sequence[PromptItem]) -> bytes:
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    header = {"shape": list(x.shape), "dtype": "uint8",
              "items": [{"text": it.text, "atoms": list(it.atoms), "meta": it.meta} for it in items]}
    return json.dumps(header).encode("utf-8") + b"\n" + x.numpy().tobytes()


def decode_request(body: bytes) -> tuple[Tensor, list[PromptItem]]:
    head, _, raw = body.partition(b"\n")
    header = json.loads(head)
    if header.get("dtype") != "uint8":
        raise ValueError(f"unsupported image dtype {header.get('dtype')!r}")
    shape = tuple(int(s) for s in header["shape"])
    arr = np.frombuffer(raw, dtype=np.uint8)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"image bytes ({arr.size}) do not match shape {shape}")
    images = torch.from_numpy(arr.copy()).reshape(shape).float() / 255.0
    items = [PromptItem(text=d["text"], atoms=tuple(d.get("atoms", ())), meta=d.get("meta", {})) for d in header["items"]]
    return images, items


class RewardServer:
    """Serve `reward` on http://host:port (port 0 = any free port; see .port after construction)."""

    def __init__(self, reward: Reward, *, host: str = "127.0.0.1", port: int = 0):
        if host not in LOOPBACK:
            raise ValueError(f"host={host!r}: the reward service binds loopback only ({LOOPBACK})")
        self.reward = reward
        self._httpd = HTTPServer((host, port), self._handler())
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def _handler(self):
        reward = self.reward

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 (http.server naming)
                if self.path == "/info":
                    self._reply(200, {"name": reward.name})
                else:
                    self._reply(404, {"error": f"unknown path {self.path}"})

            def do_POST(self):  # noqa: N802
                if self.path != "/score":
                    self._reply(404, {"error": f"unknown path {self.path}"})
                    return
                try:
                    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    images, items = decode_request(body)
                    scores = check_scores(reward.name, reward(images, items), len(items))
                    self._reply(200, {"name": reward.name, "scores": scores.tolist()})
                except Exception as err:  # noqa: BLE001 — every failure goes back to the client, loudly
                    self._reply(500, {"error": f"{type(err).__name__}: {err}"})

            def log_message(self, *args):  # keep the trainer's console clean
                pass

        return Handler

    def start(self) -> "RewardServer":
        """Serve in a daemon thread (tests, same-process use)."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class RemoteReward:
    """Reward protocol client for a RewardServer.  `name` is read from the server unless given."""

    def __init__(self, url: str, *, name: Optional[str] = None, timeout: float = 600.0, process=None):
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self._process = process
        self.name = name or self._get("/info")["name"]

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=self.timeout) as r:
            return json.loads(r.read())

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        check_images(self.name, images, len(items))
        req = urllib.request.Request(self.url + "/score", data=encode_request(images, items),
                                     headers={"Content-Type": "application/octet-stream"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError):
                pass
            raise RuntimeError(f"remote reward {self.name!r} at {self.url} failed: {detail}") from None
        return check_scores(self.name, torch.tensor(reply["scores"], dtype=torch.float32), len(items))

    def close(self) -> None:
        """Stop the server process this client spawned (no-op for a server started elsewhere)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=30)
        self._process = None


def spawn_reward_server(reward: str, *, kwargs: Optional[dict] = None, port: int = 0, env: Optional[dict] = None,
                        startup_timeout: float = 300.0) -> RemoteReward:
    """Start `python -m flowdppo.rewards.service` in a child process and return a connected client.

    env: extra environment variables for the child (e.g. {"CUDA_VISIBLE_DEVICES": "1"})."""
    root = str(Path(__file__).resolve().parents[2])
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = root + os.pathsep + child_env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "flowdppo.rewards.service", "--reward", reward, "--port", str(port),
           "--kwargs", json.dumps(kwargs or {})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, env=child_env, text=True)
    timer = threading.Timer(startup_timeout, proc.kill)
    timer.start()
    line = ""
    try:   # skip whatever a scorer library prints; "READY <url>" comes once the socket listens
        while not line.startswith("READY "):
            line = proc.stdout.readline()
            if not line:   # EOF: the child died
                break
    finally:
        timer.cancel()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"reward server {reward!r} did not start (exit code {proc.poll()}); see its stderr")
    # keep draining the child's stdout (to our stderr) so a chatty scorer can never fill the pipe and block
    threading.Thread(target=lambda: [sys.stderr.write(l) for l in proc.stdout], daemon=True).start()
    return RemoteReward(line.split()[1], name=None, process=proc)


def main(argv: Optional[list[str]] = None) -> None:
    from .registry import make_reward
    ap = argparse.ArgumentParser(description="Serve one flowdppo reward on a loopback HTTP port.")
    ap.add_argument("--reward", required=True, help="a flowdppo.rewards.registry name (pickscore, jpeg, …)")
    ap.add_argument("--kwargs", default="{}", help="JSON keyword arguments for make_reward")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (printed on stdout)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    server = RewardServer(make_reward(args.reward, **json.loads(args.kwargs)), host=args.host, port=args.port)
    print(f"READY http://{server.host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
