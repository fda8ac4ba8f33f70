"""Committed files hold repo-relative paths only: no tracked file names the absolute path of the checkout that
wrote it (so a number in a manifest or compaction record traces to the repository, not to one machine)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_no_tracked_file_holds_this_checkouts_absolute_path():
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    needle = str(ROOT).encode()
    hits = []
    for name in filter(None, files.split(b"\0")):
        path = ROOT / name.decode()
        if path.is_file() and path.stat().st_size < 5_000_000 and needle in path.read_bytes():
            hits.append(name.decode())
    assert not hits, f"{len(hits)} tracked files hold {ROOT}: {hits[:5]}"
