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
{"name", "scores": [B floats]}; an error is {"error": message} with
    400  a malformed request (Content-Length not a non-negative integer, header not JSON, bad fields)
    408  the body did not arrive within the connection timeout
    411  no Content-Length            413  Content-Length above the body limit (refused before reading)
    500  the reward itself failed (its exception type and message; the traceback stays in the server's log)
and the client re-raises it as RuntimeError naming the reward.  GET /info answers {"name", "max_body_bytes"}.

One client cannot block the others: every connection is served by its own thread (ThreadingHTTPServer)
with a socket timeout, so a client that stalls mid-request holds only its own thread until the timeout,
and GET /info always answers.  Scoring itself is serialised by a lock (one model on one device).  The
client splits a batch into requests under the server's body limit.  Loopback addresses only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..prompts import PromptItem
from .base import Reward, check_scores
from .common import check_images

LOOPBACK = ("127.0.0.1", "localhost")
MAX_BODY_BYTES = 256 * 2**20     # 256 MiB: ~340 RGB 512² images per request; the client splits larger batches
CONNECTION_TIMEOUT_S = 60.0      # a connection idle this long mid-request is dropped (408)


class BadRequest(ValueError):
    """A request the server refuses with a 4xx status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def encode_request(images: Tensor, items: Sequence[PromptItem]) -> bytes:
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    header = {"shape": list(x.shape), "dtype": "uint8",
              "items": [{"text": it.text, "atoms": list(it.atoms), "meta": it.meta} for it in items]}
    return json.dumps(header).encode("utf-8") + b"\n" + x.numpy().tobytes()


def decode_request(body: bytes) -> tuple[Tensor, list[PromptItem]]:
    """Body → (images [B, C, H, W] in [0, 1], items).  A malformed body raises BadRequest (400)."""
    head, sep, raw = body.partition(b"\n")
    if not sep:
        raise BadRequest(400, "body must be one JSON header line, a newline, then the image bytes")
    try:
        header = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"header line is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise BadRequest(400, "header line must be a JSON object with shape, dtype and items")
    if header.get("dtype") != "uint8":
        raise BadRequest(400, f"unsupported image dtype {header.get('dtype')!r}; send uint8")
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise BadRequest(400, f"shape must be [B, C, H, W] of positive integers, got {shape!r}")
    arr = np.frombuffer(raw, dtype=np.uint8)
    if arr.size != int(np.prod(shape)):
        raise BadRequest(400, f"image bytes ({arr.size}) do not match shape {shape}")
    items_in = header.get("items")
    if not (isinstance(items_in, list) and len(items_in) == shape[0]):
        raise BadRequest(400, f"items must be a list of {shape[0]} prompt objects (one per image)")
    try:
        items = [PromptItem(text=str(d["text"]), atoms=tuple(d.get("atoms", ())), meta=dict(d.get("meta", {})))
                 for d in items_in]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BadRequest(400, f"each item needs a text (and optional atoms list, meta object): {err!r}") from None
    images = torch.from_numpy(arr.copy()).reshape(shape).float() / 255.0
    return images, items


def content_length(value: Optional[str], limit: int) -> int:
    """The declared body size, checked before a byte of the body is read (BadRequest 411 / 400 / 413)."""
    if value is None:
        raise BadRequest(411, "Content-Length is required (the body is read by its declared size)")
    if not value.strip().isdigit():
        raise BadRequest(400, f"Content-Length must be a non-negative integer, got {value!r}")
    n = int(value)
    if n > limit:
        raise BadRequest(413, f"body of {n} bytes exceeds this server's limit of {limit} bytes (max_body_bytes); "
                              "send fewer images per request")
    return n


class RewardServer:
    """Serve `reward` on http://host:port (port 0 = any free port; see .port after construction).

    max_body_bytes: the largest request body accepted (checked from Content-Length before reading);
    timeout: seconds a connection may stall mid-request before it is dropped."""

    def __init__(self, reward: Reward, *, host: str = "127.0.0.1", port: int = 0,
                 max_body_bytes: int = MAX_BODY_BYTES, timeout: float = CONNECTION_TIMEOUT_S):
        if host not in LOOPBACK:
            raise ValueError(f"host={host!r}: the reward service binds loopback only ({LOOPBACK})")
        self.reward = reward
        self.max_body_bytes, self.timeout = int(max_body_bytes), float(timeout)
        self._score_lock = threading.Lock()    # one model, one device: score one request at a time
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True      # a stalled connection never keeps the process alive
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = server.timeout   # socket timeout of every read / write on this connection

            def _reply(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def do_GET(self):  # noqa: N802 (http.server naming)
                if self.path == "/info":
                    self._reply(200, {"name": server.reward.name, "max_body_bytes": server.max_body_bytes})
                else:
                    self._reply(404, {"error": f"unknown path {self.path}"})

            def do_POST(self):  # noqa: N802
                if self.path != "/score":
                    self._reply(404, {"error": f"unknown path {self.path}"})
                    return
                try:
                    n = content_length(self.headers.get("Content-Length"), server.max_body_bytes)
                    try:
                        body = self.rfile.read(n)
                    except TimeoutError:
                        raise BadRequest(408, f"the {n}-byte body did not arrive within {server.timeout:g} s") from None
                    if len(body) != n:
                        raise BadRequest(400, f"body ended after {len(body)} of {n} declared bytes")
                    images, items = decode_request(body)
                except BadRequest as err:
                    self._reply(err.status, {"error": str(err)})
                    return
                try:
                    with server._score_lock:
                        scores = check_scores(server.reward.name, server.reward(images, items), len(items))
                except Exception as err:  # noqa: BLE001 — the reward failed: tell the client, keep the traceback here
                    traceback.print_exc(file=sys.stderr)
                    self._reply(500, {"error": f"reward {server.reward.name!r} failed: {type(err).__name__}: {err}"})
                    return
                self._reply(200, {"name": server.reward.name, "scores": scores.tolist()})

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
        info = self._get("/info")
        self.name = name or info["name"]
        self.max_body_bytes = int(info.get("max_body_bytes", MAX_BODY_BYTES))

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=self.timeout) as r:
            return json.loads(r.read())

    def __call__(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
        check_images(self.name, images, len(items))
        parts = [self._score(images[lo:hi], list(items[lo:hi])) for lo, hi in self._chunks(images, items)]
        return check_scores(self.name, torch.cat(parts), len(items))

    def _chunks(self, images: Tensor, items: Sequence[PromptItem]) -> list[tuple[int, int]]:
        """[lo, hi) row ranges whose request bodies fit the server's max_body_bytes (greedy, in order)."""
        per_image = images[0].numel()           # uint8 bytes of one image on the wire
        sizes = [per_image + len(json.dumps({"text": it.text, "atoms": list(it.atoms), "meta": it.meta})) + 2
                 for it in items]
        budget = self.max_body_bytes - 256      # the header's shape / dtype fields
        out, lo, used = [], 0, 0
        for i, n in enumerate(sizes):
            if i > lo and used + n > budget:
                out.append((lo, i))
                lo, used = i, 0
            used += n
        return out + [(lo, len(sizes))]

    def _score(self, images: Tensor, items: Sequence[PromptItem]) -> Tensor:
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


if __name__ == "__main__":      # `python -m flowdppo.rewards.service …`: the server (flowdppo.rewards.serve)
    from .serve import main
    main()
