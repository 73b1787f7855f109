"""A run folder belongs to one run.

* A fresh run starts only in a missing or empty folder (:func:`check_fresh`). ``--overwrite``
  empties a run folder first (one holding ``config.yaml``, ``metrics.jsonl`` or checkpoints; any
  other folder is refused rather than emptied), once the run's inputs are validated
  (:func:`clear_run_folder`).
* ``--resume`` continues the folder's newest readable checkpoint, falling back past unreadable
  ones and saying so (:func:`find_resume_checkpoint`), with the config stored in that checkpoint
  (:func:`resume_config`). Only :data:`RESUME_SAFE_KEYS` may change: schedule length, logging,
  checkpointing and evaluation, none of which can break the weights.

Every refusal is an :class:`~detector.errors.InputError`, :class:`~detector.errors.ConfigError`
or :class:`~detector.errors.CheckpointError` with a one-line message naming the folder or key.
"""
from __future__ import annotations

import copy
import os
import shutil
from typing import Any, Callable, Optional, Sequence

import yaml

from .config import Config, apply_overrides, from_dict, load_config, to_dict
from .errors import CheckpointError, ConfigError, InputError
from .utils.checkpoint import (drop_checkpoints_after, git_revision, list_checkpoints, load_checkpoint,
                               remove_stale_temporaries)
from .utils.output_paths import check_output_path

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "train.log")

# Keys a resumed run may change; a trailing "." allows the whole section.
RESUME_SAFE_KEYS = (
    "train.max_iters", "train.epochs", "train.time_budget_min", "train.log_every", "train.eval_every",
    "train.eval_runs", "train.checkpoint_every", "train.checkpoint_every_iters", "train.keep_checkpoints",
    "train.num_threads", "train.output_dir", "data.num_workers", "eval.",
)


def describe_contents(folder: str) -> str:
    """``"config.yaml, metrics.jsonl, 2 checkpoints and 3 other files"``-style summary."""
    names = sorted(os.listdir(folder))
    checkpoints = len(list_checkpoints(folder))
    markers = [n for n in RUN_MARKERS if n in names]
    others = len(names) - len(markers) - checkpoints
    parts = markers + [f"{checkpoints} checkpoint(s)"] * bool(checkpoints) + [f"{others} other file(s)"] * bool(others)
    return ", ".join(parts)


def is_run_folder(folder: str) -> bool:
    """True when ``folder`` holds what a run writes (config, metrics, log or checkpoints)."""
    return os.path.isdir(folder) and (any(os.path.exists(os.path.join(folder, n)) for n in RUN_MARKERS)
                                      or bool(list_checkpoints(folder)))


def check_fresh(folder: str, overwrite: bool = False, resumable: bool = True) -> None:
    """A fresh run may start in ``folder``: it is missing or empty, or ``overwrite`` is set and
    it is a run folder. ``resumable``: the refusal suggests ``--resume``."""
    check_output_path(folder, "output folder")
    if not os.path.isdir(folder) or not os.listdir(folder):
        return
    if overwrite:
        if not is_run_folder(folder):
            raise InputError(f"--overwrite empties only run folders (with config.yaml, metrics.jsonl or checkpoints); "
                             f"{folder} holds other files ({describe_contents(folder)}): choose another --output-dir")
        return
    hint = "continue it with --resume, or start over with --overwrite (deletes its contents)" if resumable else \
        "start over with --overwrite (deletes its contents), or choose another --output-dir"
    raise InputError(f"{folder} already holds a run ({describe_contents(folder)}); {hint}")


def clear_run_folder(folder: str) -> None:
    """Delete the contents of a run folder (:func:`check_fresh` with ``overwrite`` checked it)."""
    if not os.path.isdir(folder):
        return
    if not is_run_folder(folder):
        raise InputError(f"{folder}: not a run folder; refusing to empty it")
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def start_run_folder(cfg: Config, folder: str, overwrite: bool = False,
                     on_start: Optional[Callable[[str], None]] = None) -> None:
    """The first write of a run, once its inputs are validated: empty the folder of a previous run
    (``overwrite``), write ``config.yaml`` and ``git_revision.txt``, then call ``on_start(folder)``."""
    if overwrite:
        clear_run_folder(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    with open(os.path.join(folder, "git_revision.txt"), "w", encoding="utf-8") as f:
        f.write(git_revision() + "\n")
    if on_start is not None:
        on_start(folder)


def discard_after(folder: str, iteration: int) -> list[str]:
    """A resume from ``iteration`` replaces what a killed or abandoned run left past it: the
    temporary files of interrupted checkpoint writes and the later checkpoints (returned, and
    named on stdout). ``metrics.jsonl`` is truncated by the engine's log."""
    remove_stale_temporaries(folder)
    dropped = drop_checkpoints_after(folder, iteration)
    if dropped:
        print(f"resuming from iteration {iteration}: removed the later checkpoints {', '.join(dropped)}", flush=True)
    return dropped


def find_resume_checkpoint(path: str) -> tuple[str, dict, list[str]]:
    """``(checkpoint path, its state, warnings)`` to resume from.

    ``path`` is a checkpoint file (used as is) or a run folder: its newest checkpoint that loads;
    each unreadable newer one adds a warning naming it and the one used instead.

    Raises:
        CheckpointError: a missing path, a folder without checkpoints, or none readable.
    """
    if os.path.isfile(path):
        return path, load_checkpoint(path), []
    if not os.path.isdir(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}: it does not exist "
                              f"(give a run folder or a checkpoint file)")
    candidates = list_checkpoints(path)
    if not candidates:
        raise CheckpointError(f"--resume: no checkpoint (checkpoint_<iteration>.pth) in {path}")
    problems: list[str] = []
    for candidate in reversed(candidates):
        try:
            state = load_checkpoint(candidate)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        warnings = [f"{p}; resuming from {candidate} instead" for p in problems]
        return candidate, state, warnings
    raise CheckpointError(f"--resume: none of the {len(candidates)} checkpoints in {path} is readable "
                          f"(newest: {problems[0]})")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in RESUME_SAFE_KEYS)


def changed_keys(a: Config, b: Config) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every field that differs."""
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return [(k, fa[k], fb[k]) for k in fa if fa[k] != fb[k]]


def resume_config(state: dict, checkpoint: str, overrides: Sequence[str] = (), config_path: str = "") -> Config:
    """The config a resumed run continues with: the one stored in ``checkpoint``, then
    ``overrides`` of :data:`RESUME_SAFE_KEYS` only. A ``config_path`` given as well must agree
    with the stored config on every other key (its safe keys are not used).

    Raises:
        ConfigError: naming the first key that may not change, or a bad override.
        CheckpointError: a stored config this code cannot read.
    """
    try:
        stored = from_dict(state["config"], source=f"{checkpoint} (stored config)")
    except ConfigError as e:
        raise CheckpointError(f"{checkpoint}: its stored config does not fit this code: {e}") from None
    cfg = apply_overrides(copy.deepcopy(stored), overrides)
    safe = ", ".join(k.rstrip(".") + (".*" if k.endswith(".") else "") for k in RESUME_SAFE_KEYS)
    for key, old, new in changed_keys(stored, cfg):
        if not _is_safe(key):
            raise ConfigError(f"--resume: {key} cannot change in a resumed run (the run has {old!r}, the override asks "
                              f"{new!r}); a resumed run may change only {safe}")
    if config_path:
        given = load_config(config_path, overrides)
        for key, old, new in changed_keys(cfg, given):
            if not _is_safe(key):
                raise ConfigError(f"--resume: {config_path} has {key}={new!r} but the run was trained with {old!r} "
                                  f"(stored in {checkpoint}); leave out --config to continue with the stored config")
    return cfg


def resume_folder(args_output_dir: str, resume: str, config_output_dir: Optional[str]) -> str:
    """The run folder of a resumed run: ``--output-dir``, else the folder ``--resume`` names (or
    the checkpoint's folder), else ``train.output_dir`` of ``--config``."""
    if args_output_dir:
        return args_output_dir
    if resume and os.path.isdir(resume):
        return resume
    if resume and os.path.isfile(resume):
        return os.path.dirname(os.path.abspath(resume))
    if config_output_dir:
        return config_output_dir
    raise InputError("--resume needs the run folder: give --output-dir DIR, --resume DIR, or the run's --config")
