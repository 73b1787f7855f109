"""Shared by the command-line tests: the tiny synthetic benchmark and one uninterrupted reference
run of tools/train.py on it, each made once per test session."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    """The tiny synthetic benchmark (read-only for the tests)."""
    from detector.data import build_synthetic

    root = tmp_path_factory.mktemp("bench") / "synthetic_tiny"
    return build_synthetic(str(root), "tiny", workers=1, verbose=False)


@pytest.fixture(scope="session")
def reference(bench, tmp_path_factory):
    """The folder of an uninterrupted ``tools/train.py`` run: tiny config, ``train.max_iters=8``,
    ``eval.runs=1`` (checkpoints 6 and 8 kept). Copy it before changing it."""
    out = tmp_path_factory.mktemp("reference") / "run"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config", TINY, "--no-progress", "--output-dir",
           str(out), f"data.root={bench}", "train.max_iters=8", "eval.runs=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    return out
