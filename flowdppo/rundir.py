"""The run directory's life cycle: where a start begins, who may write the directory, how checkpoints are kept.

    plan_start(run_dir, resume=, restart=)  READ-ONLY: what a start will do, or a RunDirError saying why not
    plan_on_rank0(run_dir, …, info)         plan_start decided once, on rank 0, and shared with every rank
    check_resume_config(run_dir, cfg)       READ-ONLY: cfg equals the run's config.json (up to RESUME_MAY_CHANGE)
    open_run(plan, info)                    the first write: take run.lock, remove stale temp files, move the
                                            logs a start replaces to replaced-<time>/; returns the RunLock
    save_checkpoint(run_dir, state)         checkpoint.pt via a temp file that is read back first; the one it
                                            replaces becomes checkpoint.prev.pt
    read_checkpoint(path)                   a checkpoint's contents, or a RunDirError that says what is wrong

Where a start begins (the README's "The run directory" states the same):
  new run     an absent or empty directory, or one holding an attempt that never got past iteration 0 and has
              no checkpoint (it failed or was killed there; what it logged goes to replaced-<time>/);
  --resume    the directory given IS the run (config.json's recorded run_dir is ignored, so a moved or
              copied run resumes where it now is): from checkpoint.pt, its logs cut back to the rows the
              checkpoint covers (those rows are computed again, identically); from checkpoint.prev.pt when a
              kill between the two renames of a checkpoint rotation left no checkpoint.pt; from iteration 0
              when it never got past iteration 0.  A run that logged later iterations but has no checkpoint
              is REFUSED, its logs untouched: --restart moves its logs and checkpoints to replaced-<time>/
              and trains it again from iteration 0.
The lock is an flock on run.lock (pid, host and start time inside): the kernel releases it when its process
dies, however it dies, so a crashed run never blocks its resume, and a second writer is refused.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import dist
from .config import RESUME_MAY_CHANGE, Config, config_diff, make_config
from .errors import ConfigError, CorruptLogError, RunDirError
from .runlog import count_complete_lines, covered_prefix, parse_jsonl, write_temp

CHECKPOINT, PREVIOUS, LOCK = "checkpoint.pt", "checkpoint.prev.pt", "run.lock"
LOGS = ("metrics.jsonl", "eval.jsonl")
# What a start from iteration 0 replaces (moved aside when it holds anything); config.json and run.json are
# copied along, so replaced-<time>/ is itself a readable run directory.
REPLACEABLE = ("metrics.jsonl", "eval.jsonl", "samples", "tb", CHECKPOINT, PREVIOUS)
CHECKPOINT_KEYS = ("iteration", "opt_step", "policy", "optimizer", "metrics_lines", "eval_lines")


@dataclass
class StartPlan:
    """What a start does: resume from `state` (a checkpoint's contents) or begin at iteration 0 (state None)."""
    run_dir: Path
    state: Optional[dict] = None
    move_aside: tuple[str, ...] = ()     # entries of run_dir to move to replaced-<time>/ first
    notes: list[str] = field(default_factory=list)
    source: Optional[Path] = None        # the checkpoint file `state` was read from

    @property
    def fresh(self) -> bool:
        """Begins at iteration 0 (config.json and run.json are written anew)."""
        return self.state is None


# ----------------------------------------------------------------------------------------------------
# Read-only planning
# ----------------------------------------------------------------------------------------------------
def _past_iteration_0(metrics: Path) -> bool:
    """metrics.jsonl holds a row of iteration 1 or later (a damaged log counts as yes: never replace it)."""
    try:
        return any(int(r.get("iteration", 0)) > 0 for r in parse_jsonl(metrics).records)
    except (CorruptLogError, TypeError, ValueError):
        return True


def _holds_data(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists() and path.stat().st_size > 0


def check_resume_config(run_dir: Path, cfg: Config) -> None:
    """cfg must be the run's own config.json up to RESUME_MAY_CHANGE (ConfigError listing the differences)."""
    path = run_dir / "config.json"
    if not path.exists():
        raise RunDirError(f"cannot resume {run_dir}: no config.json there. Fix: give the directory of a run (the "
                          "one holding config.json and metrics.jsonl)")
    try:
        saved = make_config(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise RunDirError(f"cannot resume {run_dir}: config.json is not valid JSON ({err}). Fix: restore it from "
                          "a copy (checkpoint.pt holds the config too, under 'config')") from None
    diff = config_diff(saved, cfg, ignore=RESUME_MAY_CHANGE)
    if diff:
        lines = ", ".join(f"{k}: run has {a!r}, you gave {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"resume config differs from the run's ({lines}). Fix: resume with the run's config "
                          f"(drop those overrides) or start a new run_dir")


def check_writable(run_dir: Path) -> None:
    """The directory (or the nearest existing parent that would hold it) accepts new files."""
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"config.run_dir: {probe} is a file, not a directory. Fix: choose another run_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"config.run_dir: {run_dir} is not writable ({probe} does not accept new files). Fix: "
                          "choose a writable run_dir, or fix the directory's permissions")


def plan_start(run_dir: Path, *, resume: bool, restart: bool = False) -> StartPlan:
    """Decide where a start begins (module docstring), reading only.  Raises RunDirError when it cannot start."""
    run_dir = Path(run_dir)
    if restart and not resume:
        raise RunDirError("restart applies to --resume only: it moves an existing run's logs aside. Fix: add "
                          "--resume RUN_DIR, or start a new run without --restart")
    check_writable(run_dir)
    holder = lock_holder(run_dir)
    if holder is not None:
        raise RunDirError(_held_message(run_dir, holder))
    has_config = (run_dir / "config.json").exists()
    rows = {name: count_complete_lines(run_dir / name) for name in LOGS}
    checkpoints = [n for n in (CHECKPOINT, PREVIOUS) if (run_dir / n).exists()]
    started = bool(checkpoints) or _past_iteration_0(run_dir / "metrics.jsonl")
    held = tuple(n for n in REPLACEABLE if _holds_data(run_dir / n))
    what = (f"{rows['metrics.jsonl']} metric rows, {rows['eval.jsonl']} eval rows, "
            + (" and ".join(checkpoints) if checkpoints else "no checkpoint"))

    if not resume:
        if not has_config:
            if started or held:
                raise RunDirError(f"{run_dir} holds run files ({', '.join(held)}) but no config.json: not a run "
                                  f"this trainer can continue or replace. Fix: choose another run_dir")
            return StartPlan(run_dir)
        if started:
            raise RunDirError(f"{run_dir} already holds a run ({what}). Fix: `flowdppo train --resume {run_dir}` to "
                              f"continue it, or choose another run_dir")
        notes = [f"{run_dir} holds an attempt that never got past iteration 0 (it failed or was killed there): "
                 f"starting over in it" + (f"; its {', '.join(held)} moved to replaced-<time>/" if held else "")]
        return StartPlan(run_dir, move_aside=held, notes=notes)

    if not has_config:
        raise RunDirError(f"cannot resume {run_dir}: no config.json there. Fix: give the directory of a run (the "
                          "one holding config.json and metrics.jsonl)")
    if restart:
        return StartPlan(run_dir, move_aside=held, notes=[
            f"--restart: {what} of {run_dir} moved to replaced-<time>/; training it again from iteration 0"])
    ckpt, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    notes = []
    if ckpt.exists():
        source = ckpt
    elif prev.exists():
        source = prev
        notes.append(f"{run_dir} has no {CHECKPOINT} (a kill between the two renames of a checkpoint rotation, or "
                     f"it was removed): resuming from {PREVIOUS}")
    elif started:
        raise RunDirError(f"cannot resume {run_dir}: it holds {what} (killed before its first checkpoint, or the "
                          f"checkpoint was removed), so it could only be trained again from iteration 0. Fix: "
                          f"`flowdppo train --resume {run_dir} --restart` moves those logs to "
                          f"{run_dir}/replaced-<time>/ and trains again from iteration 0; or start a new run_dir")
    else:
        if held:
            notes.append(f"{run_dir} never got past iteration 0 and has no checkpoint: starting from iteration 0; "
                         f"its {', '.join(held)} moved to replaced-<time>/")
        return StartPlan(run_dir, move_aside=held, notes=notes)
    state = read_checkpoint(source, run_dir=run_dir)
    for name, key in zip(LOGS, ("metrics_lines", "eval_lines")):
        covered_prefix(run_dir / name, int(state[key]))       # the rows the checkpoint covers are all there
    dropped = [f"{rows[name] - state[key]} {name}" for name, key in zip(LOGS, ("metrics_lines", "eval_lines"))
               if rows[name] > state[key]]
    if dropped:
        notes.append(f"resuming from {source.name} (iteration {state['iteration']}): the rows logged after it "
                     f"({', '.join(dropped)} lines) are dropped and computed again")
    return StartPlan(run_dir, state=state, notes=notes, source=source)


def plan_on_rank0(run_dir: Path, *, resume: bool, restart: bool, info: dist.DistInfo) -> StartPlan:
    """plan_start on rank 0 only, its decision broadcast: every rank starts the same way (ranks planning on
    their own could see rank 0's lock, or its first writes, and disagree).  Other ranks read the chosen
    checkpoint themselves; every rank raises if rank 0 could not plan."""
    plan, error = None, ""
    if info.is_main:
        try:
            plan = plan_start(run_dir, resume=resume, restart=restart)
        except RunDirError as err:
            error = str(err)
            if not info.enabled:
                raise
        except OSError as err:    # unreadable files: one line on every rank, not a hang in the broadcast
            error = f"cannot read {run_dir} ({err}). Fix: check the directory's permissions"
            if not info.enabled:
                raise RunDirError(error) from None
    shared = dist.broadcast_object((error, None if plan is None else (plan.source, plan.move_aside, plan.notes)),
                                   info)
    if shared[0]:
        raise RunDirError(shared[0])
    if plan is None:
        source, move, notes = shared[1]
        plan = StartPlan(Path(run_dir), read_checkpoint(source, run_dir=Path(run_dir)) if source else None, move,
                         notes, source)
    return plan


def read_checkpoint(path: Path, *, run_dir: Optional[Path] = None) -> dict[str, Any]:
    """A checkpoint's contents (tensors on the CPU), or a RunDirError naming the file, its size and the fix."""
    path = Path(path)
    run_dir = run_dir or path.parent
    size = path.stat().st_size
    prev = run_dir / PREVIOUS
    alt = (f"move {prev} to {path} to resume from the checkpoint before it, or " if path.name == CHECKPOINT and
           prev.exists() else "")
    fix = (f"Fix: {alt}restore it from a copy, or `flowdppo train --resume {run_dir} --restart` to train the run "
           "again from iteration 0")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:   # noqa: BLE001 — torch.load fails with many types (zip, pickle, EOF); all mean the same
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunDirError(f"{path} is not a readable checkpoint ({size} bytes; {type(err).__name__}: {first}): it was "
                          f"cut short or damaged. {fix}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunDirError(f"{path} is not a flowdppo checkpoint (no {', '.join(missing)}). {fix}")
    return state


# ----------------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------------
def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else {}
    except (OSError, json.JSONDecodeError):
        return {"pid": "?", "host": "?", "since": "?"}


def _held_message(run_dir: Path, owner: dict[str, Any]) -> str:
    who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (since {owner.get('since', '?')})"
    return (f"{run_dir} is being written by {who}: two writers would interleave its logs. Fix: wait for that "
            f"process to finish (or stop it; its lock is released when it ends), or choose another run_dir")


def lock_holder(run_dir: Path) -> Optional[dict[str, Any]]:
    """The owner recorded in run.lock if some process holds the lock now, else None (reads only)."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:           # absent (nobody holds it), or unreadable (acquire() will say so)
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """Exclusive flock on <run_dir>/run.lock, which records the owner's pid, host and start time."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: Optional[int] = None
        self._made_dirs: list[Path] = []     # directories this start created, deepest first
        self._made_file = False

    def acquire(self) -> Optional[str]:
        """Take the lock (RunDirError if another process holds it); returns a note when it takes over a lock
        file left by a process that ended without releasing it."""
        try:
            missing = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._made_dirs = missing
            self._made_file = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)   # the umask applies
        except OSError as err:
            raise RunDirError(f"config.run_dir: cannot write {self.run_dir} ({err.strerror}). Fix: choose a writable "
                              "run_dir, or fix the directory's permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise RunDirError(_held_message(self.run_dir, owner)) from None
        except OSError as err:
            os.close(fd)
            raise RunDirError(f"cannot lock {self.path} ({err.strerror}). Fix: put run_dir on a filesystem with file "
                              "locks (flock)") from None
        previous = _read_owner(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_owner()) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        if previous:
            return (f"took over {self.path} from pid {previous.get('pid')} on host {previous.get('host')} (since "
                    f"{previous.get('since')}): that process ended without releasing it (killed?)")
        return None

    def release(self) -> None:
        """Release the lock.  A start that wrote nothing but the lock removes it (and the directory it made),
        so a refused or failed start leaves the disk as it found it."""
        if self._fd is None:
            return
        others = [p for p in self.run_dir.iterdir() if p.name != LOCK]
        if self._made_file and not others:
            self.path.unlink()
            for d in self._made_dirs:
                if any(d.iterdir()):
                    break
                d.rmdir()
        else:
            os.ftruncate(self._fd, 0)    # an empty lock file = nobody's
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


# ----------------------------------------------------------------------------------------------------
# The first writes of a start
# ----------------------------------------------------------------------------------------------------
def remove_stale_temps(run_dir: Path) -> list[str]:
    """Delete the .<name>.XXXXXXXX.tmp files of atomic writes a kill interrupted (call with the lock held)."""
    removed = []
    for p in sorted(Path(run_dir).glob(".*.tmp")):
        if p.is_file():
            removed.append(f"{p.name} ({p.stat().st_size} bytes)")
            p.unlink()
    return removed


def move_aside(run_dir: Path, names: tuple[str, ...]) -> Path:
    """Move `names` of run_dir into run_dir/replaced-<time>/ (config.json and run.json copied along)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dst = run_dir / f"replaced-{stamp}"
    n = 1
    while dst.exists():
        n += 1
        dst = run_dir / f"replaced-{stamp}-{n}"
    dst.mkdir()
    for name in ("config.json", "run.json"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dst / name)
    for name in names:
        os.replace(run_dir / name, dst / name)
    return dst


def open_run(plan: StartPlan, info: dist.DistInfo) -> RunLock:
    """Rank 0 takes the lock, removes stale temp files and moves replaced files aside; every rank raises the
    same RunDirError if that fails.  Prints the plan's notes (rank 0).  Returns the lock to release."""
    lock, error, notes = RunLock(plan.run_dir), "", list(plan.notes)
    if info.is_main:
        try:
            took_over = lock.acquire()
            notes += [took_over] if took_over else []
            stale = remove_stale_temps(plan.run_dir)
            if stale:
                notes.append(f"removed {len(stale)} temp file(s) of an interrupted write: {', '.join(stale)}")
            if plan.move_aside:
                dst = move_aside(plan.run_dir, plan.move_aside)
                notes = [n.replace("replaced-<time>", dst.name) for n in notes]
        except RunDirError as err:
            error = str(err)
        except OSError as err:    # moving files aside / removing temp files failed: say so, release the lock
            error = (f"cannot prepare {plan.run_dir} ({err}). Fix: check the directory's permissions and free "
                     "space, then start again")
    error = dist.broadcast_object(error, info)
    if error:
        lock.release()
        raise RunDirError(error)
    if info.is_main:
        for note in notes:
            print(f"flowdppo: note: {note}", file=sys.stderr, flush=True)
    return lock


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write run_dir/checkpoint.pt so that a readable checkpoint is on disk at every moment: the new one goes
    to a temp file (fsync), is read back (torch.load, mmap) and only then replaces checkpoint.pt; the one
    it replaces is kept as checkpoint.prev.pt (hard link, so checkpoint.pt never disappears; a rename
    where the filesystem has no hard links)."""
    run_dir = Path(run_dir)
    ckpt, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    buf = io.BytesIO()
    torch.save(state, buf)
    tmp = write_temp(ckpt, buf.getvalue())
    try:
        back = torch.load(tmp, map_location="cpu", weights_only=False, mmap=True)
        if (back.get("iteration"), back.get("opt_step")) != (state["iteration"], state["opt_step"]):
            raise ValueError("iteration / opt_step differ from what was written")
        del back
    except Exception as err:   # noqa: BLE001 — whatever failed, the new file is not a checkpoint
        tmp.unlink()
        raise RunDirError(f"the checkpoint just written for iteration {state['iteration']} does not read back "
                          f"({type(err).__name__}: {err}); {ckpt} is left as it was. Fix: check the disk (space, "
                          f"errors), then resume") from None
    if ckpt.exists():
        link = run_dir / f".{PREVIOUS}.link.tmp"
        try:
            if link.exists():
                link.unlink()
            os.link(ckpt, link)
            os.replace(link, prev)
        except OSError:            # no hard links here: rename (a kill right now leaves prev, which resume uses)
            os.replace(ckpt, prev)
    os.replace(tmp, ckpt)
    dir_fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)           # the renames themselves are durable
    finally:
        os.close(dir_fd)


__all__ = ["StartPlan", "plan_start", "plan_on_rank0", "check_resume_config", "check_writable", "open_run", "RunLock",
           "lock_holder", "save_checkpoint", "read_checkpoint", "remove_stale_temps", "move_aside"]
