"""The product's training-step kernels, each beside its straightforward form (``--suite kernels``).

At the demo's scale (``configs/synthetic.yaml``: batch 8, 256 px queries on a 16 x 16 grid, 128 px
exemplars on 8 x 8, d 128, 8 heads, 40 object queries, 32 correlation channels of width 32, bias
MLPs of hidden 128), one forward and backward of:

* ``correlation``: :class:`~detector.models.support_correlation.SupportCorrelation` as the maximum of
  the whole cosine map (``full_map``, :meth:`similarity_reference`) against the best match found
  without a gradient and differentiated alone (``best_match``, what training runs);
* ``bias MLPs``: one decoder layer's two per-axis box-bias MLPs through ``nn.Linear`` (``row_major``)
  against :class:`~detector.models.relative_bias.FeatureMajorMLP` (``feature_major``);
* ``AdamW``: one update of the demo model's trainable parameters, the plain per-parameter loop
  (``loop``, the CPU's default) against the fused update (``fused``).
"""
from __future__ import annotations

from typing import Callable

KERNELS = {"correlation": ("full_map", "best_match"), "bias MLPs": ("row_major", "feature_major"),
           "AdamW": ("loop", "fused")}
B, N, M, D, HEADS, QUERIES, SIDE, HIDDEN = 8, 256, 64, 128, 8, 40, 16, 128


def _correlation(impl: str, device, g, config: str) -> Callable[[], None]:
    import torch

    from ..models.support_correlation import SupportCorrelation

    corr = SupportCorrelation(D, 32, 32).to(device)
    query = torch.randn(B, N, D, generator=g).to(device).requires_grad_()
    support = torch.randn(B, M, D, generator=g).to(device).requires_grad_()
    mask = torch.zeros(B, M, dtype=torch.bool, device=device)
    mask[::2, 48:] = True  # half the exemplars padded on a quarter of their cells
    fn = corr.similarity_reference if impl == "full_map" else corr.similarity

    def step():
        fn(query, support, mask).square().sum().backward()
    return step


def use_row_major_mlps(rpb) -> None:
    """``rpb`` (a :class:`~detector.models.relative_bias.BoxRelativePositionBias`) runs its MLPs
    through the plain ``nn.Linear`` layers, rows first, as autograd runs them (the same values)."""
    rpb._mlp = lambda mlp, offsets, recompute: mlp(offsets).permute(0, 3, 1, 2)


def _bias_mlps(impl: str, device, g, config: str) -> Callable[[], None]:
    import torch

    from ..models.relative_bias import BoxRelativePositionBias

    rpb = BoxRelativePositionBias(HEADS, HIDDEN, box_prior=32.0).to(device)
    for mlp in (rpb.mlp_x, rpb.mlp_y):
        torch.nn.init.normal_(mlp[2].weight, std=0.1)
    boxes = (torch.rand(B, QUERIES, 4, generator=g) * 0.5 + 0.2).to(device)
    valid = torch.tensor([[SIDE, SIDE]] * B, device=device)
    if impl == "row_major":
        use_row_major_mlps(rpb)

    def step():
        bias = rpb(boxes, (SIDE, SIDE), valid, recompute_hidden=False)
        (bias.bias_y.square().sum() + bias.bias_x.square().sum()).backward()
    return step


def _adamw(impl: str, device, g, config: str) -> Callable[[], None]:
    import torch

    from ..config import load_config
    from ..models import build_model

    cfg = load_config(config, ["model.backbone.pretrained=none"])
    params = [p for p in build_model(cfg)[0].to(device).parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(device)
    optimizer = torch.optim.AdamW(params, lr=8e-4, weight_decay=1e-4,
                                  **({"foreach": False} if impl == "loop" else {"fused": True}))
    return optimizer.step


def kernel_step(part: str, impl: str, device, config: str) -> Callable[[], None]:
    """``step()``: one forward and backward (one update for ``AdamW``: the trainable parameters of
    the model of ``config``, the demo's ``configs/synthetic.yaml``) of ``impl`` of ``part``."""
    import torch

    if part not in KERNELS or impl not in KERNELS[part]:
        raise ValueError(f"unknown kernel {part!r}/{impl!r}; choose from {KERNELS}")
    g = torch.Generator().manual_seed(0)
    return {"correlation": _correlation, "bias MLPs": _bias_mlps, "AdamW": _adamw}[part](impl, device, g, config)
