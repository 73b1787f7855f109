"""Batched images with their padding: the one input type of the model.

An ``ImageBatch`` is built only by :meth:`ImageBatch.from_tensors` (called in the collate
function and by the inference API); the model never sees a bare list of images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


def padded_size(hw: tuple[int, int], size_divisibility: int) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``size_divisibility`` (the padding of :class:`ImageBatch`)."""
    h, w = int(hw[0]), int(hw[1])
    if size_divisibility <= 1:
        return h, w
    return -(-h // size_divisibility) * size_divisibility, -(-w // size_divisibility) * size_divisibility


@dataclass
class ImageBatch:
    """Images padded to one size.

    Attributes:
        tensors: ``[B, 3, H, W]`` float images with values in ``[0, 1]`` (the model normalises them
            with its backbone's mean and std), zero in the padding.
        mask: ``[B, H, W]`` bool, ``True`` where a pixel is padding (DETR convention).
        image_sizes: ``[B, 2]`` long, ``(height, width)`` of each unpadded image.
    """

    tensors: Tensor
    mask: Tensor
    image_sizes: Tensor

    @classmethod
    def from_tensors(cls, images: Sequence[Tensor], size_divisibility: int = 32, min_size: int = 0) -> "ImageBatch":
        """Pad ``[3, h_i, w_i]`` images to a common ``[H, W]`` (a multiple of ``size_divisibility``,
        each at least ``min_size``), top-left aligned."""
        if len(images) == 0:
            raise ValueError("ImageBatch.from_tensors needs at least one image")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"image {i} has shape {tuple(img.shape)}; expected [3, H, W]")
        max_h, max_w = padded_size((max([min_size] + [int(img.shape[1]) for img in images]),
                                    max([min_size] + [int(img.shape[2]) for img in images])), size_divisibility)
        ref = images[0]
        tensors = ref.new_zeros((len(images), 3, max_h, max_w))
        mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool, device=ref.device)
        sizes = torch.zeros((len(images), 2), dtype=torch.long, device=ref.device)
        for i, img in enumerate(images):
            h, w = img.shape[1:]
            tensors[i, :, :h, :w].copy_(img)
            mask[i, :h, :w] = False
            sizes[i, 0], sizes[i, 1] = h, w
        return cls(tensors=tensors, mask=mask, image_sizes=sizes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "ImageBatch":
        """Move every tensor to ``device``."""
        return ImageBatch(
            tensors=self.tensors.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
            image_sizes=self.image_sizes.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> "ImageBatch":
        """A copy in page-locked memory (the data loader calls this with ``pin_memory=True``), from
        which ``to(cuda, non_blocking=True)`` does not make the host wait."""
        return ImageBatch(tensors=self.tensors.pin_memory(), mask=self.mask.pin_memory(),
                          image_sizes=self.image_sizes.pin_memory())

    def __len__(self) -> int:
        return int(self.tensors.shape[0])
