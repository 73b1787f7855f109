"""One measurement per process: the worker side of the CPU suites (:mod:`.cpu_suite`).

Several models timed in one process gave 5-20x outliers on the development machine, so each
measurement runs in a fresh interpreter::

    python -m detector.benchmark.workers '{"kind": "decoder", "point": "eval32", "impl": "fused", ...}'

prints one JSON line: the spec plus what :func:`detector.benchmark.timing.measure` returns and the
kind's extras (``model_flops``, ``tensor_peak_mb``, ``batch``, ``gflops``).
"""
from __future__ import annotations

import json
import sys

from .candidates import candidate_step
from .decoder import BENCH_MODEL, autocast, decoder_step
from .step_kernels import kernel_step
from .timing import measure, tensor_peak_mb


def run_decoder(spec: dict, device) -> dict:
    step, fwd = decoder_step(spec, device)
    result = measure(step, device, spec["warmup"], spec["iters"])
    if device.type == "cpu":
        result["tensor_peak_mb"] = tensor_peak_mb(step)
    result["model_flops"] = fwd if spec["mode"] == "fwd" else 3 * fwd
    return result


def _random_batch(b: int, size: int, s_size: int, device, cache=None) -> tuple:
    """``(query, support, targets)`` on ``device``: ``b`` random ``size`` px query images and
    ``s_size`` px exemplars, two boxes each; features from ``cache`` (made warm here) when given."""
    import torch

    from detector.engine.step import to_device
    from detector.structures import ImageBatch

    g = torch.Generator().manual_seed(0)
    query = ImageBatch.from_tensors([torch.rand(3, size, size, generator=g) for _ in range(b)])
    support = ImageBatch.from_tensors([torch.rand(3, s_size, s_size, generator=g) for _ in range(b)])
    targets = [{"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.25, 0.2]])} for _ in range(b)]
    return to_device(query, support, targets, device, cache, s_size)


def _timed(step, batch: int, spec: dict, device) -> dict:
    return {**measure(step, device, spec["warmup"], spec["iters"]), "batch": batch}


def _model_step(spec: dict, device):
    """The default-config model (random weights) and a training step or an inference step."""
    import torch

    from detector.config import load_config
    from detector.models.build import build_model

    cfg = load_config(None, BENCH_MODEL + ["model.backbone.pretrained=none", f"model.attention_impl={spec['impl']}",
                                           f"model.num_queries_one2many={spec.get('one2many', 0)}"])
    model, criterion, postprocessor = build_model(cfg)
    model.to(device)
    b = 2 if spec["mode"] == "train" else 1
    query, support, targets = _random_batch(b, cfg.data.query_max_size, cfg.model.support_size, device)
    if spec["mode"] == "train":
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            with autocast(device):
                loss = criterion(model(query, support), targets)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast(device):
                postprocessor(model(query, support), query.image_sizes)
    return step, b


def run_model(spec: dict, device) -> dict:
    return _timed(*_model_step(spec, device), spec, device)


def _cross_step(spec: dict, device):
    """One training step of ``spec["config"]``'s model with ``model.attention = spec["attention"]``,
    as :func:`detector.engine.train` runs it: the config's batch, query and exemplar sizes, AdamW and
    clipping; with ``train.cache_features`` the frozen backbone's features come from a warm cache,
    so the step is the decoder's, the side paths' and the losses'. ``double_cross`` leaves out a
    config's light fusion step (``model.fusion_layers``): it has its own fusion encoder. Random
    images, two boxes each."""
    import torch

    from detector.config import load_config
    from detector.engine.step import train_step
    from detector.features import FeatureCache
    from detector.models.build import build_model
    from detector.optim import build_optimizer

    own_fusion = ["model.fusion_layers=0"] if spec["attention"] == "double_cross" else []
    cfg = load_config(spec["config"], [f"model.attention={spec['attention']}", "model.backbone.pretrained=none",
                                       *own_fusion])
    torch.manual_seed(0)
    model, criterion, _ = build_model(cfg)
    model.to(device).train()
    cache = FeatureCache(model.backbone, keep_pixels=model.uses_pixels) if cfg.train.cache_features else None
    b = cfg.train.batch_size
    query, support, targets = _random_batch(b, cfg.data.query_max_size, cfg.model.support_size, device, cache)
    optimizer = build_optimizer(model, cfg.train)
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def step():
        train_step(model, criterion, optimizer, scaler, query, support, targets, None, cfg.train.clip_max_norm)

    return step, b


def run_cross(spec: dict, device) -> dict:
    return _timed(*_cross_step(spec, device), spec, device)


def run_backbone(spec: dict, device) -> dict:
    import torch

    from detector.models.backbone import Backbone
    from detector.structures import ImageBatch

    backbone = Backbone("mobilenetv2_100", 128, pretrained="none", freeze=True).to(device).eval()
    body = backbone.folded_body() if spec["impl"] == "folded" else backbone.body
    g = torch.Generator().manual_seed(0)
    image = ImageBatch.from_tensors([torch.rand(3, spec["size"], spec["size"], generator=g)]).to(device)

    def step():
        with torch.no_grad():
            backbone.body_features(image, body)

    return measure(step, device, spec["warmup"], spec["iters"])


def run_matmul(spec: dict, device) -> dict:
    """The achievable peak: one large matmul (float32 on the CPU, bfloat16 on CUDA)."""
    import torch

    n = spec.get("n") or (4096 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    result = measure(lambda: torch.mm(a, b), device, spec["warmup"], spec["iters"])
    result["gflops"] = 2 * n**3 / result["min_s"] / 1e9
    result["dtype"] = str(dtype).replace("torch.", "")
    return result


def run_candidate(spec: dict, device) -> dict:
    step = candidate_step(spec["impl"], spec["mode"], device)
    result = measure(step, device, spec["warmup"], spec["iters"])
    if device.type == "cpu":
        result["tensor_peak_mb"] = tensor_peak_mb(step)
    return result


def run_kernel(spec: dict, device) -> dict:
    step = kernel_step(spec["part"], spec["impl"], device, spec["config"])
    return measure(step, device, spec["warmup"], spec["iters"])


KINDS = {"decoder": run_decoder, "model": run_model, "matmul": run_matmul, "candidate": run_candidate,
         "backbone": run_backbone, "cross": run_cross, "kernel": run_kernel}


def worker(spec: dict) -> dict:
    """One measurement: ``spec`` (``kind``, ``device``, ``threads``, ``warmup``, ``iters`` and the
    kind's own keys) -> ``spec`` plus the results."""
    import torch

    torch.set_num_threads(spec["threads"])
    return {**spec, **KINDS[spec["kind"]](spec, torch.device(spec["device"]))}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
