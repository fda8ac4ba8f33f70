"""Restructuring changes no behaviour: a short seeded run of the embedded world logs exactly the records
that the code before the restructuring (commit 3ee19ec) logged — every key and every float, wall-time keys
(`time/*`) aside.  The fixture in tests/data/seeded_run/ was written by that code with
`python tests/test_seeded_logs_unchanged.py --write`; rewrite it only for a change that is meant to alter
what a run computes, and say so in the commit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "data" / "seeded_run"
FIELDS = dict(iterations=3, eval_every=2, eval_prompts=2, eval_samples_per_prompt=2, eval_probe_samples_per_prompt=2,
              num_minibatches=2, num_inner_epochs=2, beta=0.1, log_ref_kl=True, threads=1, progress=False,
              tensorboard=False, seed=7, checkpoint_every=0)


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if not k.startswith("time/")})
    return out


def _run(run_dir: Path) -> Path:
    from flowdppo.config import Config
    from flowdppo.trainer import train
    return train(Config(run_dir=str(run_dir), **FIELDS))


def test_seeded_run_logs_what_it_logged_before(tmp_path):
    run = _run(tmp_path / "run")
    for name in ("metrics.jsonl", "eval.jsonl"):
        got, want = _records(run / name), _records(FIXTURE / name)
        assert len(got) == len(want), name
        for i, (g, w) in enumerate(zip(got, want)):
            assert g == w, f"{name} record {i}: keys differing {sorted(k for k in set(g) | set(w) if g.get(k) != w.get(k))}"


if __name__ == "__main__" and "--write" in sys.argv:
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        run = _run(Path(tmp) / "run")
        FIXTURE.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "eval.jsonl"):
            shutil.copy(run / name, FIXTURE / name)
    print("fixture written to", FIXTURE)
