"""The run directory is the contract between training and analysis.

    <run_dir>/config.json      the resolved Config (a resume must match it)
    <run_dir>/run.json         header: latent dim D, git commit, versions, world size, start time
    <run_dir>/metrics.jsonl    one record per optimizer step (vocabulary: flowdppo.metrics)
    <run_dir>/eval.jsonl       one record per (evaluation, split)
    <run_dir>/samples/*.png    fixed-seed image grids over training
    <run_dir>/checkpoint.pt    latest checkpoint (atomic replace), with the log line counts it covers
    <run_dir>/checkpoint.prev.pt   the checkpoint before it (kept until the new one has been read back)
    <run_dir>/run.lock         pid and host of the process writing the run (flock; see flowdppo.rundir)

Writes are atomic (temp file + os.replace) or append-only with flush+fsync; on resume the logs are cut back
to the line counts stored in the checkpoint, so a killed run leaves no missing or duplicated rows.  Files get
the mode an ordinary `open` would give them (0666 & ~umask), and a replaced file keeps its mode.

`parse_jsonl` is the one reader of the JSONL logs (trainer, CLI and analysis): a kill can only tear the
LAST line, so an unreadable last line is dropped and reported, and an unreadable line anywhere else is a
damaged log and raises CorruptLogError naming the file and the line.
"""
from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import CorruptLogError, RunDirError


def new_file_mode() -> int:
    """The mode `open(path, "w")` would create a file with: 0666 minus the process umask."""
    mask = os.umask(0)   # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def write_temp(path: Path, data: bytes) -> Path:
    """Write `data` durably (fsync) to a fresh temp file beside `path`, named .<name>.XXXXXXXX.tmp, with the
    mode `path` has (or a new file would get).  The caller moves it into place or removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else new_file_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)      # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
        """Keep the first n complete lines (drops rows written after the checkpoint and torn lines), in place:
        the file keeps its inode and mode.  The kept lines must all be records (see `covered_prefix`)."""
        end = covered_prefix(self.path, n_lines)
        if self.path.exists() and end != self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        self.lines = n_lines


def covered_prefix(path: Path, n_lines: int) -> int:
    """Byte length of the first n complete lines of a log, after checking that each is a record: what a
    checkpoint covering n lines needs.  RunDirError if there are fewer, CorruptLogError if one is damaged."""
    fix = "Fix: restore the file from a copy, or resume with --restart to train the run again from iteration 0"
    if not path.exists():
        if n_lines:
            raise RunDirError(f"{path} is missing but the checkpoint covers {n_lines} of its lines. {fix}")
        return 0
    data = path.read_bytes()
    end = 0
    for _ in range(n_lines):
        j = data.find(b"\n", end)
        if j < 0:
            have = data.count(b"\n")
            raise RunDirError(f"{path} has {have} complete lines but the checkpoint covers {n_lines}: the log was "
                              f"cut or replaced after that checkpoint was written. {fix}")
        end = j + 1
    for i, line in enumerate(data[:end].decode("utf-8", "replace").split("\n")[:-1]):
        _parse_line(path, i + 1, line)
    return end


def count_complete_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


@dataclass(frozen=True)
class JsonlContent:
    """What `parse_jsonl` read: the records, and the torn last line it dropped ("" if none)."""
    path: Path
    records: list[dict[str, Any]]
    torn_tail: str = ""

    @property
    def torn(self) -> int:
        return int(bool(self.torn_tail))


def _parse_line(path: Path, lineno: int, line: str) -> dict[str, Any] | None:
    """One complete (newline-terminated) line → its record (None if blank); anything else is damage."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorruptLogError(f"{path}: line {lineno} is not valid JSON ({err.msg}, column {err.colno}) and is not "
                              f"the last line: the log is damaged (a kill can only tear the last line). Fix: "
                              f"restore the file from a copy, or cut it before line {lineno}") from None
    if not isinstance(rec, dict):
        raise CorruptLogError(f"{path}: line {lineno} is a JSON {type(rec).__name__}, not a record (object): the "
                              f"log is damaged. Fix: restore the file from a copy, or cut it before line {lineno}")
    return rec


def parse_jsonl(path: Path) -> JsonlContent:
    """Every record of a JSONL log.  The text after the last newline is the only place a torn write can be:
    kept if it is a whole record (a write cut just before its newline), else dropped and returned as
    `torn_tail`.  An unreadable complete line raises CorruptLogError (file and line named).  A missing file
    has no records."""
    path = Path(path)
    if not path.exists():
        return JsonlContent(path, [])
    text = path.read_bytes().decode("utf-8", "replace")
    *complete, tail = text.split("\n")
    records = [r for i, line in enumerate(complete) if (r := _parse_line(path, i + 1, line)) is not None]
    if tail.strip():
        try:
            rec = json.loads(tail)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        else:
            return JsonlContent(path, records, torn_tail=tail)
    return JsonlContent(path, records)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of `parse_jsonl`; a dropped torn last line is reported as a warning."""
    content = parse_jsonl(path)
    if content.torn_tail:
        warnings.warn(f"{path}: dropped a torn last line ({len(content.torn_tail)} characters, no newline): the "
                      "writer was killed mid-write", stacklevel=2)
    return content.records


def uncommitted_changes(paths: Iterable[str] = ("flowdppo", "analysis")) -> list[str]:
    """Files under `paths` (repository-relative) that differ from HEAD: an artifact made with a non-empty list
    does not trace to a commit, and says so."""
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout
        return sorted(line[3:] for line in out.splitlines() if line.strip())
    except Exception:
        return []


def git_commit() -> str:
    """The checkout's HEAD commit ("unknown" outside a git checkout)."""
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
