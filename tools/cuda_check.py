"""CUDA smoke check: the GPU code paths in one short process, with a pass/fail verdict.

``python tools/cuda_check.py [--out cuda_check.json] [--steps 12]``

1. The fused indirect-attention kernel against the reference (materialised bias) on the GPU, in
   float32 and bfloat16, without and with an attention sink: relative error of the output and of
   every input gradient (a 2 x 8-head layer, 300 object queries, a 32x32 value grid, the second
   image half padding). The demo config's model (``box`` layout, sink, correlation), one float32
   forward on the CPU and on the GPU with the same weights: largest difference of logits and boxes;
   the same for the default config (``resize`` layout). The frozen-BatchNorm folding of the
   feature cache on the GPU: whether it falls back to the plain body (it did before TF32 was
   turned off for its check), and how far the folded body is from the plain one.
2. Training steps under bf16 autocast (AdamW, gradient clipping) with random-weight backbones:
   the default (paper-scale) config with 300 + 1500 object queries, 512 px queries, batch 2, fused
   and reference kernels; the demo config (``configs/synthetic.yaml``) and the paper-faithful one
   (``configs/synthetic_paper.yaml``), 256 px, batch 8. For each:
   first and last loss, whether every loss was finite, ms per step and images/s (steps after the
   first two), peak ``torch.cuda.max_memory_allocated``.

Exits 1 when a loss is not finite, the float32 kernels disagree by more than 1e-4 (relative), the
CPU and GPU forwards by more than 1e-3, or the folding falls back.
Timings are one short run each (no long warm-up): indicative, not a benchmark (``tools/benchmark.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from detector.config import load_config  # noqa: E402
from detector.models.build import build_model  # noqa: E402
from detector.models.indirect_attention import (AttentionSink, indirect_attention_fused,  # noqa: E402
                                               indirect_attention_reference)
from detector.models.relative_bias import FactoredBias  # noqa: E402
from detector.structures import ImageBatch  # noqa: E402


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
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for step in range(steps):
        if step == 2:
            torch.cuda.synchronize(device)
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = criterion(model(query, support), targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        losses.append(loss.item())
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    timed = max(steps - 2, 1)
    return {"first_loss": losses[0], "last_loss": losses[-1],
            "all_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
            "ms_per_step": 1000 * elapsed / timed, "images_per_s": batch * timed / elapsed,
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="also write the results to this JSON file")
    p.add_argument("--steps", type=int, default=12, help="training steps per configuration (>= 3)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device is visible to torch", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    results: dict = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                     "bf16_supported": torch.cuda.is_bf16_supported()}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        results[f"fused_vs_reference_{name}"] = kernel_agreement(device, dtype, g)
        results[f"fused_vs_reference_sink_{name}"] = kernel_agreement(device, dtype, g, sink=True)
    demo = os.path.join(ROOT, "configs", "synthetic.yaml")
    results["batchnorm_folding"] = folding_on_cuda(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    results["demo_config_cpu_vs_cuda_float32"] = cpu_cuda_agreement(demo, 256, 4, device, g)
    # The default config: the `resize` support layout (one grid_sample for the batch).
    results["default_config_cpu_vs_cuda_float32"] = cpu_cuda_agreement(None, 256, 2, device, g)
    runs = {"default_fused": (None, ["model.num_queries_one2many=1500"], 512, 2),
            "default_reference": (None, ["model.num_queries_one2many=1500", "model.attention_impl=reference"], 512, 2),
            "demo_config": (demo, [], 256, 8),
            "paper_faithful_config": (os.path.join(ROOT, "configs", "synthetic_paper.yaml"), [], 256, 8)}
    for name, (config, overrides, size, batch) in runs.items():
        results[name] = training_steps(config, overrides, size, batch, max(args.steps, 3), device, g)
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    ok = (all(results[key][err] < 1e-4 for key in ("fused_vs_reference_float32", "fused_vs_reference_sink_float32")
              for err in ("out_rel_err", "grad_rel_err"))
          and max(results["demo_config_cpu_vs_cuda_float32"].values()) < 1e-3
          and max(results["default_config_cpu_vs_cuda_float32"].values()) < 1e-3
          and not results["batchnorm_folding"]["fell_back_with_warning"]
          and all(results[name]["all_finite"] for name in runs))
    print("cuda check:", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
