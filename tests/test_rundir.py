"""The run directory never loses or silently rewrites data (flowdppo.rundir), divergence stops where it happens
(flowdppo.nonfinite), and every error a person can fix is one CLI line with nothing written.

Runs use the toy policy (flowdppo/testing/toy.py); the CLI is driven in-process (flowdppo.cli.main), with the toy
components injected where a test needs a run to actually train."""
from __future__ import annotations

import json
import functools
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowdppo import cli, nonfinite, rundir, trainer
from flowdppo.config import make_config
from flowdppo.dist import DistInfo
from flowdppo.errors import ConfigError, DivergenceError, RunDirError
from flowdppo.metrics import undocumented_step_keys
from flowdppo.runlog import new_file_mode, read_jsonl
from flowdppo.trainer import Components, train

from flowdppo.testing.toy import BrightnessReward, toy_components  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["prompts_per_iter=4", "group_size=4", "num_minibatches=2", "eval_every=1", "eval_prompts=2",
         "eval_samples_per_prompt=2", "rewards=brightness", "progress=false", "threads=1", "num_steps=6",
         "sde_steps_per_traj=2", "beta=0", "lr=3e-3", "checkpoint_every=1"]


def _cfg(run_dir, *extra):
    return make_config({}, [f"run_dir={run_dir}", *SMALL, *extra])


def _strip_times(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("time/")}


def _rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [_strip_times(r) for r in read_jsonl(Path(run_dir) / name)]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under root: (kind, size, mode, content hash) — equal snapshots = nothing written."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = ("d" if p.is_dir() else "f", st.st_size, stat.S_IMODE(st.st_mode), digest)
    return out


@pytest.fixture
def toy_cli(monkeypatch):
    """flowdppo.cli.main with the toy components injected into the trainer it calls."""
    real = trainer.train
    monkeypatch.setattr(trainer, "train", functools.partial(real, components=toy_components()))
    return cli.main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-iteration toy run (checkpoint after each iteration): the source every test copies."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(run, "iterations=2"), components=toy_components())
    return run


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------------
# 1. The run directory is the run
# ----------------------------------------------------------------------------------------------------
def test_resume_a_copied_run_from_another_directory_writes_only_into_the_copy(tmp_path, monkeypatch, toy_cli):
    """A run made with a relative run_dir, copied elsewhere and resumed by a relative path from a third
    working directory: only the copy grows, and it grows exactly as an uninterrupted 3-iteration run."""
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert toy_cli(["train", "run_dir=runs/rel", *SMALL, "iterations=2"]) == 0
    original = snapshot(tmp_path / "a" / "runs" / "rel")
    _copy(tmp_path / "a" / "runs" / "rel", tmp_path / "b" / "copy")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert toy_cli(["train", "--resume", "../b/copy", "iterations=3"]) == 0
    assert snapshot(tmp_path / "a" / "runs" / "rel") == original            # the original is untouched
    train(_cfg(tmp_path / "ref", "iterations=3"), components=toy_components())
    assert _rows(tmp_path / "b" / "copy") == _rows(tmp_path / "ref") and len(_rows(tmp_path / "ref")) == 6
    assert _rows(tmp_path / "b" / "copy", "eval.jsonl") == _rows(tmp_path / "ref", "eval.jsonl")


def test_run_dir_override_on_resume_must_name_the_same_directory(tmp_path, finished_run, toy_cli, capsys,
                                                                 monkeypatch):
    run = _copy(finished_run, tmp_path / "run")
    before = snapshot(run)
    assert toy_cli(["train", "--resume", str(run), f"run_dir={tmp_path / 'other'}"]) == 2
    assert "config.run_dir" in capsys.readouterr().err
    assert snapshot(run) == before and not (tmp_path / "other").exists()
    monkeypatch.chdir(tmp_path)                   # the same directory, spelled differently: fine
    assert toy_cli(["train", "--resume", "run", f"run_dir={run}", "iterations=3"]) == 0
    assert len(_rows(run)) == 6


def test_missing_checkpoint_is_refused_with_counts_and_restart_keeps_the_old_logs(tmp_path, finished_run, capsys):
    """Resuming a run whose checkpoints are gone never resets it silently: refused (logs unchanged) with what is
    there and the choices; restart=True moves the logs to replaced-<time>/ and trains from iteration 0."""
    run = _copy(finished_run, tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.prev.pt").unlink()
    before = snapshot(run)
    with pytest.raises(RunDirError) as err:
        train(_cfg(run, "iterations=2"), resume=True, components=toy_components())
    msg = str(err.value)
    assert "4 metric rows, 6 eval rows, no checkpoint" in msg and "--restart" in msg and "new run_dir" in msg
    assert snapshot(run) == before
    old_metrics, old_evals = (run / "metrics.jsonl").read_bytes(), (run / "eval.jsonl").read_bytes()
    train(_cfg(run, "iterations=2"), resume=True, restart=True, components=toy_components())
    [backup] = run.glob("replaced-*")
    assert (backup / "metrics.jsonl").read_bytes() == old_metrics and (backup / "eval.jsonl").read_bytes() == old_evals
    assert (backup / "config.json").exists() and not (backup / "checkpoint.pt").exists()
    assert _rows(run) == _rows(finished_run)                                    # trained again, identically
    assert f"moved to {backup.name}/" in capsys.readouterr().err


def test_resume_uses_the_previous_checkpoint_when_a_rotation_was_interrupted(tmp_path, finished_run, capsys):
    """checkpoint.prev.pt is kept beside checkpoint.pt; without checkpoint.pt (a kill between the rotation's two
    renames) the resume starts from it, drops the rows after it, and ends exactly as the uninterrupted run."""
    run = _copy(finished_run, tmp_path / "run")
    assert torch.load(run / "checkpoint.prev.pt", weights_only=False)["iteration"] == 1
    assert torch.load(run / "checkpoint.pt", weights_only=False)["iteration"] == 2
    (run / "checkpoint.pt").unlink()
    train(_cfg(run, "iterations=2"), resume=True, components=toy_components())
    err = capsys.readouterr().err
    assert "resuming from checkpoint.prev.pt" in err and "dropped and computed again" in err
    assert _rows(run) == _rows(finished_run) and _rows(run, "eval.jsonl") == _rows(finished_run, "eval.jsonl")
    a = torch.load(run / "checkpoint.pt", weights_only=False)["policy"]
    b = torch.load(finished_run / "checkpoint.pt", weights_only=False)["policy"]
    assert all(torch.equal(a[k], b[k]) for k in a)


_HOLDER = """
import sys, time
from pathlib import Path
from flowdppo.rundir import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire()
print("READY", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_killed_holder_is_taken_over(tmp_path, capsys):
    """While another process holds run.lock, a start is refused naming its pid and host, and writes nothing;
    after that process is SIGKILLed its lock is taken over (with a note) and training runs."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "READY"
        before = snapshot(tmp_path)
        assert rundir.lock_holder(run)["pid"] == holder.pid
        with pytest.raises(RunDirError, match=rf"being written by pid {holder.pid} on host"):
            train(_cfg(run, "iterations=1"), components=toy_components())
        assert snapshot(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert rundir.lock_holder(run) is None
    train(_cfg(run, "iterations=1"), components=toy_components())
    assert f"took over {run / 'run.lock'} from pid {holder.pid}" in capsys.readouterr().err
    assert len(_rows(run)) == 2 and (run / "run.lock").read_text() == ""     # released at the end


_KILLED = """
import sys
from flowdppo.testing.toy import toy_components
from flowdppo.config import make_config
from flowdppo.trainer import train
train(make_config({{}}, sys.argv[1:]), components=toy_components())
"""


def test_a_killed_run_resumes_over_its_lock_and_temp_files_with_stable_modes(tmp_path, capsys):
    """SIGKILL after optimizer step 3 (iteration 1, after the first checkpoint): the dead process's lock and a
    temp file of an interrupted checkpoint write are cleaned on resume, every file has the umask's mode
    (0666 & ~umask, not mkstemp's 0600), metrics.jsonl keeps its inode and mode through the cut-back, and the
    rows equal an uninterrupted run's."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    args = [f"run_dir={run}", *SMALL, "iterations=3"]
    env = {**os.environ, "FLOWDPPO_KILL_AFTER_STEP": "3"}
    killed = subprocess.run([sys.executable, "-c", _KILLED.format(tests=str(Path(__file__).parent)), *args], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "run.lock").read_text().strip() and len(read_jsonl(run / "metrics.jsonl")) == 3
    (run / ".checkpoint.pt.k1ll3d00.tmp").write_bytes(b"\0" * 4096)   # what a kill during torch.save leaves
    inode, mode = (run / "metrics.jsonl").stat().st_ino, stat.S_IMODE((run / "metrics.jsonl").stat().st_mode)
    train(_cfg(run, "iterations=3"), resume=True, components=toy_components())
    err = capsys.readouterr().err
    assert "took over" in err and "removed 1 temp file(s)" in err and ".checkpoint.pt.k1ll3d00.tmp" in err
    assert not list(run.glob(".*.tmp"))
    assert (run / "metrics.jsonl").stat().st_ino == inode
    want = new_file_mode()
    assert mode == want and all(stat.S_IMODE(p.stat().st_mode) == want for p in run.rglob("*") if p.is_file())
    train(_cfg(ref, "iterations=3"), components=toy_components())
    assert _rows(run) == _rows(ref) and _rows(run, "eval.jsonl") == _rows(ref, "eval.jsonl")


def test_a_failure_in_iteration_0_does_not_block_a_retry(tmp_path, capsys):
    """A reward that fails in iteration 0 leaves config.json but no optimizer step: the same command again
    starts over in that directory (the iteration-0 evaluation it logged is moved aside, not deleted)."""
    class Broken(BrightnessReward):
        def __call__(self, images, items):
            raise RuntimeError("reward server unreachable")
    good = toy_components()
    bad = Components(policy=good.policy, splits=good.splits, rewards={"brightness": Broken()})
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="unreachable"):
        train(_cfg(run, "iterations=1", "eval_every=0"), components=bad)
    assert (run / "config.json").exists() and not (run / "metrics.jsonl").exists()
    train(_cfg(run, "iterations=1", "eval_every=0"), components=toy_components())
    assert "never got past iteration 0" in capsys.readouterr().err and len(_rows(run)) == 2
    # with an evaluation logged before the failure: the retry keeps it in replaced-<time>/
    run2 = tmp_path / "run2"
    comps = toy_components()
    with pytest.raises(RuntimeError, match="unreachable"):
        train(_cfg(run2, "iterations=1"), components=Components(
            policy=comps.policy, splits=comps.splits, rewards={"brightness": Broken()},
            evaluate_images=lambda images, items, g: {"brightness": 0.0, "diversity": 0.0}))
    evals = (run2 / "eval.jsonl").read_bytes()
    train(_cfg(run2, "iterations=1"), components=toy_components())
    [backup] = run2.glob("replaced-*")
    assert (backup / "eval.jsonl").read_bytes() == evals and len(_rows(run2)) == 2


def test_a_divergence_after_the_first_step_of_iteration_0_does_not_block_a_retry(tmp_path, monkeypatch, capsys):
    """NaN at optimizer step 2 (iteration 0, the reported lr = 1e6 pattern) after step 1 was logged: the same
    command again starts over, keeping the logged row in replaced-<time>/; a run past iteration 0 without a
    checkpoint is refused instead (test_missing_checkpoint_…)."""
    _poisoned_loss(monkeypatch, {3})
    run = tmp_path / "run"
    with pytest.raises(DivergenceError, match="at iteration 0, optimizer step 2"):
        train(_cfg(run, "iterations=2", "eval_every=0"), components=toy_components())
    row = (run / "metrics.jsonl").read_bytes()
    assert row.count(b"\n") == 1
    monkeypatch.undo()
    train(_cfg(run, "iterations=2", "eval_every=0"), components=toy_components())
    [backup] = run.glob("replaced-*")
    assert (backup / "metrics.jsonl").read_bytes() == row and len(_rows(run)) == 4
    assert f"moved to {backup.name}/" in capsys.readouterr().err


def test_a_start_refused_after_the_lock_leaves_no_directory(tmp_path):
    """parallel=fsdp on a policy without full-fine-tuning modules fails after the lock was taken: the
    directory the start created (holding only run.lock) is removed again."""
    run = tmp_path / "new" / "run"
    with pytest.raises(ConfigError, match=r"config\.parallel='fsdp'"):
        train(_cfg(run, "iterations=1", "parallel=fsdp"), components=toy_components())
    assert not run.exists()


# ----------------------------------------------------------------------------------------------------
# 2. Divergence is caught where it happens
# ----------------------------------------------------------------------------------------------------
def _poisoned_loss(monkeypatch, bad_calls: set[int]):
    """Make the policy loss NaN for the given (1-based) calls: one call per trained SDE step per micro-batch,
    so with 2 trained steps and no micro split, optimizer step k makes calls 2k-1 and 2k."""
    real = trainer.policy_loss_fn
    calls = {"n": 0}

    def factory(cfg):
        fn = real(cfg)

        def poisoned(**kw):
            calls["n"] += 1
            per_sample, stats = fn(**kw)
            return (per_sample * float("nan") if calls["n"] in bad_calls else per_sample), stats
        return poisoned
    monkeypatch.setattr(trainer, "policy_loss_fn", factory)


def test_a_non_finite_loss_stops_before_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    """NaN loss at optimizer step 3 (iteration 1): DivergenceError naming the iteration, the step, the quantity
    and the causes; the weights were not updated by it; the checkpoint on disk (iteration 1) is intact."""
    _poisoned_loss(monkeypatch, {5})
    run = tmp_path / "run"
    seen = {}
    with pytest.raises(DivergenceError) as err:
        train(_cfg(run, "iterations=3"), components=toy_components(),
              on_step=lambda step, policy: seen.__setitem__(step, policy.trainable_state_dict()))
    msg = str(err.value)
    assert "non-finite loss and gradient norm at iteration 1, optimizer step 3" in msg
    assert "last checkpoint: iteration 1" in msg and "lr=0.003" in msg and "on_nonfinite=skip" in msg
    assert sorted(seen) == [1, 2] and len(read_jsonl(run / "metrics.jsonl")) == 2
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 1 and all(torch.equal(state["policy"][k], seen[2][k]) for k in seen[2])


def test_on_nonfinite_skip_drops_the_step_and_logs_it(tmp_path, monkeypatch):
    """on_nonfinite=skip: the poisoned step 3 leaves the weights as they were after step 2, is logged with
    nonfinite_skipped = 1 (documented key), every other step with 0, and training finishes."""
    _poisoned_loss(monkeypatch, {5})
    run = tmp_path / "run"
    seen = {}
    cfg = _cfg(run, "iterations=3", "on_nonfinite=skip", "log_rewards=brightness")   # the toy components log it
    train(cfg, components=toy_components(),
          on_step=lambda step, policy: seen.__setitem__(step, policy.trainable_state_dict()))
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r["nonfinite_skipped"] for r in recs] == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    d = json.loads((run / "run.json").read_text())["latent_dim"]
    assert recs[2]["loss"] is None and not undocumented_step_keys(recs[2], cfg, d)
    assert all(torch.equal(seen[3][k], seen[2][k]) for k in seen[2])
    assert not all(torch.equal(seen[4][k], seen[3][k]) for k in seen[3])


@pytest.mark.parametrize("eval_every,where", [(0, "samples and log-probs in the rollout of iteration 1"),
                                              (1, "images in the pinned evaluation of iteration 1, test split")])
def test_a_diverged_policy_is_caught_in_its_samples_not_blamed_on_the_reward(tmp_path, eval_every, where):
    """lr = 1e6 (the reported case): finite but huge weights make the next rollout / evaluation overflow; the
    run stops there with a DivergenceError naming it and lr, not with a NaN-reward error."""
    with pytest.raises(DivergenceError, match=rf"non-finite {where}.*lr=1e\+06"):
        train(_cfg(tmp_path / "run", "iterations=3", "lr=1e6", f"eval_every={eval_every}"),
              components=toy_components())


def test_non_finite_parameters_are_detected():
    params = [torch.zeros(3), torch.ones(2, 2)]
    info = DistInfo()
    assert nonfinite.parameters_are_finite(params, info)
    params[1][0, 1] = float("inf")
    assert not nonfinite.parameters_are_finite(params, info)
    cfg = make_config({}, ["lr=0.5"])
    with pytest.raises(DivergenceError, match=r"non-finite parameters after the optimizer step at here: 1 of 7"):
        nonfinite.check_parameters(cfg, params, info, where="here")


# ----------------------------------------------------------------------------------------------------
# 5. Every CLI error is one line, and nothing is written
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot create files in (chmod; under root, which ignores permissions, the
    immutable attribute); skipped where neither works."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    immutable = False
    if os.access(d, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
    try:
        if os.access(d, os.W_OK):
            pytest.skip("cannot make a read-only directory here (root without chattr)")
        yield d
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(d)], check=True)
        d.chmod(0o755)


FRESH_CASES = [  # (overrides, the field / file the one-line message must name)
    (["num_minibatches=0"], "config.num_minibatches"),
    (["threads=0"], "config.threads"),
    (["sde_window=0.5"], "config.sde_window"),
    (["micro_batch_size=-1"], "config.micro_batch_size"),
    (["eval_samples_per_prompt=1"], "config.eval_samples_per_prompt"),
    (["eval_every=-1"], "config.eval_every"),
    (["checkpoint_every=-1"], "config.checkpoint_every"),
    (["max_grad_norm=0"], "config.max_grad_norm"),
    (["prompts={tmp}/missing.txt"], "config.prompts"),
    (["prompts={tmp}/prompts.txt"], "config.rewards"),          # text prompts with the world's tifa reward
    (["prompts=embedded", "rewards=nonesuch"], "config.rewards"),
    (["checkpoint={tmp}/empty.safetensors"], "config.checkpoint"),
]


@pytest.mark.parametrize("overrides,field", FRESH_CASES, ids=[c[0][-1] for c in FRESH_CASES])
def test_cli_bad_new_run_is_one_line_and_writes_nothing(tmp_path, capsys, overrides, field):
    (tmp_path / "prompts.txt").write_text("a red cat\ntwo dogs\n")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    before = snapshot(tmp_path)
    args = [o.format(tmp=tmp_path) for o in overrides]
    code = cli.main(["train", f"run_dir={tmp_path / 'run'}", "iterations=1", "progress=false", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("flowdppo: error: ") and field in err[0] and "Fix:" in err[0], err[0]
    assert snapshot(tmp_path) == before


def test_cli_read_only_run_dir_is_one_line_before_the_model_loads(read_only_dir, capsys, monkeypatch):
    def no_model(cfg):
        raise AssertionError("the model must not load before the run directory is found unwritable")
    monkeypatch.setattr(trainer, "build_components", no_model)
    before = snapshot(read_only_dir)
    assert cli.main(["train", f"run_dir={read_only_dir / 'run'}", "iterations=1", "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.run_dir" in err[0] and "not writable" in err[0] and "Fix:" in err[0], err
    assert snapshot(read_only_dir) == before


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tear_middle(path: Path) -> None:          # line 2 of 4 cut short: damage inside what the checkpoint covers
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"
    path.write_text("".join(lines))


RESUME_CASES = [  # (damage to the copied run, extra CLI arguments, what the one-line message must name)
    ("truncated checkpoint", lambda run: _truncate(run / "checkpoint.pt"), [], "checkpoint.pt is not a readable"),
    ("empty checkpoint", lambda run: (run / "checkpoint.pt").write_bytes(b""), [], "(0 bytes"),
    ("torn log", lambda run: _tear_middle(run / "metrics.jsonl"), [], "metrics.jsonl: line 2 is not valid JSON"),
    ("cut log", lambda run: (run / "metrics.jsonl").write_text(""), [], "metrics.jsonl has 0 complete lines"),
    ("no checkpoint", lambda run: [(run / n).unlink() for n in ("checkpoint.pt", "checkpoint.prev.pt")], [],
     "--restart"),
    ("with --config", lambda run: None, ["--config", "{tmp}/x.json"], "--config"),
    ("changed lr", lambda run: None, ["lr=0.5"], "lr: run has 0.003, you gave 0.5"),
]


@pytest.mark.parametrize("case,damage,extra,needle", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_cli_bad_resume_is_one_line_and_writes_nothing(tmp_path, finished_run, capsys, case, damage, extra, needle):
    run = _copy(finished_run, tmp_path / "run")
    damage(run)
    (tmp_path / "x.json").write_text("{}")
    before = snapshot(tmp_path)
    code = cli.main(["train", "--resume", str(run), *[e.format(tmp=tmp_path) for e in extra]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("flowdppo: error: ") and needle in err[0] and "Fix:" in err[0], err[0]
    assert snapshot(tmp_path) == before


def test_cli_eval_of_a_missing_dir_or_a_truncated_checkpoint_is_one_line(tmp_path, finished_run, capsys):
    assert cli.main(["eval", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "not a run directory" in err[0] and "Fix:" in err[0], err
    run = _copy(finished_run, tmp_path / "run")
    _truncate(run / "checkpoint.pt")
    before = snapshot(tmp_path)
    assert cli.main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt is not a readable checkpoint" in err[0], err
    assert snapshot(tmp_path) == before


def test_cli_divergence_is_one_line(tmp_path, capsys, toy_cli):
    assert toy_cli(["train", f"run_dir={tmp_path / 'run'}", *SMALL, "iterations=3", "lr=1e6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowdppo: error: non-finite") and "Fix:" in err[0], err
