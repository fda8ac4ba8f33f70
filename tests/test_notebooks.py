"""The notebooks execute headless, top to bottom (jupyter nbconvert --execute), each within its time limit.

They are committed without outputs; this test runs them into a temporary directory and leaves the
committed files untouched."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 120


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(notebook, tmp_path):
    pytest.importorskip("nbconvert")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                           f"--ExecutePreprocessor.timeout={TIMEOUT_S}", "--output-dir", str(tmp_path),
                           str(notebook)], capture_output=True, text=True, timeout=TIMEOUT_S + 60,
                          cwd=notebook.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / notebook.name).exists()
    assert time.perf_counter() - t0 < TIMEOUT_S
