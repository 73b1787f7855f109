"""The evaluation protocol wrapped for a model: ``predict`` callables and one evaluation call."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..config import Config
from ..features import FeatureCache
from ..models.postprocess import results_to_host
from ..utils.device import upload
from .step import amp_dtype, each_support


def make_predict(model: torch.nn.Module, postprocessor: Callable, device: torch.device,
                 cache: Optional[FeatureCache] = None, amp: Optional[torch.dtype] = None,
                 support_size: int = 32, record: Optional[list] = None,
                 path_supports: Optional[Callable] = None) -> Callable:
    """The ``predict(query, support, targets)`` callable of the evaluation protocol: boxes (xyxy,
    absolute pixels of the original image) and scores per item, from ``targets[i]["orig_size"]``.
    With a ``cache``, exemplar crops are encoded padded to ``support_size`` as the collate pads them.
    With ``record``, each item's ``(image_id, category_id, result)`` is appended to it. With
    ``path_supports(targets) -> {path: ImageBatch}``, those support paths of the model see other
    exemplars than the items' own (the support-path probe). ``support`` may be a list of ``k``
    batches (k-shot items), passed to the model as such."""

    @torch.no_grad()
    def predict(query, support, targets):
        model.eval()
        others = path_supports(targets) if path_supports is not None else {}
        if cache is not None:
            query, support = cache(query), each_support(support, lambda s: cache(s, support_size))
            others = {path: cache(batch, support_size) for path, batch in others.items()}
        sizes = upload(torch.stack([torch.as_tensor(t["orig_size"]) for t in targets]), device)
        others = {path: batch.to(device) for path, batch in others.items()}
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            outputs = model(query.to(device), each_support(support, lambda s: s.to(device)), path_supports=others or None)
        results = results_to_host(postprocessor(outputs, sizes))
        if record is not None:
            record.extend((int(t["image_id"]), int(t["category_id"]), r) for t, r in zip(targets, results))
        return results

    return predict


def run_evaluation(model, postprocessor, dataset, split_info, cfg: Config, device: torch.device, runs: int,
                   cache: Optional[FeatureCache] = None, record: Optional[list] = None, progress: bool = False,
                   path_supports: Optional[Callable] = None) -> dict:
    """The protocol (:func:`detector.evaluation.evaluate_oneshot`) on ``dataset`` with ``runs``
    exemplar runs (``dataset.shots`` exemplars per item); ``record`` collects the raw per-item
    detections and ``path_supports`` feeds support paths other exemplars (see :func:`make_predict`).
    The metrics name the evaluated set (``split``: ``val`` or ``test``) and record ``shots``."""
    from ..evaluation import evaluate_oneshot

    predict = make_predict(model, postprocessor, device, cache, amp_dtype(device, cfg.train.amp),
                           support_size=cfg.model.support_size, record=record, path_supports=path_supports)
    metrics = evaluate_oneshot(predict, dataset, runs=runs, seen_ids=split_info["seen_ids"],
                               unseen_ids=split_info["unseen_ids"], batch_size=cfg.eval.batch_size,
                               num_workers=cfg.data.num_workers, max_detections=cfg.eval.max_detections,
                               progress=progress)
    return {"split": getattr(dataset, "split_name", "val"), **metrics}


def run_oracle(dataset, split_info, cfg: Config) -> dict:
    """The class-agnostic oracle (:func:`detector.evaluation.oracle_predict`: every ground-truth box
    of the query image at score 1, whatever the exemplar) through the same protocol, runs and
    detection cap as :func:`run_evaluation`: the bound a one-shot detector must beat."""
    from ..evaluation import evaluate_oneshot, oracle_predict

    metrics = evaluate_oneshot(oracle_predict(dataset), dataset, runs=cfg.eval.runs, seen_ids=split_info["seen_ids"],
                               unseen_ids=split_info["unseen_ids"], batch_size=cfg.eval.batch_size,
                               max_detections=cfg.eval.max_detections)
    return {"split": getattr(dataset, "split_name", cfg.eval.split), **metrics}


def write_evaluation(metrics: dict, folder: str) -> tuple[str, str]:
    """``metrics.json`` and ``metrics.md`` (the markdown tables) in ``folder``; returns both paths."""
    from ..evaluation import format_metrics_table, write_evaluation_files

    return write_evaluation_files(metrics, folder, format_metrics_table(metrics))
