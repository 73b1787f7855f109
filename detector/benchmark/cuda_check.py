"""The CUDA smoke checks of ``tools/cuda_check.py``: the GPU code paths in one short process.

1. The fused indirect-attention kernel against the reference (materialised bias), in float32 and
   bfloat16, without and with an attention sink: relative error of the output and of every input
   gradient (a 2 x 8-head layer, 300 object queries, a 32x32 value grid, the second image half
   padding). The demo config's model and the default (product) config's, one float32 forward on
   the CPU and on the GPU with the same weights: largest difference of logits and boxes. The
   frozen-BatchNorm folding of the feature cache on the GPU: whether it falls back to the plain
   body, and how far the folded body is from the plain one.
2. Training steps under bf16 autocast (AdamW, gradient clipping) with random-weight backbones: the
   default config with 300 + 1500 object queries, 512 px queries, batch 2, fused and reference
   kernels; the demo config and the paper-faithful one, 256 px, batch 8. For each: first and last
   loss, whether every loss was finite, the median ms per step and images/s of the steps after
   the first two, and their peak allocated memory (:func:`detector.benchmark.timing.measure`).

:func:`passed` is the verdict: every loss finite, the float32 kernels within 1e-4 (relative), the
CPU and GPU forwards within 1e-3, and no folding fall-back. Timings are one short run each:
indicative, not a benchmark (``tools/benchmark.py``).
"""
from __future__ import annotations

import torch

from detector.config import load_config
from detector.models.build import build_model
from detector.models.indirect_attention import AttentionSink, indirect_attention_fused, indirect_attention_reference
from detector.models.relative_bias import FactoredBias
from detector.structures import ImageBatch

from .timing import measure


def kernel_agreement(device: torch.device, dtype: torch.dtype, g: torch.Generator, sink: bool = False) -> dict:
    """Fused vs reference kernel on one random layer; ``sink``: with an :class:`AttentionSink`
    (its key and value get gradients too)."""
    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()

    q, k, v = leaf(2, 8, 300, 32), leaf(2, 8, 1024, 32), leaf(2, 8, 1024, 32)
    by, bx = leaf(2, 8, 300, 32), leaf(2, 8, 300, 32)
    mask = torch.zeros(2, 1024, dtype=torch.bool, device=device)
    mask[1, 512:] = True
    leaves = [q, k, v, by, bx]
    attention_sink = None
    if sink:
        attention_sink = AttentionSink(leaf(8, 32), leaf(8, 32))
        leaves += list(attention_sink)
    results = []
    for kernel in (indirect_attention_reference, indirect_attention_fused):
        out = kernel(q, k, v, FactoredBias(by, bx), mask, attention_sink)
        grads = torch.autograd.grad(out.float().square().sum(), leaves)
        results.append((out.float(), [x.float() for x in grads]))
    (ref, ref_grads), (fused, fused_grads) = results
    return {"out_rel_err": ((ref - fused).abs().max() / ref.abs().max()).item(),
            "grad_rel_err": max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(ref_grads, fused_grads))}


def cpu_cuda_agreement(config: str, size: int, batch: int, device: torch.device, g: torch.Generator) -> dict:
    """One float32 forward of ``config``'s model (random weights, eval mode) on the CPU and on
    ``device`` with the same weights and inputs: the largest difference of the logits and of the
    boxes (the ``box`` support layout and the sink included)."""
    cfg = load_config(config, ["model.backbone.pretrained=none"])
    torch.manual_seed(0)
    model, _, _ = build_model(cfg)
    model.eval()
    s = cfg.model.support_size
    query = ImageBatch.from_tensors([torch.rand(3, size, size - 64 * (i % 2), generator=g) for i in range(batch)])
    support = ImageBatch.from_tensors([torch.rand(3, s, s, generator=g) for _ in range(batch)], size_divisibility=s)
    with torch.no_grad():
        cpu = model(query, support)
        model.to(device)
        gpu = model(query.to(device), support.to(device))
    return {key: (cpu[key] - gpu[key].cpu()).abs().max().item() for key in ("pred_logits", "pred_boxes")}


def folding_on_cuda(device: torch.device) -> dict:
    """The frozen-BatchNorm folding of the feature cache (``Backbone.folded_body``) on ``device``
    with torch's default TF32 settings (the demo's situation): whether it fell back to the plain
    body with its warning, and the largest difference of the two bodies' features (TF32 off)."""
    import warnings

    from detector.models.backbone import Backbone

    backbone = Backbone("mobilenetv2_100", 128, pretrained="none", freeze=True).to(device).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folded = backbone.folded_body()
    x = torch.rand(2, 3, 256, 256, device=device)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        ref, got = backbone.body(x)[-1], folded(x)[-1]
    torch.backends.cudnn.allow_tf32 = tf32
    return {"fell_back_with_warning": any("folding" in str(w.message) for w in caught) or folded is backbone.body,
            "max_rel_diff": ((ref - got).abs().max() / ref.abs().max()).item()}


def training_steps(config: str | None, overrides: list, size: int, batch: int, steps: int, device: torch.device,
                   g: torch.Generator) -> dict:
    cfg = load_config(config, ["model.backbone.pretrained=none"] + overrides)
    model, criterion, _ = build_model(cfg)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    s = cfg.model.support_size
    query = ImageBatch.from_tensors([torch.rand(3, size, size - 64 * (i % 2), generator=g) for i in range(batch)]).to(device)
    support = ImageBatch.from_tensors([torch.rand(3, s, s, generator=g) for _ in range(batch)], size_divisibility=s).to(device)
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.25, 0.2]], device=device)
    targets = [{"boxes": boxes, "labels": torch.zeros(2, dtype=torch.long, device=device)} for _ in range(batch)]
    losses = []

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = criterion(model(query, support), targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        losses.append(loss.item())

    timed = measure(step, device, warmup=2, iters=steps - 2)
    return {"first_loss": losses[0], "last_loss": losses[-1],
            "all_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
            "ms_per_step": 1000 * timed["median_s"], "images_per_s": batch / timed["median_s"],
            "peak_mem_mb": timed["peak_mb"]}


def run_checks(device: torch.device, steps: int, demo_config: str, paper_config: str) -> dict:
    """Every check on ``device`` (``demo_config`` / ``paper_config``: the paths of
    ``configs/synthetic.yaml`` and ``configs/synthetic_paper.yaml``) -> results by name."""
    g = torch.Generator().manual_seed(0)
    results: dict = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                     "bf16_supported": torch.cuda.is_bf16_supported()}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        results[f"fused_vs_reference_{name}"] = kernel_agreement(device, dtype, g)
        results[f"fused_vs_reference_sink_{name}"] = kernel_agreement(device, dtype, g, sink=True)
    results["batchnorm_folding"] = folding_on_cuda(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    results["demo_config_cpu_vs_cuda_float32"] = cpu_cuda_agreement(demo_config, 256, 4, device, g)
    results["default_config_cpu_vs_cuda_float32"] = cpu_cuda_agreement(None, 256, 2, device, g)
    for name, (config, overrides, size, batch) in TRAINING_RUNS.items():
        config = {"demo": demo_config, "paper": paper_config}.get(config)
        results[name] = training_steps(config, overrides, size, batch, max(steps, 3), device, g)
    return results


TRAINING_RUNS = {  # name: (config: None = the defaults, "demo", "paper"; overrides; query px; batch)
    "default_fused": (None, ["model.num_queries_one2many=1500"], 512, 2),
    "default_reference": (None, ["model.num_queries_one2many=1500", "model.attention_impl=reference"], 512, 2),
    "demo_config": ("demo", [], 256, 8),
    "paper_faithful_config": ("paper", [], 256, 8),
}


def passed(results: dict) -> bool:
    """The verdict on :func:`run_checks`' results."""
    return (all(results[key][err] < 1e-4 for key in ("fused_vs_reference_float32", "fused_vs_reference_sink_float32")
                for err in ("out_rel_err", "grad_rel_err"))
            and max(results["demo_config_cpu_vs_cuda_float32"].values()) < 1e-3
            and max(results["default_config_cpu_vs_cuda_float32"].values()) < 1e-3
            and not results["batchnorm_folding"]["fell_back_with_warning"]
            and all(results[name]["all_finite"] for name in TRAINING_RUNS))
