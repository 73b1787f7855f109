"""The decoder benchmark's operating points and inputs, shared by ``tools/benchmark.py`` and the GPU
suite (:mod:`detector.benchmark.gpu_suite`)."""
from __future__ import annotations

from typing import Optional

# The model the benchmarks build (the config defaults plus these): the settings their documented
# numbers (docs/PERFORMANCE.md) were measured with, which the config defaults no longer are.
BENCH_MODEL = ["model.support_layout=resize", "model.attention_sink=false", "model.bias_box_prior=0",
               "model.proposal_nms=0", "model.support_conditioning=true", "model.correlation_channels=0",
               "model.correlation_dropout=0"]

POINTS = {  # name: (grid side, one-to-one queries, one-to-many queries)
    "train32": (32, 300, 1500),
    "eval32": (32, 300, 0),
    "train50": (50, 300, 1500),
    "eval50": (50, 300, 0),
}


def decoder_flops(batch: int, queries: int, grid: int, d: int = 256, heads: int = 8, layers: int = 6,
                  ffn: int = 2048, bias_hidden: int = 512, grid_w: Optional[int] = None) -> float:
    """Forward matmul FLOPs of the decoder (2 per multiply-add), as the straightforward math does
    them: self-attention, cross-attention with ``d_head = d / heads``, FFN, box-bias MLPs, the
    query-position MLP and the box heads, on a ``grid x grid`` value grid (``grid x grid_w``).
    Elementwise work is not counted."""
    grid_w = grid if grid_w is None else grid_w
    cells = grid * grid_w
    q, n = batch * queries, batch * cells
    self_attn = 2 * q * d * d * 4 + 2 * 2 * batch * queries * queries * d
    cross = 2 * (2 * q * d * d + 2 * n * d * d) + 2 * 2 * batch * queries * cells * d
    ffn_flops = 2 * 2 * q * d * ffn
    bias = 2 * q * (grid + grid_w) * (2 * bias_hidden + bias_hidden * heads)
    heads_flops = 2 * q * (2 * d * d) + 2 * q * (2 * d * d + 4 * d)
    return float(layers * (self_attn + cross + ffn_flops + bias + heads_flops))


def autocast(device):
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def decoder_step(spec: dict, device):
    """The decoder of the default config with ``spec["impl"]`` and random inputs -> ``(step, fwd
    FLOPs)``: ``step()`` runs one forward (``mode`` ``fwd``, eval, no grad) or forward+backward
    (``fwdbwd``). Sizes: ``point`` (:data:`POINTS`, batch 2) or ``batch``, ``grid_h``, ``grid_w``,
    ``one2one``, ``one2many``."""
    import torch

    from detector.config import load_config
    from detector.models.build import build_decoder

    side, n_one, n_many = POINTS.get(spec.get("point"), (None, None, None))
    gh, gw = spec.get("grid_h", side), spec.get("grid_w", side)
    n_one, n_many = spec.get("one2one", n_one), spec.get("one2many", n_many)
    num, b = n_one + n_many, spec.get("batch", 2)
    cfg = load_config(None, BENCH_MODEL + ["model.backbone.pretrained=none", f"model.attention_impl={spec['impl']}"])
    decoder = build_decoder(cfg.model).to(device)
    d = cfg.model.d_model
    g = torch.Generator().manual_seed(0)
    grad = spec["mode"] == "fwdbwd"
    content = torch.randn(b, num, d, generator=g).to(device).requires_grad_(grad)
    keys = torch.randn(b, gh * gw, d, generator=g).to(device).requires_grad_(grad)
    values = torch.randn(b, gh * gw, d, generator=g).to(device).requires_grad_(grad)
    boxes = torch.cat([torch.rand(b, num, 2, generator=g) * 0.8 + 0.1, torch.rand(b, num, 2, generator=g) * 0.3 + 0.02], -1)
    boxes = boxes.to(device)
    narrow = gw * 3 // 4  # the last image is narrower: padding on the right, as the model masks it
    mask = torch.zeros(b, gh, gw, dtype=torch.bool)
    valid_hw = torch.tensor([[gh, gw]] * b)
    if b > 1:
        mask[-1, :, narrow:] = True
        valid_hw[-1, 1] = narrow
    mask, valid_hw = mask.flatten(1).to(device), valid_hw.to(device)
    self_attn_mask = None
    if n_many:
        self_attn_mask = torch.zeros(num, num, dtype=torch.bool, device=device)
        self_attn_mask[:n_one, n_one:] = True
        self_attn_mask[n_one:, :n_one] = True

    def forward():
        with autocast(device):
            return decoder(content, boxes, keys, values, mask, (gh, gw), valid_hw, self_attn_mask)

    if spec["mode"] == "fwd":
        decoder.eval()

        def step():
            with torch.no_grad():
                forward()
    else:
        decoder.train()

        def step():
            for t in [content, keys, values, *decoder.parameters()]:
                t.grad = None
            hidden, out_boxes = forward()
            loss = sum(h.float().square().mean() for h in hidden) + sum(x.float().mean() for x in out_boxes)
            loss.backward()

    fwd = decoder_flops(b, num, gh, d=d, heads=cfg.model.num_heads, layers=cfg.model.num_decoder_layers,
                        ffn=cfg.model.dim_feedforward, bias_hidden=cfg.model.bias_hidden_dim, grid_w=gw)
    return step, fwd
