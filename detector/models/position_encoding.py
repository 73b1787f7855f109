"""Sine position encodings, normalised to each image's unpadded extent (DETR)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding of feature-map positions.

    Coordinates are cumulative counts over the unpadded region divided by its extent, so the same
    relative position in two images of different sizes gets the same encoding.

    Args:
        num_pos_feats: features per axis; the output has ``2 * num_pos_feats`` channels.
        temperature: frequency base.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, mask: Tensor) -> Tensor:
        """``mask [B, H, W]`` (True = padding) -> ``[B, 2 * num_pos_feats, H, W]``."""
        not_mask = (~mask).float()
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        eps = 1e-6
        y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :].amax(dim=1, keepdim=True).clamp(min=1) + eps) * 2 * math.pi
        x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:].amax(dim=2, keepdim=True).clamp(min=1) + eps) * 2 * math.pi
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def box_sine_embedding(boxes_cxcywh: Tensor, num_pos_feats: int = 64, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of normalised boxes: ``[B, Q, 4]`` -> ``[B, Q, 4 * num_pos_feats]``.

    Used to derive each object query's position embedding from its current reference box.
    """
    scale = 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=boxes_cxcywh.dtype, device=boxes_cxcywh.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos = boxes_cxcywh[..., None] * scale / dim_t  # [B, Q, 4, F]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)
