"""Committed files hold repo-relative paths only: no tracked file names the absolute path of the checkout that
wrote it (so a number in a manifest or compaction record traces to the repository, not to one machine)."""
from __future__ import annotations

import json
import re
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


# Absolute paths that name a particular machine's checkout or home: a workspace root, a home directory, a
# per-process temporary directory.  Plain `/tmp/<name>` in a documented example command is the user's own
# choice of output file, not a trace of the machine that wrote the file, and is allowed.
MACHINE_PATHS = re.compile(rb"(?<![\w.])(/work/|/home/[\w.-]+/|/Users/[\w.-]+/|/root/|/tmp/pytest-|/tmp/tmp\w{6})")


def _tracked_text_files():
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in filter(None, files.split(b"\0")):
        path = ROOT / name.decode()
        if path.is_file() and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            if b"\0" not in data[:4096]:          # text only
                yield name.decode(), data


def test_no_tracked_file_holds_a_machine_path():
    hits = [(name, m.group(0).decode()) for name, data in _tracked_text_files()
            if name != "tests/test_portable_artifacts.py" for m in [MACHINE_PATHS.search(data)] if m]
    assert not hits, f"{len(hits)} tracked files hold an absolute machine path: {hits[:8]}"


def test_the_machine_path_pattern_catches_what_it_should():
    assert MACHINE_PATHS.search(b'"run_dir": "/work/ckpt/runs/x"')
    assert MACHINE_PATHS.search(b"see /home/alice/flowdppo/README.md")
    assert MACHINE_PATHS.search(b"/tmp/pytest-of-root/pytest-3/test_x0/run")
    assert not MACHINE_PATHS.search(b"--out /tmp/gpu_bench_tiny.json")
    assert not MACHINE_PATHS.search(b"paper_runs/single-flow_dppo-s0/config.json")


def test_committed_artifacts_name_a_clean_commit():
    """The figures' manifest records the commit that made it and no uncommitted changes under flowdppo/ or
    analysis/ (make_figures warns and records them when there are)."""
    manifest = ROOT / "paper_figures" / "manifest.json"
    if not manifest.exists():
        pytest.skip("no committed figures")
    m = json.loads(manifest.read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", m["git_commit"]), m["git_commit"]
    assert m.get("uncommitted_changes") == [], m.get("uncommitted_changes")


OUTSIDE_CITATIONS = re.compile(rb"\.\./shared|reference/(paper|anchors|toy_probe|ecosystem)\.md|toy_probe|anchors F\d")


def test_nothing_cites_notes_outside_the_repository():
    """Code and docs cite the paper (arXiv 2606.11025, by equation number) or docs/, never notes a user of this
    repository does not have."""
    hits = [name for name, data in _tracked_text_files()
            if name != "tests/test_portable_artifacts.py" and OUTSIDE_CITATIONS.search(data)]
    assert not hits, f"cite the paper or docs/ instead: {hits}"
