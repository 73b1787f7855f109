"""Optimiser and learning-rate schedule: AdamW with a separate backbone learning rate, linear
warm-up, then step or cosine decay.

Parameter groups are formed from modules (``model.backbone.body`` is "the backbone"), never from
substrings of parameter names. Norm layers, biases and embeddings get no weight decay.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

_NO_DECAY_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.Embedding)


def _decay_split(module: nn.Module, skip: set[int]) -> tuple[list, list]:
    """Trainable parameters of ``module`` (minus ids in ``skip``) split into (decay, no_decay)."""
    decay, no_decay, seen = [], [], set(skip)
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(sub, _NO_DECAY_TYPES) or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    return decay, no_decay


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups: the backbone body at ``lr_backbone``, everything else at ``lr``;
    each split into weight-decayed and not. Each group carries ``name`` and its base ``initial_lr``.
    """
    body = model.backbone.body if hasattr(model, "backbone") and hasattr(model.backbone, "body") else None
    groups = []
    body_ids: set[int] = set()
    if body is not None:
        body_ids = {id(p) for p in body.parameters()}
        decay, no_decay = _decay_split(body, set())
        groups += [("backbone", decay, cfg.lr_backbone, cfg.weight_decay),
                   ("backbone_no_decay", no_decay, cfg.lr_backbone, 0.0)]
    decay, no_decay = _decay_split(model, body_ids)
    groups += [("decoder", decay, cfg.lr, cfg.weight_decay), ("decoder_no_decay", no_decay, cfg.lr, 0.0)]
    return [{"name": n, "params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd}
            for n, ps, lr, wd in groups if ps]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    # The fused implementation on CUDA and the CPU: the whole update in a few kernels. On CUDA the
    # default (foreach) launches several per parameter group and dtype; on the CPU the default is
    # the plain loop, several ops per parameter: the demo's 149 parameters took 5.8x as long an
    # update that way as fused (tools/benchmark.py --suite kernels; docs/PERFORMANCE.md).
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    fused = True if len(devices) == 1 and devices <= {"cuda", "cpu"} else None
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(iteration: int, iters_per_epoch: int, total_iters: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based): linear warm-up over
    ``warmup_iters``, then ``constant``, ``step`` (x0.1 after each epoch in ``lr_drop_epochs``) or
    ``cosine`` (to zero at ``total_iters``)."""
    warm = 1.0
    if cfg.warmup_iters > 0 and iteration < cfg.warmup_iters:
        warm = (iteration + 1) / cfg.warmup_iters
    if cfg.lr_schedule == "constant":
        return warm
    if cfg.lr_schedule == "step":
        epoch = iteration // max(iters_per_epoch, 1)
        return warm * 0.1 ** sum(1 for e in cfg.lr_drop_epochs if epoch >= e)
    span = max(total_iters - cfg.warmup_iters, 1)
    progress = min(max(iteration - cfg.warmup_iters, 0) / span, 1.0)
    return warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, iters_per_epoch: int, total_iters: int,
                    cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` applying :func:`lr_factor` to every group (its state dict holds
    only counters, so it checkpoints without pickled functions)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, iters_per_epoch, total_iters, cfg))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping this optimiser's implementation: a state saved
    by another one (foreach on the CPU, fused on CUDA, or before fused existed) would otherwise
    bring its flags along and silently switch the implementation (torch copies them with the
    parameter groups, and decides from them where each ``step`` counter lives)."""
    state = {**state, "param_groups": [dict(g) for g in state["param_groups"]]}
    for saved, now in zip(state["param_groups"], optimizer.param_groups):
        for key in ("fused", "foreach", "capturable"):
            if key in now:
                saved[key] = now[key]
    optimizer.load_state_dict(state)

