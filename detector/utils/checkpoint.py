"""Checkpoints: atomic writes, the last K kept, exact resume, loadable with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects): the model,
optimiser, scheduler and scaler state dicts, ``epoch`` and ``iteration``, the RNG states (numpy and
Python states converted to tensors and lists), the resolved config as a dict, the git revision, and
``model_class`` so that a checkpoint of another model is recognised, and ``weights_sha256``, a
digest of the model's tensors: :func:`load_checkpoint` refuses a file whose weights no longer match
it (one flipped byte inside a tensor, which the zip format does not catch) or hold NaN or inf.

A write either leaves the complete new file or none (a SIGKILL leaves at most a hidden
``.checkpoint_*.tmp*`` file, removed by :func:`remove_stale_temporaries`); a failing write raises
:class:`CheckpointWriteError` and keeps the previous checkpoints. Errors read as one line.
"""
from __future__ import annotations

import glob
import hashlib
import os
import random
import re
import subprocess
import zipfile
from typing import Any, Optional

import numpy as np
import torch

from ..errors import CheckpointError, CheckpointWriteError
from .atomic import atomic_open, temporary_pattern

FORMAT_VERSION = 1
MODEL_CLASS = "OneShotDETR"
_PATTERN = re.compile(r"checkpoint_(\d+)\.pth$")
_TEMPORARY = temporary_pattern("checkpoint_*.pth")  # .checkpoint_*.pth.tmp*


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
    """Write ``state`` to ``path`` atomically (:func:`detector.utils.atomic.atomic_open`: a
    temporary file in the same folder, fsynced, then renamed over ``path``; a crash leaves the
    previous file intact). :class:`CheckpointWriteError` (one line, the temporary file removed) when
    the disk refuses the write."""
    try:
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {_write_failure(e)}; "
                                   f"the previous checkpoints are intact") from None
    return path


def _write_failure(error: BaseException) -> str:
    """The operating system's reason for a failed write (torch wraps it in a RuntimeError)."""
    seen: Optional[BaseException] = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"{seen.strerror} (errno {seen.errno})"
        seen = seen.__cause__ or seen.__context__
    return _first_sentence(re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(error))) or type(error).__name__


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files of checkpoint writes that a killed process left in ``folder``;
    returns their paths. Call only when no other process writes checkpoints there."""
    removed = []
    for p in glob.glob(os.path.join(folder, _TEMPORARY)):
        try:
            os.remove(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def checkpoint_iteration(path: str) -> Optional[int]:
    """The iteration in a ``checkpoint_<iteration>.pth`` file name, or ``None``."""
    m = _PATTERN.search(os.path.basename(path))
    return int(m.group(1)) if m else None


def list_checkpoints(folder: str) -> list[str]:
    """``checkpoint_<iteration>.pth`` files in ``folder``, oldest (lowest iteration) first."""
    found = []
    for p in glob.glob(os.path.join(folder, "checkpoint_*.pth")):
        it = checkpoint_iteration(p)
        if it is not None:
            found.append((it, p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str) -> Optional[str]:
    """The newest checkpoint in ``folder`` or ``None``."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_rotating(folder: str, iteration: int, state: dict, keep: int) -> str:
    """Save ``checkpoint_<iteration>.pth`` in ``folder`` and delete the older ones beyond the
    newest ``keep`` (``keep`` <= 0 keeps all). The file just written and any of a later iteration
    are never deleted, whatever their names sort as."""
    path = save_checkpoint(os.path.join(folder, f"checkpoint_{iteration:08d}.pth"), state)
    if keep > 0:
        older = [p for p in list_checkpoints(folder) if checkpoint_iteration(p) < iteration]
        for old in older[:max(len(older) - (keep - 1), 0)]:
            try:
                os.remove(old)
            except FileNotFoundError:
                pass
    return path


def drop_checkpoints_after(folder: str, iteration: int) -> list[str]:
    """Delete the checkpoints of ``folder`` past ``iteration`` (left by the run a resume from
    ``iteration`` replaces); returns their paths."""
    dropped = [p for p in list_checkpoints(folder) if checkpoint_iteration(p) > iteration]
    for p in dropped:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass
    return dropped


def _first_sentence(text: str) -> str:
    """The first line and sentence of an exception message (torch appends paragraphs of advice)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split(". ")[0].rstrip(".")[:200]


def _unreadable(path: str, e: Exception) -> CheckpointError:
    """One line saying why ``torch.load`` failed, without torch's paragraphs of advice."""
    if isinstance(e, EOFError) or os.path.getsize(path) == 0:
        return CheckpointError(f"{path}: not a readable checkpoint: the file is empty or truncated")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch writes zip archives; a cut one has no central directory, a damaged start no signature.
    if magic != b"PK\x03\x04" or not zipfile.is_zipfile(path):
        return CheckpointError(f"{path}: not a readable checkpoint: truncated, corrupted or not a PyTorch file")
    if "Weights only load failed" in str(e):
        return CheckpointError(f"{path}: not a checkpoint of this project (it holds pickled Python objects, which "
                               f"are not loaded for safety; tools/train.py writes tensors and plain values only)")
    return CheckpointError(f"{path}: not a readable checkpoint: corrupted ({_first_sentence(str(e)) or type(e).__name__})")


def weights_digest(weights: dict) -> str:
    """sha256 over a state dict's tensors: each name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_weights(state: dict, path: str) -> None:
    """:class:`CheckpointError` when the model's tensors do not match the stored digest (files
    written before the digest existed have none) or hold a non-finite value."""
    weights = state["model"]
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this project ('model' is not a dict of tensors)")
    stored = state.get("weights_sha256")
    if stored is not None and stored != weights_digest(weights):
        raise CheckpointError(f"{path}: damaged: its weights do not match the digest stored with them "
                              "(a changed byte); use another checkpoint")
    for name, t in weights.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or inf; the run that wrote it diverged, "
                                  "use an earlier checkpoint")


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; a clear :class:`CheckpointError` when the file
    is missing, unreadable, or not a checkpoint of this project's model."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (checkpoint_<iteration>.pth)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise _unreadable(path, e) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'model' entry)")
    if state.get("model_class") != MODEL_CLASS or "config" not in state:
        raise CheckpointError(f"{path}: a checkpoint of another model ({state.get('model_class', 'unknown')!r}); "
                              f"expected {MODEL_CLASS!r} written by tools/train.py")
    _check_weights(state, path)
    return state


def load_weights(model: torch.nn.Module, weights: dict, path: str) -> None:
    """``model.load_state_dict(weights)`` (strict); :class:`CheckpointError` naming ``path`` when
    the weights do not fit the model of the config (another size, missing or extra tensors)."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line] or [str(e).splitlines()[-1]]
        raise CheckpointError(f"{path}: weights do not fit the model of this config ({lines[0][:200]})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {list(missing)[:5]}, "
                              f"unexpected {list(unexpected)[:5]})")


def checkpoint_state(model: torch.nn.Module, config: dict, **extra: Any) -> dict:
    """The checkpoint dict of ``model`` (its state dict) with the resolved ``config`` (a plain dict),
    the git revision, the model class and format version, plus ``extra`` entries (optimizer, ...)."""
    weights = model.state_dict()
    return {"model": weights, "weights_sha256": weights_digest(weights), "config": config,
            "git_revision": git_revision(), "model_class": MODEL_CLASS, "format_version": FORMAT_VERSION, **extra}
