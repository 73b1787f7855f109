"""One-shot data: splits, COCO-format datasets, exemplars, transforms and the synthetic benchmark.

The composition root is :func:`build_datasets`; the model side needs only
:func:`collate_oneshot` and the item dict documented in :mod:`detector.data.coco_oneshot`.
"""
from __future__ import annotations

import os
from typing import Optional

from ..errors import InputError
from ..utils.output_paths import check_output_path
from .coco_index import Annotation, CocoIndex, ImageRecord
from .coco_oneshot import EvalItem, OneShotDataset, OneShotEvalDataset, collate_oneshot, collate_supports
from .image_io import ImageReadError, read_image
from .mixed import MixedDataset
from .splits import Split, coco_split, custom_split, resolve_split, synthetic_split, voc_split
from .support import Exemplar, ExemplarPool, crop_support, read_exemplar_file
from .pasted import build_pasted, generate_pasted
from .synthetic import build_synthetic, generate_synthetic
from .transforms import QueryTransform, SupportTransform

__all__ = [
    "Annotation", "CocoIndex", "EvalItem", "Exemplar", "ExemplarPool", "ImageReadError", "ImageRecord", "MixedDataset",
    "OneShotDataset", "OneShotEvalDataset", "QueryTransform", "Split", "SupportTransform", "build_datasets",
    "build_eval_dataset",
    "build_pasted", "build_synthetic", "generate_pasted", "prepare_generated", "coco_split", "collate_oneshot", "collate_supports", "crop_support", "custom_split", "generate_synthetic",
    "read_exemplar_file", "read_image", "resolve_split", "synthetic_split", "under_root", "voc_split",
]


def under_root(root: str, path: str) -> str:
    """``path`` itself when absolute, else ``path`` inside ``root`` (how every ``data.*`` file and
    folder of the config is read: relative to ``data.root``)."""
    return path if os.path.isabs(path) else os.path.join(root, path)


def prepare_generated(cfg) -> None:
    """Generate the data of a generated ``cfg.data.dataset`` (synthetic, pasted) into
    ``cfg.data.root`` when it is not there yet; nothing for the others. :class:`InputError` before
    any is generated when ``data.root`` cannot be a folder written here."""
    d = cfg.data
    if d.dataset in ("synthetic", "pasted") and not os.path.isdir(d.root):
        check_output_path(d.root, "data.root")
    if d.dataset == "synthetic":
        build_synthetic(d.root, d.synthetic_size, d.synthetic_seed, workers=max(1, min(2, os.cpu_count() or 1)),
                        train_colours=d.synthetic_train_colours)
    elif d.dataset == "pasted":
        build_pasted(d.root, d.pasted_size, d.synthetic_seed, scenes=d.pasted_scenes)


def build_datasets(cfg) -> tuple[OneShotDataset, OneShotEvalDataset, dict]:
    """``(train_dataset, val_dataset, split_info)`` for ``cfg.data.dataset`` in
    synthetic / coco / voc / custom.

    * synthetic: the benchmark of ``cfg.data.synthetic_size`` is generated into ``cfg.data.root``
      first if it is not there (a minute for ``small``); pasted (stage 1 on real photos,
      :mod:`detector.data.pasted`) likewise, of ``cfg.data.pasted_size``.
    * The split comes from the training file's categories (:func:`resolve_split`); the validation
      file must have the same categories.
    * Training queries seen categories only (``cfg.train.seed`` seeds the sampling,
      ``cfg.train.stage="pretrain"`` uses random patches as exemplars); evaluation covers seen and
      unseen, with ``cfg.eval.absent_per_image`` "absent class" items per image when
      ``cfg.eval.absent_class`` is set.
    * ``cfg.data.replay_share > 0``: that share of the training items comes from the training set
      of ``cfg.data.replay_config`` (:class:`MixedDataset`; stage 1's set, so stage 2 keeps it).

    ``split_info``: see :meth:`Split.to_info` (``seen_ids``, ``unseen_ids``, names). The held-out
    test set is :func:`build_eval_dataset` ``(cfg, "test")``.
    """
    train, train_index, split = _train_dataset(cfg)
    if cfg.data.replay_share > 0:
        train = MixedDataset(train, _replay_dataset(cfg), cfg.data.replay_share, cfg.train.seed)
    return train, _eval_dataset(cfg, "val", train_index)[0], split.to_info()


def _replay_dataset(cfg) -> OneShotDataset:
    """The training set of ``cfg.data.replay_config`` (generated first when it is a generated set);
    its query sizes must be this config's, since both reach one model in one batch."""
    from ..config import load_config

    replay_cfg = load_config(cfg.data.replay_config)
    r, d = replay_cfg.data, cfg.data
    if (tuple(r.query_min_size), r.query_max_size) != (tuple(d.query_min_size), d.query_max_size):
        raise InputError(f"data.replay_config {cfg.data.replay_config}: its query sizes {list(r.query_min_size)}/"
                         f"{r.query_max_size} differ from this config's {list(d.query_min_size)}/{d.query_max_size}")
    return _train_dataset(replay_cfg)[0]


def _train_dataset(cfg) -> tuple[OneShotDataset, CocoIndex, Split]:
    """``(training set, its annotation index, split)`` of ``cfg.data`` (the set generated first)."""
    d = cfg.data
    prepare_generated(cfg)
    train_images = under_root(d.root, d.train_images)
    train_index = CocoIndex(under_root(d.root, d.train_annotations), train_images)
    split = resolve_split(d.dataset, train_index.categories, d.split, d.split_file)
    query_transform = QueryTransform(train=True, augment=d.augment, shorter_sides=tuple(d.query_min_size),
                                     max_size=d.query_max_size)
    train = OneShotDataset(train_index, train_images, split.seen_ids, support_size=cfg.model.support_size,
                           query_transform=query_transform, support_margin=d.support_margin,
                           min_exemplar_area=d.min_exemplar_area, augment_support=d.augment,
                           class_balanced=d.class_balanced, seed=cfg.train.seed, stage=cfg.train.stage,
                           cache_mb=d.train_cache_mb, shots=d.train_shots, single_share=d.train_single_share,
                           same_image_share=d.same_image_share)
    return train, train_index, split


def build_eval_dataset(cfg, split: str) -> tuple[OneShotEvalDataset, dict]:
    """``(dataset, split_info)``: the evaluation items of ``split``, ``"val"`` (``data.val_*``, for
    choosing settings) or ``"test"`` (``data.test_*``, held out: the synthetic benchmark's test
    split). The seen / unseen split is resolved from the file's categories, which must be the
    training file's (:func:`build_datasets` checks that for ``val``)."""
    prepare_generated(cfg)
    return _eval_dataset(cfg, split)


def _eval_dataset(cfg, split: str, train_index: Optional[CocoIndex] = None) -> tuple[OneShotEvalDataset, dict]:
    d = cfg.data
    if split not in ("val", "test"):
        raise InputError(f"evaluation split must be 'val' or 'test', got {split!r}")
    annotations, images = (d.val_annotations, d.val_images) if split == "val" else (d.test_annotations, d.test_images)
    index = CocoIndex(under_root(d.root, annotations), under_root(d.root, images))
    if train_index is not None and index.categories != train_index.categories:
        raise InputError(f"{train_index.path} and {index.path} have different categories; "
                         f"the split needs one category list")
    categories = resolve_split(d.dataset, index.categories, d.split, d.split_file)
    dataset = OneShotEvalDataset(index, under_root(d.root, images), categories.seen_ids + categories.unseen_ids,
                                 support_size=cfg.model.support_size, eval_size=d.eval_size,
                                 support_margin=d.support_margin, min_exemplar_area=d.min_exemplar_area,
                                 exemplar_file=d.exemplar_file,
                                 absent_per_image=cfg.eval.absent_per_image if cfg.eval.absent_class else 0,
                                 split_name=split, shots=cfg.eval.shots)
    return dataset, categories.to_info()
