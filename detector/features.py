"""Feature caching for a frozen backbone: each distinct image's body features are computed once.

With ``model.backbone.freeze=true`` and deterministic transforms (``data.augment=false``), the same
query image or exemplar crop always reaches the model as the same pixels, so the backbone body's
output can be memoised by a hash of the pixels. Training then runs the projection and the decoder
only (``train.cache_features=true``). Each image is padded on its own (to a multiple of 32, as
:meth:`ImageBatch.from_tensors` pads query images; exemplar crops to the square ``support_size`` as
``collate_oneshot`` pads them), so a cached map does not depend on which images shared its batch.
By default each miss is encoded on its own, so a cached map is the same whichever images missed
with it, and a resumed run (whose cache starts empty) computes bitwise the maps the uninterrupted
run had; ``batch_pixels`` trades that for speed (see :class:`FeatureCache`). The cache encodes with
a copy of the body whose frozen BatchNorms are folded into the convolutions
(:meth:`Backbone.folded_body`): 0.69x the time per 256 px image on MobileNetV2, equal to the
model's own body within float rounding.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Optional

import torch

from .models.backbone import Backbone, FeatureBatch
from .structures import ImageBatch, padded_size
from .utils.device import upload


class FeatureCache:
    """Memoised backbone-body features keyed by image content.

    Args:
        backbone: the (frozen) backbone whose ``body_features`` are cached.
        max_items: stop adding entries beyond this many (a warning says so once); guards memory when
            transforms turn out not to be deterministic.
        dtype: storage dtype of the cached maps (float32 keeps training exact).
        max_bytes: stop adding beyond this many bytes of maps (0: no limit). Default: a quarter of
            the GPU's memory when the backbone is on CUDA (the maps stay there), no limit on the CPU.
        batch_pixels: 0 (default): every miss is encoded on its own, so a cached map is bitwise
            what the model computes for that image alone, whatever else missed with it; training
            then resumes bitwise exactly although the resumed run's cache starts empty. > 0: the
            misses of one padded shape are encoded in batches of at most this many pixels (at least
            one image): faster (measured with MobileNetV2 on 2 CPU threads: 4 images of 256x256 or
            16 of 128x128 per batch encode 20-60% faster per image), but a map then differs in float
            rounding with the batch it was computed in.
        keep_pixels: the :class:`FeatureBatch` it returns carries the images' pixels as well (a
            model with ``model.pixel_similarity`` compares them); they are not cached, only passed on.
    """

    def __init__(self, backbone: Backbone, max_items: int = 200_000, dtype: torch.dtype = torch.float32,
                 batch_pixels: int = 0, max_bytes: Optional[int] = None, keep_pixels: bool = False):
        if any(p.requires_grad for p in backbone.body.parameters()):
            raise ValueError("feature caching needs a frozen backbone body (model.backbone.freeze=true)")
        self.backbone = backbone
        self.max_items = max_items
        self.dtype = dtype
        self.batch_pixels = int(batch_pixels)
        self.keep_pixels = bool(keep_pixels)
        self.store: dict[bytes, torch.Tensor] = {}
        self.nbytes = 0
        if max_bytes is None:  # the maps live where the backbone runs: on a GPU, a quarter of its memory
            device = next(backbone.parameters()).device
            max_bytes = torch.cuda.get_device_properties(device).total_memory // 4 if device.type == "cuda" else 0
        self.max_bytes = int(max_bytes)
        self._body = None  # the folded copy of the body, made at the first miss
        self.hits = 0
        self.misses = 0
        self._warned = False

    def encodes_like(self, backbone: Backbone) -> bool:
        """Whether ``backbone``'s body computes what this cache's does (same weights and buffers):
        then the cached maps are that backbone's too."""
        if backbone is self.backbone:
            return True
        mine, theirs = self.backbone.body.state_dict(), backbone.body.state_dict()
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine)

    @staticmethod
    def key(image: torch.Tensor, size_divisibility: int = 32) -> bytes:
        """Content hash of a ``[3, h, w]`` image (shape and padding included)."""
        # SHA-1 of the pixels in place (no bytes copy): half the time of BLAKE2b here (about 0.5 ms
        # for a 256 px image), and at hundreds of images per second on a GPU the keys are host work
        # on the training step's path. A content key, not a defence against crafted collisions.
        data = image.detach().to("cpu", torch.float32).contiguous().numpy()
        return hashlib.sha1(data.data).digest() + str((tuple(image.shape), size_divisibility)).encode()

    @torch.no_grad()
    def encode_many(self, images: list[torch.Tensor], size_divisibility: int = 32) -> list[torch.Tensor]:
        """Body features ``[C, h', w']`` of each unpadded ``[3, h, w]`` image, padded on its own to a
        multiple of ``size_divisibility`` (cached); the misses are encoded in batches of one padded
        shape."""
        keys = [self.key(image, size_divisibility) for image in images]
        out: list = [self.store.get(k) for k in keys]
        groups: dict = {}
        for i, (k, feats) in enumerate(zip(keys, out)):
            if feats is None:
                shape = padded_size(tuple(images[i].shape[-2:]), size_divisibility)
                groups.setdefault(shape, {}).setdefault(k, []).append(i)
            else:
                self.hits += 1
        device = next(self.backbone.parameters()).device
        for (h, w), by_key in groups.items():
            items = list(by_key.items())
            per_batch = max(1, self.batch_pixels // (h * w)) if self.batch_pixels > 0 else 1
            for start in range(0, len(items), per_batch):
                self._encode_batch(items[start:start + per_batch], images, out, device, size_divisibility)
        return out

    def _encode_batch(self, items: list, images: list, out: list, device, size_divisibility: int) -> None:
        batch = ImageBatch.from_tensors([upload(images[idx[0]], device) for _, idx in items],
                                        size_divisibility=size_divisibility)
        if self._body is None:
            self._body = self.backbone.folded_body()
        encoded = self.backbone.body_features(batch, self._body).to(self.dtype)  # stays on the device
        for (k, idx), feats in zip(items, encoded):
            feats = feats.clone()  # not a view that keeps the whole batch alive
            self.misses += 1
            self.hits += len(idx) - 1
            for i in idx:
                out[i] = feats
            self._add(k, feats)

    def encode(self, image: torch.Tensor, size_divisibility: int = 32) -> torch.Tensor:
        """Body features ``[C, h', w']`` of one unpadded ``[3, h, w]`` image padded to a multiple of
        ``size_divisibility`` (cached)."""
        return self.encode_many([image], size_divisibility)[0]

    def _add(self, key: bytes, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        if len(self.store) < self.max_items and (self.max_bytes <= 0 or self.nbytes + size <= self.max_bytes):
            self.store[key] = feats
            self.nbytes += size
        elif not self._warned:
            self._warned = True
            warnings.warn(f"feature cache full ({len(self.store)} maps, {self.nbytes / 2**20:.0f} MB): are the "
                          f"transforms deterministic (data.augment=false)? Further maps are computed, not kept.")

    def __call__(self, images: ImageBatch, size_divisibility: int = 32) -> FeatureBatch:
        """An ``ImageBatch`` -> the :class:`FeatureBatch` of its images' body features (on the backbone's device),
        each image padded on its own to a multiple of ``size_divisibility``; with ``keep_pixels``,
        the images' pixels too."""
        sizes = images.image_sizes.tolist()
        feats = self.encode_many([images.tensors[i, :, :h, :w] for i, (h, w) in enumerate(sizes)], size_divisibility)
        return FeatureBatch.from_features(feats, sizes, images.tensors if self.keep_pixels else None)

    def __len__(self) -> int:
        return len(self.store)
