"""torch.distributed helpers (DDP launched by ``torchrun``); all are no-ops without it."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0."""
    return get_rank() == 0


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (``x`` itself without a process group)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / get_world_size()


def init_distributed() -> bool:
    """Initialise the process group from ``torchrun``'s environment (``nccl`` on CUDA, ``gloo`` on
    the CPU). Returns whether training is distributed."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def reduce_dict_mean(values: dict) -> dict:
    """``{name: float}`` averaged over processes (same keys on every process, in any order)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (``flag`` itself without a process group). A
    collective: every process must call it at the same point."""
    if not is_distributed():
        return bool(flag)
    return reduce_dict_mean({"flag": float(flag)})["flag"] > 0


def all_gather_objects(obj) -> list:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup_distributed() -> None:
    """Destroy the process group if one was initialised."""
    if is_distributed():
        dist.destroy_process_group()
