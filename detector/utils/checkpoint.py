"""Checkpoints: atomic writes, the last K kept, exact resume, loadable with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects): the model,
optimiser, scheduler and scaler state dicts, ``epoch`` and ``iteration``, the RNG states (numpy and
Python states converted to tensors and lists), the resolved config as a dict, the git revision, and
``model_class`` so that a checkpoint of another model is recognised.
"""
from __future__ import annotations

import glob
import os
import random
import re
import subprocess
from typing import Any, Optional

import numpy as np
import torch

FORMAT_VERSION = 1
MODEL_CLASS = "OneShotDETR"
_PATTERN = re.compile(r"checkpoint_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this model."""


def git_revision(path: Optional[str] = None) -> str:
    """The git commit of the source tree (``"unknown"`` outside a repository), with ``-dirty`` when
    tracked files changed."""
    where = path or os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rng_state() -> dict:
    """Torch (CPU and CUDA), numpy global and Python ``random`` states, as tensors and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "internal": list(py_state[1]),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path: str, state: dict) -> str:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed, then
    renamed over ``path`` (a crash leaves the previous file intact)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def list_checkpoints(folder: str) -> list[str]:
    """``checkpoint_<iteration>.pth`` files in ``folder``, oldest (lowest iteration) first."""
    found = []
    for p in glob.glob(os.path.join(folder, "checkpoint_*.pth")):
        m = _PATTERN.search(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str) -> Optional[str]:
    """The newest checkpoint in ``folder`` or ``None``."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_rotating(folder: str, iteration: int, state: dict, keep: int) -> str:
    """Save ``checkpoint_<iteration>.pth`` in ``folder`` and delete all but the newest ``keep``."""
    path = save_checkpoint(os.path.join(folder, f"checkpoint_{iteration:08d}.pth"), state)
    if keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            try:
                os.remove(old)
            except FileNotFoundError:
                pass
    return path


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; a clear :class:`CheckpointError` when the file
    is missing, unreadable, or not a checkpoint of this project's model."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'model' entry)")
    if state.get("model_class") != MODEL_CLASS or "config" not in state:
        raise CheckpointError(f"{path}: a checkpoint of another model ({state.get('model_class', 'unknown')!r}); "
                              f"expected {MODEL_CLASS!r} written by tools/train.py")
    return state


def checkpoint_state(model: torch.nn.Module, config: dict, **extra: Any) -> dict:
    """The checkpoint dict of ``model`` (its state dict) with the resolved ``config`` (a plain dict),
    the git revision, the model class and format version, plus ``extra`` entries (optimizer, ...)."""
    return {"model": model.state_dict(), "config": config, "git_revision": git_revision(),
            "model_class": MODEL_CLASS, "format_version": FORMAT_VERSION, **extra}
