"""Kernels considered for one cross-attention step, benchmarked side by side (``--suite candidates``).

The shipped kernels live in :mod:`detector.models.indirect_attention`; this module holds the
alternatives that lost (``docs/PERFORMANCE.md`` has the measurements) and the inputs they are timed on.
"""
from __future__ import annotations

import math

CANDIDATES = ("reference", "sdpa_unpadded", "fused", "chunked", "mlp_stored", "mlp_recomputed")


def chunked_attention(q, k, v, bias, mask, block: int = 64):
    """Exact indirect attention over blocks of object queries, with a custom backward that recomputes
    each block's probabilities from the saved log-sum-exp (memory O(block * N) instead of O(Q * N)).

    ``q`` ``[B, h, Q, d]``, ``k`` / ``v`` ``[B, h, N, d]`` with ``N = Hy * Hx``, ``bias`` a
    :class:`~detector.models.relative_bias.FactoredBias` (``bias_y`` ``[B, h, Q, Hy]``, ``bias_x``
    ``[B, h, Q, Hx]``), ``mask`` ``[B, N]`` (True = padding) -> ``[B, h, Q, d]``.
    """
    import torch

    class Chunked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, by, bx):
            scale = 1.0 / math.sqrt(q.shape[-1])
            neg = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(mask, float("-inf"))[:, None, None, :]
            out, lse = torch.empty_like(q), q.new_empty(q.shape[:-1] + (1,))
            for s in range(0, q.shape[2], block):
                r = slice(s, s + block)
                logits = torch.matmul(q[:, :, r], k.transpose(-1, -2)).mul_(scale)
                logits.view(*logits.shape[:3], by.shape[-1], bx.shape[-1]).add_(by[:, :, r, :, None]).add_(bx[:, :, r, None, :])
                logits.add_(neg)
                lse[:, :, r] = torch.logsumexp(logits, -1, keepdim=True)
                torch.matmul(logits.sub_(lse[:, :, r]).exp_(), v, out=out[:, :, r])
            ctx.save_for_backward(q, k, v, by, bx, out, lse, neg)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, by, bx, out, lse, neg = ctx.saved_tensors
            scale = 1.0 / math.sqrt(q.shape[-1])
            dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
            dby, dbx = torch.empty_like(by), torch.empty_like(bx)
            delta = (grad * out).sum(-1, keepdim=True)
            for s in range(0, q.shape[2], block):
                r = slice(s, s + block)
                p = torch.matmul(q[:, :, r], k.transpose(-1, -2)).mul_(scale)
                p.view(*p.shape[:3], by.shape[-1], bx.shape[-1]).add_(by[:, :, r, :, None]).add_(bx[:, :, r, None, :])
                p = p.add_(neg).sub_(lse[:, :, r]).exp_()
                dv.add_(torch.matmul(p.transpose(-1, -2), grad[:, :, r]))
                ds = torch.matmul(grad[:, :, r], v.transpose(-1, -2)).sub_(delta[:, :, r]).mul_(p)
                grid = ds.view(*ds.shape[:3], by.shape[-1], bx.shape[-1])
                dby[:, :, r], dbx[:, :, r] = grid.sum(-1), grid.sum(-2)
                dq[:, :, r] = torch.matmul(ds, k) * scale
                dk.add_(torch.matmul(ds.transpose(-1, -2), q[:, :, r]), alpha=scale)
            return dq, dk, dv, dby, dbx

    return Chunked.apply(q, k, v, bias.bias_y, bias.bias_x)


def _bias_mlp_compute(name: str, device, g, b: int, h: int, nq: int, side: int):
    from detector.models import relative_bias as rb

    import torch

    from .step_kernels import use_row_major_mlps

    rpb = rb.BoxRelativePositionBias(h, 512, recompute_hidden=name == "mlp_recomputed").to(device)
    if name == "mlp_stored":  # the plain layers with their activations stored, as autograd keeps them
        use_row_major_mlps(rpb)
    boxes = (torch.rand(b, nq, 4, generator=g) * 0.5 + 0.2).to(device)
    valid = torch.tensor([[side, side]] * b, device=device)

    def compute():
        bias = rpb(boxes, (side, side), valid)
        return bias.bias_y.sum() + bias.bias_x.sum()
    return compute


def _attention_compute(name: str, device, g, grad: bool, b: int, h: int, nq: int, side: int, dh: int):
    import torch
    import torch.nn.functional as F

    from detector.models import indirect_attention as ia
    from detector.models import relative_bias as rb

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    q, k, v = leaf(b, h, nq, dh), leaf(b, h, side * side, dh), leaf(b, h, side * side, dh)
    bias = rb.FactoredBias(leaf(b, h, nq, side), leaf(b, h, nq, side))
    mask = torch.zeros(b, side, side, dtype=torch.bool)
    mask[1, :, side * 3 // 4:] = True
    mask = mask.flatten(1).to(device)

    def unpadded(q, k, v, bias, mask):  # the bias folded into q/k, values left at d_head: SDPA's math path
        codes = ia._row_col_codes(side, side, 2 * side, k.device, k.dtype).expand(b, h, side * side, 2 * side)
        qe = torch.cat([q / math.sqrt(dh), bias.bias_y, bias.bias_x], -1)
        return F.scaled_dot_product_attention(qe, torch.cat([k, codes], -1), v, attn_mask=~mask[:, None, None, :], scale=1.0)

    fn = {"reference": ia.indirect_attention_reference, "fused": ia.indirect_attention_fused,
          "sdpa_unpadded": unpadded, "chunked": chunked_attention}[name]

    def compute():
        return fn(q, k, v, bias, mask).square().sum()
    return compute


def candidate_step(name: str, mode: str, device):
    """One candidate at the paper's training scale (B 2, 8 heads, 1800 object queries, 32x32 keys,
    d_head 32; the bias MLPs at hidden 512) -> ``step()``: a forward without grad (``mode`` ``fwd``)
    or a forward + backward of a scalar (``fwdbwd``)."""
    import torch

    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; choose from {CANDIDATES}")
    g = torch.Generator().manual_seed(0)
    b, h, nq, side, dh = 2, 8, 1800, 32, 32
    if name.startswith("mlp_"):
        compute = _bias_mlp_compute(name, device, g, b, h, nq, side)
    else:
        compute = _attention_compute(name, device, g, mode == "fwdbwd", b, h, nq, side, dh)
    if mode == "fwd":
        def step():
            with torch.no_grad():
                compute()
    else:
        def step():
            compute().backward()
    return step
