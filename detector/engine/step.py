"""One training step, and what puts a batch on the device for it.

:func:`train_step` is the whole optimisation step (forward and losses under autocast, backward,
clipping, optimiser step); the :class:`~detector.engine.trainer.Trainer` calls it once per
iteration and hands its losses to the hooks.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..features import FeatureCache
from ..utils.device import resolve_device, upload


def select_device(requested: str = "") -> torch.device:
    """``requested``, or ``cuda`` (this process's local rank) when available, else the CPU;
    :class:`~detector.errors.InputError` for a device this machine does not have."""
    return resolve_device(requested, "device")


def amp_dtype(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """Mixed-precision dtype: bf16 on CUDA where supported, else fp16; ``None`` (off) on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def each_support(support, fn: Callable):
    """``fn`` applied to one support batch, or to each of a list of ``k`` (k-shot)."""
    return [fn(s) for s in support] if isinstance(support, list) else fn(support)


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    """Tensors of each target dict moved to ``device`` (without waiting for it: :func:`upload`)."""
    return [{k: (upload(v, device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def to_device(query, support, targets: list[dict], device: torch.device, cache: Optional[FeatureCache],
              support_size: int):
    """A training batch from the loader -> on ``device``: features from ``cache`` when there is one
    (they are kept on the device), else the images; the targets. No copy makes the host wait."""
    if cache is not None:
        query, support = cache(query), each_support(support, lambda s: cache(s, support_size))
    query = query.to(device, non_blocking=True)  # (no copy where they already are)
    support = each_support(support, lambda s: s.to(device, non_blocking=True))
    return query, support, move_targets(targets, device)


def train_step(model: torch.nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, query, support, targets: list[dict], amp: Optional[torch.dtype],
               clip_max_norm: float) -> dict:
    """One optimisation step on a batch already on the device: forward and losses (under autocast
    with ``amp``), backward, gradient clipping, optimiser step. Returns the losses, not read: the
    host never waits for the device here except for the matching's one copy of its costs."""
    with torch.autocast(query.tensors.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        losses = criterion(model(query, support), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    if clip_max_norm > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    scaler.step(optimizer)
    scaler.update()
    return losses
