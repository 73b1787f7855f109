"""Feature caching for a frozen backbone: each distinct image's body features are computed once.

With ``model.backbone.freeze=true`` and deterministic transforms (``data.augment=false``), the same
query image or exemplar crop always reaches the model as the same pixels, so the backbone body's
output can be memoised by a hash of the pixels. Training then runs the projection and the decoder
only (``train.cache_features=true``). Each image is encoded on its own (padded to a multiple of 32,
as :meth:`ImageBatch.from_tensors` pads query images; exemplar crops are padded to the square
``support_size`` as ``collate_oneshot`` pads them), so a cached feature map is bitwise independent of
which images shared its batch, and equals what the uncached model computes for that image alone.
"""
from __future__ import annotations

import hashlib
import warnings

import torch

from .models.backbone import Backbone, FeatureBatch
from .structures import ImageBatch


class FeatureCache:
    """Memoised backbone-body features keyed by image content.

    Args:
        backbone: the (frozen) backbone whose ``body_features`` are cached.
        max_items: stop adding entries beyond this many (a warning says so once); guards memory when
            transforms turn out not to be deterministic.
        dtype: storage dtype of the cached maps (float32 keeps training exact).
    """

    def __init__(self, backbone: Backbone, max_items: int = 200_000, dtype: torch.dtype = torch.float32):
        if any(p.requires_grad for p in backbone.body.parameters()):
            raise ValueError("feature caching needs a frozen backbone body (model.backbone.freeze=true)")
        self.backbone = backbone
        self.max_items = max_items
        self.dtype = dtype
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self._warned = False

    @staticmethod
    def key(image: torch.Tensor, size_divisibility: int = 32) -> bytes:
        """Content hash of a ``[3, h, w]`` image (shape and padding included)."""
        data = image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=20).digest() + str((tuple(image.shape), size_divisibility)).encode()

    @torch.no_grad()
    def encode(self, image: torch.Tensor, size_divisibility: int = 32) -> torch.Tensor:
        """Body features ``[C, h', w']`` of one unpadded ``[3, h, w]`` image padded to a multiple of
        ``size_divisibility`` (cached)."""
        k = self.key(image, size_divisibility)
        feats = self.store.get(k)
        if feats is not None:
            self.hits += 1
            return feats
        self.misses += 1
        device = next(self.backbone.parameters()).device
        batch = ImageBatch.from_tensors([image.to(device)], size_divisibility=size_divisibility)
        feats = self.backbone.body_features(batch)[0].to("cpu", self.dtype)
        if len(self.store) < self.max_items:
            self.store[k] = feats
        elif not self._warned:
            self._warned = True
            warnings.warn(f"feature cache full ({self.max_items} maps): are the transforms deterministic "
                          f"(data.augment=false)?")
        return feats

    def __call__(self, images: ImageBatch, size_divisibility: int = 32) -> FeatureBatch:
        """An ``ImageBatch`` -> the :class:`FeatureBatch` of its images' body features (on CPU),
        each image padded on its own to a multiple of ``size_divisibility``."""
        sizes = images.image_sizes.tolist()
        feats = [self.encode(images.tensors[i, :, :h, :w], size_divisibility) for i, (h, w) in enumerate(sizes)]
        return FeatureBatch.from_features(feats, sizes)

    def __len__(self) -> int:
        return len(self.store)
