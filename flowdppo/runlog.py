"""The run directory is the contract between training and analysis.

    <run_dir>/config.json      the resolved Config (a resume must match it)
    <run_dir>/run.json         header: latent dim D, git commit, versions, world size, start time
    <run_dir>/metrics.jsonl    one record per optimizer step (vocabulary: flowdppo.metrics)
    <run_dir>/eval.jsonl       one record per (evaluation, split)
    <run_dir>/samples/*.png    fixed-seed image grids over training
    <run_dir>/checkpoint.pt    latest checkpoint (atomic replace), with the log line counts it covers

Writes are atomic (temp file + os.replace) or append-only with flush+fsync; on resume the logs are cut back
to the line counts stored in the checkpoint, so a killed run leaves no missing or duplicated rows.
"""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class JsonlLog:
    """Append-only JSONL with durable lines and truncation to a known line count."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = count_complete_lines(path)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(_jsonable(record), sort_keys=False) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.lines += 1

    def truncate_to(self, n_lines: int) -> None:
        """Keep the first n complete lines (drops rows written after the checkpoint and torn lines)."""
        if not self.path.exists():
            if n_lines:
                raise RuntimeError(f"{self.path} is missing but the checkpoint says it had {n_lines} lines")
            self.lines = 0
            return
        kept = self.path.read_text().split("\n")
        complete = kept[:-1]  # text after the last newline is a torn write
        if len(complete) < n_lines:
            raise RuntimeError(f"{self.path} has {len(complete)} complete lines, the checkpoint expects {n_lines}")
        atomic_write_bytes(self.path, "".join(x + "\n" for x in complete[:n_lines]).encode())
        self.lines = n_lines


def count_complete_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line is skipped."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().split("\n"):
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def versions(packages: Iterable[str] = ("torch", "diffusers", "transformers", "peft", "numpy")) -> dict[str, str]:
    from importlib import metadata
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "missing"
    return out
