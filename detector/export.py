"""ONNX export: the trained detector as one graph that runs outside this repository.

The graph (:class:`DetectionGraph`) holds the backbone, the decoder and the post-processing at one
query size ``S``. Its inputs are preprocessed the way :class:`detector.inference.OneShotDetector`
preprocesses (README, "Export"):

* ``query [B, 3, S, S]`` float32: the RGB query image resized so that its longer side is ``S``
  (aspect kept), values in [0, 1], top-left in the tensor, the rest padding (any value);
* ``query_hw [B, 2]`` int64: ``(height, width)`` of the resized image inside the tensor;
* ``support [B, 3, T, T]`` float32, ``T = model.support_size``: the exemplar crop (its box enlarged by
  ``data.support_margin`` per side) resized to longer side ``T``, top-left, the rest padding;
* ``support_hw [B, 2]`` int64: its ``(height, width)``.

Outputs, best first: ``boxes [B, K, 4]`` (xyxy, pixels of the resized query image, i.e. of
``query_hw``), ``scores [B, K]`` in [0, 1], ``num_detections [B]`` int64; entries past
``num_detections`` are zero. ``K = min(model.num_queries, eval.max_detections)``. The NMS of the
detections (``eval.nms_iou``) and the model's proposal NMS (``model.proposal_nms``) are inside, as
ONNX ``NonMaxSuppression`` nodes (:mod:`detector.models.nms`). The batch size is dynamic; ``S`` is
fixed at export time (a multiple of 32 that gives at least ``num_queries`` proposals). Models with
the ``box`` or ``pad`` support layout export (the ``resize`` layout resizes each image in a Python
loop that a trace cannot keep).

:func:`export_onnx` writes the graph only after :func:`check_onnx` found onnxruntime's answers within
a tolerance of PyTorch's (:class:`~detector.models.postprocess.PostProcess` on the same tensors).
"""
from __future__ import annotations

import copy
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .errors import InputError, RunError
from .models.nms import nms_mask
from .structures import ImageBatch
from .utils.atomic import atomic_path
from .utils.box_ops import box_cxcywh_to_xyxy, scale_boxes

INPUTS = ("query", "query_hw", "support", "support_hw")
OUTPUTS = ("boxes", "scores", "num_detections")


class ExportMismatchError(RunError):
    """onnxruntime's detections differ from PyTorch's by more than the tolerance: nothing is written."""


def pixel_mask(images: Tensor, sizes_hw: Tensor) -> Tensor:
    """``images [B, 3, H, W]``, ``sizes_hw [B, 2]`` -> ``[B, H, W]`` bool, True outside each
    top-left ``(h, w)`` image (the :class:`~detector.structures.ImageBatch` mask)."""
    rows = torch.arange(images.shape[2], device=images.device)[None, :, None] >= sizes_hw[:, 0, None, None]
    cols = torch.arange(images.shape[3], device=images.device)[None, None, :] >= sizes_hw[:, 1, None, None]
    return rows | cols


def padded_detections(outputs: dict, sizes_hw: Tensor, num_select: int, nms_iou: float) -> tuple[Tensor, Tensor, Tensor]:
    """:class:`~detector.models.postprocess.PostProcess` for a whole batch at once, in fixed-size
    tensors: ``boxes [B, K, 4]`` (xyxy pixels of ``sizes_hw``, clipped), ``scores [B, K]`` (best
    first, NMS survivors only), ``num_detections [B]``; entries past ``num_detections`` are zero."""
    scores = outputs["pred_logits"][..., 0].float().sigmoid()
    boxes = scale_boxes(box_cxcywh_to_xyxy(outputs["pred_boxes"].float()), sizes_hw)
    limits = sizes_hw.flip(-1).repeat(1, 2).to(boxes.dtype)[:, None, :]  # (w, h, w, h)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    keep = nms_mask(boxes, scores, nms_iou) if nms_iou > 0 else torch.ones_like(scores, dtype=torch.bool)
    k = min(num_select, scores.shape[1])
    ranked = torch.where(keep, scores, torch.full_like(scores, -1.0))  # suppressed below every score
    top_scores, order = ranked.topk(k, dim=1)
    num = keep.sum(dim=1).clamp(max=k)
    valid = torch.arange(k, device=scores.device)[None, :] < num[:, None]
    top_boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
    return top_boxes * valid[..., None], top_scores * valid, num


class DetectionGraph(nn.Module):
    """The exported computation (module docstring): ``forward(query, query_hw, support,
    support_hw) -> (boxes, scores, num_detections)``.

    Args:
        model: a trained :class:`~detector.models.detector.OneShotDETR` (a private copy is switched
            to the reference attention kernels, which compute the same values with plain ops).
        num_select: detections kept per image (``eval.max_detections``).
        nms_iou: IoU of the NMS of the detections (``eval.nms_iou``; 0: none).
    """

    def __init__(self, model: nn.Module, num_select: int, nms_iou: float):
        super().__init__()
        self.model = exportable_copy(model)
        self.num_select = int(num_select)
        self.nms_iou = float(nms_iou)

    def forward(self, query: Tensor, query_hw: Tensor, support: Tensor, support_hw: Tensor):
        q = ImageBatch(query, pixel_mask(query, query_hw), query_hw)
        s = ImageBatch(support, pixel_mask(support, support_hw), support_hw)
        return padded_detections(self.model(q, s), query_hw, self.num_select, self.nms_iou)


def exportable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose cross steps use the ``reference`` kernel and whose box
    biases run their MLPs as plain layers (the ``fused`` path's custom autograd function and
    activation recomputation do not trace; the values are the same up to float rounding)."""
    from .models.relative_bias import BoxRelativePositionBias
    from .models.transformer import DecoderLayer

    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, DecoderLayer):
            m.cross_attn.impl = "reference"
        if isinstance(m, BoxRelativePositionBias):
            m.recompute_hidden = False
    return model


def check_size(model: nn.Module, size: int) -> None:
    """:class:`InputError` unless the model can be exported (every support layout but ``resize``,
    whose per-image resize the trace would fix to the example's sizes) and ``size`` is a query size
    the graph can be built for."""
    if getattr(model, "support_layout", None) == "resize" and model.fusion_encoder is None:
        raise InputError("ONNX export supports the 'box' and 'pad' support layouts (configs/synthetic.yaml, "
                         "configs/coco.yaml); this checkpoint uses model.support_layout=resize")
    stride = 32  # ImageBatch pads query images to multiples of 32
    if size < stride or size % stride:
        raise InputError(f"--size {size}: the query size must be a positive multiple of {stride}")
    cells = (size // model.backbone.stride) ** 2
    proposals = cells * len(model.proposal_sizes)
    if model.two_stage and proposals < model.num_queries:
        raise InputError(f"--size {size}: {proposals} proposals for {model.num_queries} object queries; "
                         f"use a larger size")


def torch_detections(model: nn.Module, postprocessor, inputs: dict) -> list[dict]:
    """PyTorch's detections on graph inputs (numpy arrays): the model and its ``PostProcess``."""
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    q = ImageBatch(t["query"], pixel_mask(t["query"], t["query_hw"]), t["query_hw"])
    s = ImageBatch(t["support"], pixel_mask(t["support"], t["support_hw"]), t["support_hw"])
    with torch.no_grad():
        return postprocessor(model.eval()(q, s), t["query_hw"])


def compare(ort_outputs: Sequence[np.ndarray], reference: list[dict]) -> dict:
    """onnxruntime's ``(boxes, scores, num_detections)`` against PyTorch's per-image detections:
    ``{"pairs", "max_score_diff", "max_box_diff" (pixels), "count_mismatches"}``."""
    boxes, scores, num = ort_outputs
    score_diff = box_diff = 0.0
    mismatches = 0
    for i, r in enumerate(reference):
        n = min(len(r["scores"]), scores.shape[1])
        if int(num[i]) != n:
            mismatches += 1
            continue
        if n:
            score_diff = max(score_diff, float(np.abs(scores[i, :n] - r["scores"][:n].numpy()).max()))
            box_diff = max(box_diff, float(np.abs(boxes[i, :n] - r["boxes"][:n].numpy()).max()))
    return {"pairs": len(reference), "max_score_diff": score_diff, "max_box_diff": box_diff,
            "count_mismatches": mismatches}


def check_onnx(path: str, model: nn.Module, postprocessor, batches: Sequence[dict], tolerance: float = 1e-3,
               threads: int = 1) -> dict:
    """Run the graph at ``path`` with onnxruntime on ``batches`` (dicts of numpy inputs) and compare
    with PyTorch (:func:`compare`, pooled over the batches; ``ok`` when every count agrees and
    every difference is within ``tolerance``)."""
    session = ort_session(path, threads)
    totals = {"pairs": 0, "max_score_diff": 0.0, "max_box_diff": 0.0, "count_mismatches": 0}
    for inputs in batches:
        got = compare(session.run(list(OUTPUTS), inputs), torch_detections(model, postprocessor, inputs))
        totals["pairs"] += got["pairs"]
        totals["count_mismatches"] += got["count_mismatches"]
        for key in ("max_score_diff", "max_box_diff"):
            totals[key] = max(totals[key], got[key])
    totals["tolerance"] = tolerance
    totals["ok"] = (totals["count_mismatches"] == 0 and totals["max_score_diff"] <= tolerance
                    and totals["max_box_diff"] <= tolerance)
    return totals


def ort_session(path: str, threads: int = 1):
    """An onnxruntime CPU session of ``path`` (``threads`` intra-op threads)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("checking the export needs onnxruntime: pip install 'indirect-attention-oneshot[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, postprocessor, path: str, size: int, support_size: int,
                check_batches: Sequence[dict], tolerance: float = 1e-3, opset: int = 17, threads: int = 1) -> dict:
    """Export ``model`` (+ ``postprocessor``'s settings) at query size ``size`` to ``path``.

    The graph is traced with a batch of 2 (dynamic batch axis), written to a temporary file next to
    ``path`` (:func:`detector.utils.atomic.atomic_path`), run with onnxruntime on ``check_batches``
    and compared with PyTorch; it replaces ``path`` only when they agree within ``tolerance``
    (:class:`ExportMismatchError` otherwise, and nothing is left behind).
    Returns the agreement report of :func:`check_onnx`.
    """
    check_size(model, size)
    graph = DetectionGraph(model, postprocessor.num_select, postprocessor.nms_iou)
    example = random_inputs(2, size, support_size, np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[name]) for name in INPUTS)
    with atomic_path(path) as tmp:  # replaces path only when the block finishes
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes that are fixed in the graph
            torch.onnx.export(graph, args, tmp, dynamo=False, opset_version=opset, input_names=list(INPUTS),
                              output_names=list(OUTPUTS), dynamic_axes={n: {0: "batch"} for n in INPUTS + OUTPUTS})
        report = check_onnx(tmp, model, postprocessor, check_batches, tolerance, threads)
        if not report["ok"]:
            raise ExportMismatchError(
                f"onnxruntime disagrees with PyTorch on {report['pairs']} pairs (max score difference "
                f"{report['max_score_diff']:.2e}, max box difference {report['max_box_diff']:.2e} px, "
                f"{report['count_mismatches']} detection counts differ; tolerance {tolerance:g}): nothing written")
    return report


def pack_inputs(queries: Sequence[Tensor], supports: Sequence[Tensor], size: int, support_size: int) -> dict:
    """Graph inputs (numpy) from preprocessed images: ``queries`` ``[3, h, w]`` with longer side
    ``size``, ``supports`` ``[3, hs, ws]`` with longer side ``support_size`` (as the data pipeline
    and :class:`~detector.inference.OneShotDetector` make them), each placed top-left in a zero
    square."""
    def pack(images, side):
        out = np.zeros((len(images), 3, side, side), np.float32)
        hw = np.zeros((len(images), 2), np.int64)
        for i, im in enumerate(images):
            h, w = im.shape[-2:]
            if max(h, w) > side:
                raise InputError(f"an image of {h}x{w} pixels does not fit the graph's {side}x{side} input")
            out[i, :, :h, :w] = im.numpy() if torch.is_tensor(im) else im
            hw[i] = (h, w)
        return out, hw

    query, query_hw = pack(queries, size)
    support, support_hw = pack(supports, support_size)
    return {"query": query, "query_hw": query_hw, "support": support, "support_hw": support_hw}


def random_inputs(batch: int, size: int, support_size: int, rng: np.random.Generator,
                  min_side: Optional[float] = 0.5) -> dict:
    """Random graph inputs: noise images whose shorter side is ``min_side`` to 1 times the longer."""
    def sides(side):
        short = int(rng.integers(max(1, int(min_side * side)), side + 1))
        return (side, short) if rng.random() < 0.5 else (short, side)

    queries = [torch.from_numpy(rng.random((3, *sides(size)), dtype=np.float32)) for _ in range(batch)]
    supports = [torch.from_numpy(rng.random((3, *sides(support_size)), dtype=np.float32)) for _ in range(batch)]
    return pack_inputs(queries, supports, size, support_size)


def dataset_batches(cfg, split: str, pairs: int, size: int, batch: int = 4) -> list[dict]:
    """Graph inputs of the first ``pairs`` items (query image, run-0 exemplar) of the evaluation
    split ``split`` of ``cfg``'s data, the query resized to longer side ``size``, in batches."""
    from .data import build_eval_dataset

    cfg = copy.deepcopy(cfg)
    cfg.data.eval_size = int(size)
    cfg.eval.shots = 1
    dataset, _ = build_eval_dataset(cfg, split)
    items = [dataset[i] for i in range(min(pairs, len(dataset)))]
    return [pack_inputs([it["query_image"] for it in items[i:i + batch]],
                        [it["support_image"] for it in items[i:i + batch]], size, cfg.model.support_size)
            for i in range(0, len(items), batch)]
