"""Count what a piece of code asks of an accelerator, on any device, the CPU included.

A GPU step is fast when the host never waits for the device and launches few kernels. Both can be
counted without a GPU: every kernel is an ATen operator that passes through the dispatcher, and the
host waits for a CUDA device wherever it needs a value that lives there. :class:`OpAudit` records
both while it is active, with the line of this project that asked, so that a test can hold a step
to a budget and a profile can say where the rest comes from.

Where each tensor lives is tracked, not read from ``tensor.device`` (on a CPU run everything is on
the CPU): the tensors handed to :class:`OpAudit` (the model's parameters and buffers, the inputs)
live on the *device*, and so does every result of an operator with a device input and every tensor
made with an explicit ``device=`` argument other than the literal ``"cpu"``; ``.cpu()`` and
``.to("cpu")`` results live on the host, and so do tensors made without ``device=``.

* ``ops``: ATen operators dispatched, without views and metadata-only operators (``view``,
  ``expand``, ``detach``, ``empty`` ...): an upper bound on the kernels a CUDA run launches.
* ``syncs``: points where the host would wait for the device: a Python value from a device tensor
  (``.item()``, ``bool()``, ``float()``, ``int()``, ``.tolist()``, ``.numpy()``), a copy of a device
  tensor to the host (``.cpu()``, ``.to("cpu")``), a blocking copy of a host tensor to the device
  (``.to(device)`` without ``non_blocking=True``, ``torch.tensor(data, device=...)``: PyTorch waits
  for the stream after such a copy), ``torch.equal`` of device tensors, and an operator on a device
  tensor whose output size depends on the data (``nonzero``, boolean-mask indexing,
  ``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``, torchvision's
  ``nms``), and indexing a device tensor with host indices (copied over, blocking).
  A transfer to the host is recognised by ``.cpu()`` or the string ``"cpu"``: write host copies
  that way (a ``torch.device("cpu")`` object reads as the device, which it is on a CPU run).
* ``uploads``: asynchronous host-to-device copies (``non_blocking=True``), which do not wait.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys
import traceback
from typing import Iterable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NO_KERNEL = {"detach", "alias", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
              "lift_fresh", "set_", "resize_", "_reshape_alias", "sym_size", "sym_stride", "sym_numel",
              "sym_storage_offset", "is_same_size", "_has_compatible_shallow_copy_type", "record_stream",
              "_local_scalar_dense"}
_DATA_DEPENDENT = {"nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive",
                   "argwhere", "bincount", "nms"}  # nms: torchvision's CUDA kernel reads its mask on the host
_READS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "equal", "allclose",
          "__format__", "__array__", "__repr__"}
_FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "eye", "rand",
              "randn", "randint", "randperm", "zeros_like", "ones_like", "full_like", "empty_like"}


def _caller() -> str:
    """``path:line function`` of the innermost frame of this project outside this module."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(frame.filename)
        if path.startswith(_PACKAGE) and not path.endswith("op_audit.py"):
            return f"{os.path.relpath(path, os.path.dirname(_PACKAGE))}:{frame.lineno} {frame.name}"
    return "(torch)"


def _called_from_project() -> bool:
    """Whether the Python frame that called the torch function being handled is this project's."""
    frame = sys._getframe(2)  # 0: this function, 1: __torch_function__, 2: the caller
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE)


def _tensors(tree) -> list:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class _Functions(TorchFunctionMode):
    """Python-level calls: reads, transfers and factories (where the dispatcher cannot tell)."""

    def __init__(self, audit: "OpAudit"):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        audit = self.audit
        inputs = _tensors((args, kwargs))
        on_device = any(audit.on_device(t) for t in inputs)
        target = _target(name, args, kwargs)
        to_host = name == "cpu" or target == "host"
        if name in _READS or to_host:
            if on_device:
                audit._sync(name if name in _READS else "to host")
            with audit._quiet():  # .item() reaches the dispatcher again as a scalar read
                result = _fresh(func(*args, **kwargs), inputs)
            for t in _tensors(result):
                audit._device.pop(t, None)
            return result
        if target == "device" and inputs and not on_device:
            if kwargs.get("non_blocking") or (len(args) > 2 and args[2] is True):
                audit._upload()
            else:
                audit._sync("blocking upload")
        elif name in ("tensor", "as_tensor") and target == "device" and _called_from_project():
            # (torch's own code, e.g. the optimisers, makes host tensors with device=torch.device("cpu"))
            audit._sync("blocking upload")
        result = func(*args, **kwargs)
        if target == "device":
            result = _fresh(result, inputs)
        if on_device or target == "device":
            audit.mark(_tensors(result))
        return result


def _fresh(result, inputs):
    """A transfer between devices that are both the CPU returns its input: give the result its own
    tensor object (an alias), so that the input keeps where it lives."""
    if isinstance(result, torch.Tensor) and any(result is t for t in inputs):
        return result.view_as(result)
    return result


def _target(name: str, args, kwargs) -> str:
    """``"host"`` / ``"device"`` / ``""`` for the device a call asks for explicitly."""
    if name == "cuda":
        return "device"
    if name == "to":
        device = kwargs.get("device")
        if device is None:
            device = next((a for a in args[1:] if isinstance(a, (str, torch.device, torch.Tensor))), None)
    elif name in _FACTORIES:
        device = kwargs.get("device")
    else:
        return ""
    if device is None:
        return ""
    if isinstance(device, str) and device.split(":")[0] == "cpu":
        return "host"
    if isinstance(device, torch.Tensor):
        return "device"  # .to(other_tensor): follows the other tensor, device in practice
    return "device"


class _Dispatch(TorchDispatchMode):
    """Operators: the kernel count, data-dependent sizes, and where results live."""

    def __init__(self, audit: "OpAudit"):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        audit = self.audit
        name = func._schema.name.split("::")[-1]
        on_device = any(audit.on_device(t) for t in _tensors((args, kwargs)))
        if on_device and not audit._quiet_depth:
            if name in _DATA_DEPENDENT:
                audit._sync(name)
            elif name in ("index", "index_put", "index_put_") and _bool_index(args):
                audit._sync(f"{name} with a bool mask")
            elif name in ("index", "index_put", "index_put_") and _host_index(audit, args):
                audit._sync(f"{name} with host indices")  # copied to the device, blocking
            elif name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) > 1 \
                    and isinstance(args[1], torch.Tensor):
                audit._sync("repeat_interleave")
        if not (func.is_view or name in _NO_KERNEL):
            audit.ops += 1
            audit.op_names[name] += 1
        result = func(*args, **kwargs)
        if on_device:
            audit.mark(_tensors(result))
        return result


def _host_index(audit: "OpAudit", args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dim() > 0 and not audit.on_device(i) for i in (indices or ()))


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


class OpAudit:
    """Context manager: ``ops``, ``syncs``, ``uploads`` and where the syncs come from.

    ``with OpAudit(model.parameters(), model.buffers(), inputs) as audit: step()``, then
    ``audit.ops``, ``audit.syncs``, ``audit.sync_sites`` (``Counter`` of ``"path:line function
    (kind)"``), ``audit.op_names``. The arguments are the tensors that live on the device (any
    nesting of lists, tuples and dicts of tensors).
    """

    def __init__(self, *device_tensors: Iterable):
        self.ops = self.syncs = self.uploads = 0
        self.sync_sites: collections.Counter = collections.Counter()
        self.op_names: collections.Counter = collections.Counter()
        self._device = WeakTensorKeyDictionary()
        self._quiet_depth = 0
        for tree in device_tensors:
            self.mark(_tensors(list(tree) if not isinstance(tree, (torch.Tensor, dict)) else tree))

    def mark(self, tensors) -> None:
        for t in tensors:
            self._device[t] = True

    def on_device(self, t: torch.Tensor) -> bool:
        return t in self._device

    def _sync(self, kind: str) -> None:
        if not self._quiet_depth:
            self.syncs += 1
            self.sync_sites[f"{_caller()} ({kind})"] += 1

    def _upload(self) -> None:
        if not self._quiet_depth:
            self.uploads += 1

    @contextlib.contextmanager
    def _quiet(self):
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1

    def __enter__(self) -> "OpAudit":
        self._modes = (_Functions(self), _Dispatch(self))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def report(self, top: int = 15) -> str:
        """Totals, then the ``top`` sync sites and operators."""
        lines = [f"{self.ops} operators dispatched, {self.syncs} host synchronisations, {self.uploads} asynchronous uploads"]
        lines += [f"  sync x{n}: {site}" for site, n in self.sync_sites.most_common(top)]
        lines += [f"  op x{n}: {name}" for name, n in self.op_names.most_common(top)]
        return "\n".join(lines)
