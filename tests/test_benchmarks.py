"""The GPU benchmark script must stay runnable on the day a GPU is lent: its --tiny mode executes every
code path (SD3 rollout vs pipeline, DPPO vs GRPO iterations, trainer vs bare loop, FLUX smoke) on the CPU.
Nothing here asserts a speed — the tiny mode's ratios are meaningless (benchmarks/README.md) — only that
the script completes and writes a complete, well-formed result."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_tiny_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--tiny", "--memory-sweep",
                           "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["complete"] is True and res["tiny"] is True
    sd3 = res["sd3"]
    for key in ("ratio_a_rollout_vs_pipeline", "ratio_b_dppo_vs_grpo", "ratio_c_trainer_vs_bare",
                "trainer_samples_per_s", "rollout_group_s", "pipeline_group_s", "iteration_dppo_s",
                "iteration_grpo_s", "bare_iteration_s", "rollout_with_ref_forwards_s", "update_per_step_replay_s",
                "update_batched_replay_s"):
        assert math.isfinite(sd3[key]) and sd3[key] > 0, (key, sd3[key])
    # the ratios are the stated quotients of the recorded times
    assert math.isclose(sd3["ratio_a_rollout_vs_pipeline"], sd3["pipeline_group_s"] / sd3["rollout_group_s"])
    assert math.isclose(sd3["ratio_b_dppo_vs_grpo"], sd3["iteration_dppo_s"] / sd3["iteration_grpo_s"])
    assert math.isclose(sd3["speedup_batched_replay"], sd3["update_per_step_replay_s"] / sd3["update_batched_replay_s"])
    sweep = res["memory_sweep"]      # every (trained steps, group) cell ran (memory itself is GPU-only: None here)
    assert {(r["trained_steps"], r["group"]) for r in sweep} == {(k, g) for k in (1, 3, 5) for g in (4, 8)}
    assert math.isclose(sd3["ratio_c_trainer_vs_bare"], sd3["bare_iteration_s"] / sd3["trainer_iteration_s"])
    assert res["flux_smoke"]["loss_finite"] is True
    assert "(a) rollout ÷ pipeline images/s" in proc.stdout   # the printed table
