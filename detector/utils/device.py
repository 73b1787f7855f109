"""The device a user asked for, checked before any work: ``cpu``, ``cuda`` or ``cuda:N``."""
from __future__ import annotations

import os
from typing import Union

import torch

from ..errors import InputError


def resolve_device(requested: Union[str, torch.device, None] = "", what: str = "device") -> torch.device:
    """``requested`` as a ``torch.device``; empty: CUDA (this process's ``LOCAL_RANK``) when
    available, else the CPU.

    Raises:
        InputError: a name torch does not know, or a CUDA device this machine does not have
            (one line naming ``what``, e.g. ``"--device"``).
    """
    if isinstance(requested, torch.device):
        device = requested
    elif not requested:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    else:
        try:
            device = torch.device(str(requested))
        except (RuntimeError, ValueError):
            raise InputError(f"{what} {requested!r}: not a device name (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{what} {requested}: no CUDA GPU is available on this machine (use cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"{what} {requested}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif device.type != "cpu":
        raise InputError(f"{what} {requested!r}: unsupported device type (expected cpu, cuda or cuda:N)")
    return device


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` (usually a CPU tensor) on ``device`` without making the host wait: on CUDA through pinned
    memory with ``non_blocking=True`` (a plain ``.to(device)`` waits for the device's queue to empty)."""
    if device.type == "cuda" and host.device.type == "cpu" and not host.is_pinned():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)  # itself where it already is
