"""From a ``tools/train.py`` checkpoint to a model ready to run: for inference, export and evaluation.

The file is read by :func:`detector.utils.checkpoint.load_checkpoint` (``weights_only=True``, a
:class:`CheckpointError` for a missing, unreadable or foreign file) and its weights loaded by
:func:`detector.utils.checkpoint.load_weights`; this module adds the config they were trained with
and builds the model of it (:func:`detector.models.build_model`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .config import Config, apply_overrides, from_dict, load_config
from .errors import CheckpointError, ConfigError
from .utils.checkpoint import load_checkpoint, load_weights
from .utils.device import resolve_device


def load_model(path: str, overrides: Sequence[str] = (), config_path: str = "") -> tuple[Config, torch.nn.Module, object]:
    """``(cfg, model, postprocessor)`` of a ``tools/train.py`` checkpoint, on the CPU, in eval mode.

    The config is the one stored in the checkpoint (or ``config_path``), then ``overrides``
    (dotted ``key=value``). :class:`CheckpointError` for a missing or unreadable file, a stored
    config this code cannot read, or weights that do not fit the model; ``ConfigError`` for a bad
    override or config file.
    """
    from .models import build_model

    state = load_checkpoint(path)
    if config_path:
        cfg = load_config(config_path, overrides)
    else:
        try:
            cfg = from_dict(state["config"], source=f"{path} (stored config)")
        except ConfigError as e:
            raise CheckpointError(f"{path}: its stored config does not fit this code: {e}") from None
        cfg = apply_overrides(cfg, overrides)
    model, _, postprocessor = build_model(cfg, load_weights=False)  # the weights come from the checkpoint
    load_weights(model, state["model"], path)
    return cfg, model.eval(), postprocessor


def use_config_threads(cfg: Config) -> None:
    """Torch's CPU threads set to ``train.num_threads`` when it is > 0 (0: torch's default)."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)


def load_for_evaluation(checkpoint: str, overrides: Sequence[str] = (), config: str = "", device: str = ""):
    """``(cfg, model, postprocessor, device, dataset, split_info, cache)``: the checkpoint's model
    (:func:`load_model`) frozen on ``device`` (``""``: CUDA when available; an unknown one is an
    ``InputError`` naming ``--device``), torch's threads from ``train.num_threads``, the items of
    its ``eval.split`` (:func:`detector.data.build_eval_dataset`) and a feature cache of the
    backbone (:class:`detector.features.FeatureCache`, shared by every evaluation of this model)."""
    from .data import build_eval_dataset
    from .features import FeatureCache

    dev = resolve_device(device, "--device")
    cfg, model, postprocessor = load_model(checkpoint, overrides, config)
    use_config_threads(cfg)
    model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dataset, split_info = build_eval_dataset(cfg, cfg.eval.split)
    cache = FeatureCache(model.backbone, keep_pixels=model.uses_pixels)
    return cfg, model, postprocessor, dev, dataset, split_info, cache


__all__ = ["load_for_evaluation", "load_model", "use_config_threads"]
