"""Typed configuration: dataclass defaults are the single source of defaults.

YAML files in ``configs/`` hold only what differs from these defaults (``_base_`` names another
YAML file to start from, relative to the file). Command-line overrides are dotted
``section.key=value`` strings whose values are parsed as YAML. Unknown keys raise a ``ConfigError``
that names the key and the file it came from.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import yaml

from .errors import ConfigError


# The allowed values of the model's choices, in one place: ``validate`` checks configs against
# them and the modules that implement each choice (``detector/models``) check their arguments.
ATTENTIONS = ("indirect", "misaligned", "double_cross")  # model.attention: detector/models/cross_inputs.py
SUPPORT_LAYOUTS = ("box", "pad", "resize")  # model.support_layout: detector/models/support_layout.py
QUERY_CONTENTS = ("learned", "proposal")  # model.query_content
ATTENTION_IMPLS = ("reference", "fused", "auto")  # model.attention_impl: detector/models/indirect_attention.py
SHOT_KEYS = ("mean", "joint")  # model.shot_keys: detector/models/kshot.py
SHOT_CORRELATIONS = ("mean", "max")  # model.shot_correlation: detector/models/kshot.py
PASTED_SCENES = ("counting", "crowd")  # data.pasted_scenes: detector/data/pasted.py
SYNTHETIC_TRAIN_COLOURS = ("instance", "image")  # data.synthetic_train_colours: detector/data/synthetic.py


@dataclass
class BackboneConfig:
    name: str = "mobilenetv2_100"  # timm model name (features_only)
    pretrained: str = "offline"  # "none" | "offline" (weights shipped in a pip package) | "timm" (online) | path to a .pth
    sha256: str = ""  # expected sha256 of a local weights file given as `pretrained`; checked when set
    output_stride: int = 16  # stride of the feature map used (16 in the paper)
    freeze: bool = False  # freeze all backbone weights (BatchNorm is always frozen)


@dataclass
class ModelConfig:
    """The model. The defaults are the product's design (the exemplar laid into each object query's
    box, an attention sink, the box bias started as a box prior, distinct proposals, a per-cell
    exemplar correlation in the values) at the paper's sizes; ``configs/synthetic_paper.yaml`` keeps
    the keys the only way in, and the baselines change ``attention``."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    d_model: int = 256  # hidden width of the decoder
    num_heads: int = 8  # attention heads
    num_decoder_layers: int = 6  # decoder layers (6 in the paper)
    dim_feedforward: int = 2048  # FFN width
    dropout: float = 0.0  # dropout in the decoder (0 in the official code)
    attention: str = "indirect"  # cross step: "indirect" | "misaligned" | "double_cross"
    support_layout: str = "box"  # how support keys line up with query values: "box" (the exemplar laid into each object query's box) | "pad" (the official code: one corner) | "resize"
    attention_impl: str = "auto"  # indirect attention kernel: "fused" (exact, fast, lean; docs/PERFORMANCE.md) | "reference" (materialised bias) | "auto" (fused, except reference for CUDA inference)
    bias_hidden_dim: int = 512  # hidden width of the per-axis box-bias MLPs
    bias_box_prior: float = 32.0  # box bias starts as -strength * distance outside the box, still learned (0: starts at zero, as the official code)
    attention_sink: bool = True  # a learned null key/value per head in the cross step, so the keys' match level survives the softmax
    query_content: str = "learned"  # object-query content: "learned" | "proposal" (+ the query-image feature of its proposal's cell)
    num_queries: int = 300  # one-to-one object queries (used at evaluation)
    num_queries_one2many: int = 0  # extra one-to-many object queries for hybrid matching (training only)
    two_stage: bool = True  # initial reference boxes from the top-k proposals on the query map
    proposal_sizes: tuple = (0.05, 0.1, 0.2, 0.4)  # anchor sides (normalised) at each query-map cell for the proposals
    proposal_nms: float = 0.7  # IoU of a class-agnostic NMS over the proposals before the top-k (DDQ; 0: off, plain top-k)
    proposal_conditioning: bool = False  # proposals see the support too (then the cross step barely matters)
    support_conditioning: bool = False  # add the pooled support embedding to object queries and a similarity logit (a side path; it cost AP)
    correlation_channels: int = 32  # per-cell exemplar correlation channels added to the values (0: off, the keys the only way in)
    correlation_dropout: float = 0.25  # training: share of images whose side paths (correlation, similarity, light fusion) are left out, so the keys must learn too
    fusion_layers: int = 0  # indirect / misaligned: layers of a light fusion step (query features attend to the exemplar before the decoder; the keys stay the exemplar's); 0: off
    exemplar_similarity: bool = False  # parameter-free cosine maps of frozen features (query vs exemplar) read into the values and proposals
    pixel_similarity: bool = False  # parameter-free normalised cross-correlation of pixels (exemplar as a template, 4 scales) read into the values and proposals
    shot_keys: str = "mean"  # several exemplars: keys of their mean ("mean") or of all k in one softmax ("joint"); docs/RESULTS.md section 5
    shot_correlation: str = "mean"  # several exemplars: correlation = mean of each one's best match ("mean") or the best over all k ("max")
    look_forward_twice: bool = True  # box loss of layer l also trains layer l-1's refinement (DINO)
    support_size: int = 128  # side of the square support crop in pixels


@dataclass
class LossConfig:
    class_weight: float = 2.0  # focal loss weight
    bbox_weight: float = 5.0  # L1 box loss weight
    giou_weight: float = 2.0  # GIoU loss weight
    focal_alpha: float = 0.25  # focal loss alpha
    focal_gamma: float = 2.0  # focal loss gamma
    match_class_weight: float = 2.0  # matcher cost weights
    match_bbox_weight: float = 5.0
    match_giou_weight: float = 2.0
    one2many_repeat: int = 6  # k: how many times targets are repeated for the one-to-many queries
    one2many_weight: float = 1.0  # weight of the one-to-many loss
    aux_loss: bool = True  # losses on every decoder layer and on the proposals


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # "synthetic" | "pasted" (stage 1 on real photos) | "coco" | "voc" | "custom"
    root: str = "datasets/synthetic_small"  # data root (folder with images/ and annotation files)
    train_annotations: str = "annotations/train.json"  # relative to root unless absolute
    train_images: str = "images/train"  # relative to root unless absolute
    val_annotations: str = "annotations/val.json"
    val_images: str = "images/val"
    test_annotations: str = "annotations/test.json"  # held-out set for reported numbers (eval.split=test)
    test_images: str = "images/test"
    split: int = 1  # COCO split 1-4 (ignored by other datasets)
    split_file: str = ""  # custom seen/unseen split file (names or ids), for dataset "custom"
    synthetic_size: str = "small"  # synthetic benchmark size: "tiny" | "small" | "full"
    pasted_size: str = "small"  # pasted-patch set size (dataset "pasted", detector/data/pasted.py): "tiny" | "small"
    pasted_scenes: str = "counting"  # its crowded images: "counting" (8-16 copies apart) | "crowd" (12-32 touching copies)
    query_min_size: tuple = (400, 544)  # training: shorter side drawn from this range ...
    query_max_size: int = 512  # ... and the longer side capped at this
    eval_size: int = 512  # evaluation: longer side resized to this
    support_margin: float = 0.1  # context added around the exemplar box (fraction of its size)
    min_exemplar_area: float = 32.0 * 32.0  # exemplar instances smaller than this (pixels^2) are not used
    class_balanced: bool = False  # weight the training class choice by inverse instance frequency (CoAE)
    augment: bool = True  # training augmentations
    exemplar_file: str = ""  # optional user-supplied evaluation exemplar list (JSON)
    num_workers: int = 2  # data loader workers
    train_cache_mb: float = 0.0  # decoded training images kept in memory between epochs (per process; 0: none)
    synthetic_seed: int = 0  # generation seed of the synthetic benchmark (part of its identity in meta.json)
    synthetic_train_colours: str = "instance"  # "instance" | "image": a training image's instances of a category share colours
    same_image_share: float = 0.0  # share of training items whose exemplar is an instance in the query image itself
    train_shots: int = 1  # exemplars per training item (k-shot training; 1: one-shot)
    train_single_share: float = 0.5  # with train_shots > 1: share of items given one exemplar train_shots times
    replay_config: str = ""  # a config whose training set is replayed during this training (e.g. stage 1's)
    replay_share: float = 0.0  # share of training items drawn from the replay_config's training set


@dataclass
class TrainConfig:
    output_dir: str = "outputs/run"  # output folder of the run
    epochs: int = 14  # training epochs
    max_iters: int = 0  # stop after this many iterations if > 0
    batch_size: int = 2  # images per process
    lr: float = 2e-4  # AdamW learning rate (decoder and heads)
    lr_backbone: float = 2e-5  # AdamW learning rate of the backbone
    weight_decay: float = 0.05
    warmup_iters: int = 1000  # linear warm-up
    lr_schedule: str = "step"  # "step" | "cosine" | "constant"
    lr_drop_epochs: tuple = (11,)  # epochs after which lr is multiplied by 0.1 (step schedule)
    clip_max_norm: float = 0.1  # gradient clipping (0 disables)
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); always off on the CPU
    compile: bool = False  # torch.compile the model for training (fewer, fused kernels; compiles for a minute or two first)
    seed: int = 42
    log_every: int = 20  # iterations between metric lines
    eval_every: int = 1  # epochs between evaluations (0: only at the end)
    checkpoint_every: int = 1  # epochs between checkpoints
    keep_checkpoints: int = 2  # keep the last K checkpoints
    stage: str = "oneshot"  # "oneshot" | "pretrain" (random patches of seen-class images as exemplars)
    cache_features: bool = False  # frozen backbone only: compute each image's body features once and reuse them
    checkpoint_every_iters: int = 0  # also write a checkpoint every this many iterations if > 0
    time_budget_min: float = 0.0  # stop training after this many minutes of wall time if > 0 (not resume-exact)
    eval_runs: int = 0  # evaluation runs during training (0: eval.runs); the final evaluation uses eval.runs
    init_checkpoint: str = ""  # start from these model weights (e.g. the stage-1 pretraining run)
    num_threads: int = 0  # torch CPU threads (0: torch's default; 1 is faster on a busy machine)
    tensorboard: bool = False  # also write TensorBoard scalars to <output_dir>/tensorboard (needs the tensorboard package)


@dataclass
class EvalConfig:
    split: str = "val"  # set of the final evaluation: "val" (choose settings on it) | "test" (held out, report it)
    runs: int = 5  # evaluation runs, each with its own exemplar per item (BHRL: 5)
    batch_size: int = 4
    absent_class: bool = False  # also run the "absent class" protocol (reported separately)
    max_detections: int = 100  # detections kept per item
    nms_iou: float = 0.0  # class-agnostic NMS of each item's detections at this IoU (0: off, as DETR)
    absent_per_image: int = 1  # "absent class" protocol: absent categories queried per image
    shots: int = 1  # exemplars per item (k-shot; shot 0 is the one-shot exemplar, the others come from other images)


RESCALE_MODES = ("auto", "fit", "exemplar", "native")  # infer.rescale
MIN_INFER_SIZE = 32  # the smallest working resolution: a few cells of the backbone's stride-16 map
DEFAULT_MAX_PIXELS = 64_000_000  # inference refuses larger images before decoding: the largest camera photos (61 MP), not a 144 MP scan

# Each per-call inference option's range, written once: validate, InferOptions.check, tools/infer.py
# and the server's form ask infer_option_ok, each in its own words. Lower bounds from _MINIMA (below).
_INFER_RULES = {
    "size": lambda v: v == 0 or v >= MIN_INFER_SIZE,  # pixels; 0: data.eval_size
    "rescale": lambda v: v in RESCALE_MODES,
    "object_size": lambda v: v >= _MINIMA["infer.object_size"],  # pixels; 0: not known
    "tile_overlap": lambda v: 0 <= v < 1,  # a fraction of the tile side (tiles that overlap entirely never advance)
    "max_detections": lambda v: v >= _MINIMA["infer.max_detections"],
}


def infer_option_ok(name: str, value: Any) -> bool:
    """Whether ``value`` is in the range of inference option ``name`` (a key of ``_INFER_RULES``);
    the caller checks its type (int: size, max_detections; finite number: the other numbers)."""
    return bool(_INFER_RULES[name](value))


@dataclass
class InferConfig:
    size: int = 0  # working resolution: the resized query's longer side ("fit") or the tile side; 0: data.eval_size
    rescale: str = "auto"  # query scale: "auto" ("exemplar" when every exemplar has a box and object_size is known, else "fit") | "fit" (longer side -> size) | "exemplar" (exemplar side -> object_size) | "native" (own pixels)
    object_size: float = 0.0  # object side sqrt(w*h) the model was trained on, in model-input pixels ("exemplar"; 0: not known)
    tile_overlap: float = 0.25  # overlap of neighbouring tiles, a fraction of the tile side, in [0, 1)
    max_detections: int = 1000  # detections kept per query image after the tiles are merged
    tile_batch: int = 8  # tiles per forward pass
    merge_iou: float = 0.5  # class-agnostic NMS across tiles after the ownership rule (0: off); single tiles get none
    self_exemplars: int = 0  # a second pass with the first pass's k best detections of each query as further exemplars (k-shot from the query; 0: off)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    infer: InferConfig = field(default_factory=InferConfig)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check ``value`` against the type of ``default`` (ints are accepted for floats, lists for
    tuples)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-4" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    return value


def _merge(obj: Any, updates: dict, source: str, prefix: str = "") -> None:
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}: section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {updates!r}")
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown config key '{path}' (valid keys here: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, source, prefix=f"{path}.")
        else:
            setattr(obj, key, _coerce(value, current, f"{source}: '{path}'"))


def _read_yaml(path: str, seen: tuple = ()) -> list[tuple[str, dict]]:
    """The chain of (path, mapping) from the outermost ``_base_`` to ``path``."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: circular _base_ chain")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML text file (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    chain: list[tuple[str, dict]] = []
    base = data.pop("_base_", None)
    if base is not None:
        chain.extend(_read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,)))
    chain.append((path, data))
    return chain


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.d_model=128"`` -> ``(["model", "d_model"], 128)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = str(getattr(e, "problem", "") or "").strip() or type(e).__name__
        raise ConfigError(f"override '{text}': the value is not valid YAML ({problem}); quote it") from None
    return key.strip().split("."), value


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML chain of ``path``, then the dotted ``overrides``."""
    cfg = Config()
    if path:
        for source, data in _read_yaml(path):
            _merge(cfg, data, source)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply dotted ``key=value`` overrides to ``cfg`` in place, validate, and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, f"override '{text}'")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a type check cannot express."""
    m = cfg.model
    choices = {
        "model.attention": (m.attention, ATTENTIONS),
        "model.support_layout": (m.support_layout, SUPPORT_LAYOUTS),
        "model.query_content": (m.query_content, QUERY_CONTENTS),
        "model.attention_impl": (m.attention_impl, ATTENTION_IMPLS),
        "model.shot_keys": (m.shot_keys, SHOT_KEYS),
        "model.shot_correlation": (m.shot_correlation, SHOT_CORRELATIONS),
        "train.lr_schedule": (cfg.train.lr_schedule, ("step", "cosine", "constant")),
        "train.stage": (cfg.train.stage, ("oneshot", "pretrain")),
        "eval.split": (cfg.eval.split, ("val", "test")),
        "data.dataset": (cfg.data.dataset, ("synthetic", "pasted", "coco", "voc", "custom")),
        "data.pasted_scenes": (cfg.data.pasted_scenes, PASTED_SCENES),
        "data.synthetic_train_colours": (cfg.data.synthetic_train_colours, SYNTHETIC_TRAIN_COLOURS),
        "infer.rescale": (cfg.infer.rescale, RESCALE_MODES),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {allowed}")
    if m.d_model % m.num_heads != 0:
        raise ConfigError(f"model.d_model={m.d_model} must be divisible by model.num_heads={m.num_heads}")
    if m.attention == "double_cross" and m.fusion_layers:
        raise ConfigError("model.fusion_layers is for the indirect and misaligned cross steps; double_cross has its "
                          "own fusion encoder of model.num_decoder_layers layers")
    if m.query_content == "proposal" and not m.two_stage:
        raise ConfigError("model.query_content=proposal needs model.two_stage=true (the proposals give the content)")
    if m.num_queries < 1 or m.num_decoder_layers < 1:
        raise ConfigError("model.num_queries and model.num_decoder_layers must be >= 1")
    if not 0.0 <= cfg.data.replay_share <= 1.0:
        raise ConfigError(f"data.replay_share={cfg.data.replay_share!r} must be in [0, 1]")
    if cfg.data.replay_share > 0 and not cfg.data.replay_config:
        raise ConfigError("data.replay_share > 0 needs data.replay_config (the config of the replayed training set)")
    if not 0.0 <= cfg.data.same_image_share <= 1.0:
        raise ConfigError(f"data.same_image_share={cfg.data.same_image_share!r} must be in [0, 1]")
    if not 0.0 <= cfg.data.train_single_share <= 1.0:
        raise ConfigError(f"data.train_single_share={cfg.data.train_single_share!r} must be in [0, 1]")
    if not 0.0 <= m.correlation_dropout < 1.0:
        raise ConfigError(f"model.correlation_dropout={m.correlation_dropout!r} must be in [0, 1)")
    if cfg.infer.size > 0 and not infer_option_ok("size", cfg.infer.size):  # a negative size: _MINIMA's message
        raise ConfigError(f"infer.size={cfg.infer.size!r} must be 0 (data.eval_size) or >= {MIN_INFER_SIZE} pixels")
    if not 0 <= cfg.infer.self_exemplars <= 16:
        raise ConfigError(f"infer.self_exemplars={cfg.infer.self_exemplars!r} must be in [0, 16]")
    if not infer_option_ok("tile_overlap", cfg.infer.tile_overlap):
        raise ConfigError(f"infer.tile_overlap={cfg.infer.tile_overlap!r} must be in [0, 1) (a fraction of the tile side)")
    for key, iou in (("model.proposal_nms", m.proposal_nms), ("eval.nms_iou", cfg.eval.nms_iou),
                     ("infer.merge_iou", cfg.infer.merge_iou)):
        if not 0.0 <= iou <= 1.0:
            raise ConfigError(f"{key}={iou!r} must be an IoU threshold in [0, 1] (0 = off)")
    _validate_ranges(cfg)
    _validate_model_sizes(cfg)


def _non_finite(x: Any, prefix: str) -> Optional[str]:
    """The dotted key of the first NaN or infinite number in a config section, or ``None``."""
    for f in dataclasses.fields(x):
        value, key = getattr(x, f.name), f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            found = _non_finite(value, key)
            if found:
                return found
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return key
    return None


def _validate_model_sizes(cfg: Config) -> None:
    """Finite numbers everywhere, and the sizes a typo turns into a traceback deep in the model."""
    for section in ("model", "loss", "data", "train", "eval", "infer"):
        key = _non_finite(getattr(cfg, section), section)
        if key:
            raise ConfigError(f"{key}: NaN or infinity is not a usable value; give a finite number")
    m, d = cfg.model, cfg.data
    bounds = {  # key: (value, smallest, largest)
        "model.d_model": (m.d_model, 1, 4096), "model.num_heads": (m.num_heads, 1, 256),
        "model.dim_feedforward": (m.dim_feedforward, 1, 65536), "model.bias_hidden_dim": (m.bias_hidden_dim, 1, 65536),
        "model.num_queries": (m.num_queries, 1, 5000), "model.num_queries_one2many": (m.num_queries_one2many, 0, 20000),
        "model.num_decoder_layers": (m.num_decoder_layers, 1, 64), "model.correlation_channels": (m.correlation_channels, 0, 1024),
        "model.fusion_layers": (m.fusion_layers, 0, 64),
        "model.support_size": (m.support_size, 16, 4096), "data.eval_size": (d.eval_size, MIN_INFER_SIZE, 8192),
        "data.query_max_size": (d.query_max_size, MIN_INFER_SIZE, 8192), "loss.one2many_repeat": (cfg.loss.one2many_repeat, 1, 100),
    }
    for key, (value, lo, hi) in bounds.items():
        if not lo <= value <= hi:
            raise ConfigError(f"{key}={value!r} must be in [{lo}, {hi}]")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout!r} must be in [0, 1)")
    if not m.proposal_sizes or not all(0.0 < s <= 1.0 for s in m.proposal_sizes):
        raise ConfigError(f"model.proposal_sizes={list(m.proposal_sizes)!r} must be one or more anchor sides in (0, 1]")
    if len(d.query_min_size) != 2 or not MIN_INFER_SIZE <= min(d.query_min_size) <= max(d.query_min_size):
        raise ConfigError(f"data.query_min_size={list(d.query_min_size)!r} must be a range [low, high] of sides >= {MIN_INFER_SIZE}")
    non_negative = {"model.bias_box_prior": m.bias_box_prior, "train.weight_decay": cfg.train.weight_decay,
                    "train.warmup_iters": cfg.train.warmup_iters, "train.clip_max_norm": cfg.train.clip_max_norm,
                    "data.support_margin": d.support_margin, "data.min_exemplar_area": d.min_exemplar_area,
                    "data.train_cache_mb": d.train_cache_mb, "loss.one2many_weight": cfg.loss.one2many_weight,
                    **{f"loss.{n}": getattr(cfg.loss, n) for n in ("class_weight", "bbox_weight", "giou_weight",
                                                                   "match_class_weight", "match_bbox_weight",
                                                                   "match_giou_weight", "focal_gamma")}}
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}={value!r} must be >= 0")
    if not 0.0 <= cfg.loss.focal_alpha <= 1.0:
        raise ConfigError(f"loss.focal_alpha={cfg.loss.focal_alpha!r} must be in [0, 1]")


# Lower bounds of the counts that a typo turns into a crash or a run that does nothing.
_MINIMA = {
    "train.batch_size": 1, "train.epochs": 1, "train.log_every": 1, "train.max_iters": 0,
    "train.keep_checkpoints": 0, "train.checkpoint_every": 0, "train.checkpoint_every_iters": 0,
    "train.eval_every": 0, "train.eval_runs": 0, "train.num_threads": 0, "train.time_budget_min": 0,
    "train.lr": 0, "train.lr_backbone": 0, "data.num_workers": 0,
    "eval.runs": 1, "eval.batch_size": 1, "eval.max_detections": 1, "eval.shots": 1,
    "data.train_shots": 1,
    "infer.size": 0, "infer.object_size": 0, "infer.max_detections": 1, "infer.tile_batch": 1,
}


def _validate_ranges(cfg: Config) -> None:
    for key, minimum in _MINIMA.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < minimum:
            raise ConfigError(f"{key}={value!r} must be >= {minimum}")


def to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-serialisable dict of a config (tuples become lists)."""

    def convert(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {f.name: convert(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [convert(v) for v in x]
        return x

    return convert(cfg)


def from_dict(data: dict, source: str = "checkpoint") -> Config:
    """Rebuild a ``Config`` from :func:`to_dict` output (as stored in checkpoints)."""
    cfg = Config()
    _merge(cfg, data, source)
    validate(cfg)
    return cfg
