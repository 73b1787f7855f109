"""Benchmark the indirect-attention decoder and the whole model, reference kernel vs fast kernel.

Every measurement runs in its own Python process (several models timed in one process gave 5-20x
outliers on the development machine): the parent process only starts workers and prints tables.
Times are medians over ``--iters`` runs after ``--warmup`` runs. Peak memory is the worker's peak
resident set size (``resource.getrusage(...).ru_maxrss``) on the CPU, reported whole and as the rise
over the worker's RSS before its first run (imports, model and inputs already built); on CUDA it is
``torch.cuda.max_memory_allocated``. Achieved GFLOP/s use the model FLOPs of the straightforward
computation (:func:`decoder_flops`, backward = 2x forward) for both kernels, against the measured
peak of one large float32 matmul on the same threads (bf16 under autocast on CUDA).

Suites (``--suite``, comma-separated):

* ``decoder``: the real ``Decoder`` (``build_decoder`` of the default config: 6 layers, d 256,
  8 heads, bias MLP hidden 512), batch 2, random keys/values ``[2, H*W, 256]`` and reference boxes,
  a padding mask as the model passes it (the second image is narrower), the hybrid-matching
  self-attention block mask when there are one-to-many queries. Points: ``train32`` (32x32,
  300 + 1500 object queries, the paper's training operating point), ``eval32`` (32x32, 300),
  ``train50`` and ``eval50`` (50x50, an extrapolation).
* ``model``: ``build_model`` of the default config (mobilenetv2_100, random weights), training
  images/s (batch 2, 512 px queries, 128 px supports, loss + AdamW step) with the default 300
  queries and with 300 + 1500 (hybrid matching), and inference latency per query + support pair.
* ``backbone``: the frozen MobileNetV2 body (random weights; the speed does not depend on them)
  encoding one image, as the feature cache does (``FeatureCache``), with its frozen BatchNorms as
  they are (``plain``) and folded into the convolutions (``folded``, :meth:`Backbone.folded_body`),
  at 256 px (the demo's query images) and 128 px (its exemplar crops).
* ``candidates``: one cross-attention layer at the paper's training scale (B 2, 8 heads, 1800
  object queries, 32x32 keys, d_head 32) for each kernel considered, and the bias MLP with stored
  vs recomputed activations.
* ``gpu`` (the default with ``--device cuda``): the GPU suite of :mod:`detector.benchmark.gpu_suite`, in this
  process: decoder points, whole-model training images/s, inference latency and throughput, the
  demo config's training images/s, with operators and host synchronisations per step. With
  ``--device cpu`` it runs at smaller sizes (``--scale``).

Usage::

    python -m tools.benchmark                          # decoder + model, reference vs fused
    python -m tools.benchmark --suite candidates
    python -m tools.benchmark --suite backbone --iters 30 --warmup 3 --repeats 2
    python -m tools.benchmark --suite decoder --points train32,eval32 --iters 3 --warmup 1
    python -m tools.benchmark --device cuda --json gpu_suite.json   # the GPU suite (about 3 minutes)
    python -m tools.benchmark --suite gpu --device cpu              # the same at CPU sizes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from detector.benchmark.decoder import BENCH_MODEL, POINTS, autocast as _autocast, decoder_flops, decoder_step  # noqa: E402,F401
CANDIDATES = ("reference", "sdpa_unpadded", "fused", "chunked", "mlp_stored", "mlp_recomputed")


# ---------------------------------------------------------------------------------------------
# Worker side: one measurement per process.
# ---------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _timed(step: Callable[[], None], warmup: int, iters: int, device) -> dict:
    """Run ``step`` ``warmup + iters`` times; times of the timed runs and peak memory."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out = {"times_s": times, "median_s": statistics.median(times), "min_s": min(times),
           "peak_rss_mb": _rss_mb(), "base_rss_mb": base}
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _tensor_peak_mb(step: Callable[[], None]) -> Optional[float]:
    """Peak of the tensor memory allocated (net of frees) during one ``step``, from the torch
    profiler's memory events: what the computation itself holds, without the allocator's overhead
    or the process's libraries. ``None`` where the profiler does not expose the events."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError):
        return None
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def run_decoder(spec: dict, device) -> dict:
    step, fwd = decoder_step(spec, device)
    result = _timed(step, spec["warmup"], spec["iters"], device)
    if device.type == "cpu":
        result["tensor_peak_mb"] = _tensor_peak_mb(step)
    result["model_flops"] = fwd if spec["mode"] == "fwd" else 3 * fwd
    return result


def run_model(spec: dict, device) -> dict:
    import torch

    from detector.config import load_config
    from detector.models.build import build_model
    from detector.structures import ImageBatch

    cfg = load_config(None, BENCH_MODEL + ["model.backbone.pretrained=none", f"model.attention_impl={spec['impl']}",
                             f"model.num_queries_one2many={spec.get('one2many', 0)}"])
    model, criterion, postprocessor = build_model(cfg)
    model.to(device)
    g = torch.Generator().manual_seed(0)
    size, s_size = cfg.data.query_max_size, cfg.model.support_size
    b = 2 if spec["mode"] == "train" else 1
    query = ImageBatch.from_tensors([torch.rand(3, size, size, generator=g) for _ in range(b)]).to(device)
    support = ImageBatch.from_tensors([torch.rand(3, s_size, s_size, generator=g) for _ in range(b)]).to(device)
    targets = [{"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.25, 0.2]], device=device)} for _ in range(b)]
    if spec["mode"] == "train":
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            with _autocast(device):
                loss = criterion(model(query, support), targets)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.no_grad(), _autocast(device):
                postprocessor(model(query, support), query.image_sizes)

    result = _timed(step, spec["warmup"], spec["iters"], device)
    result["batch"] = b
    return result


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

    return _timed(step, spec["warmup"], spec["iters"], device)


def backbone_table(results: list[dict]) -> str:
    by = {(r["size"], r["impl"]): r for r in results}
    lines = ["| image px | plain ms per image | folded ms per image | folded / plain |", "|---|---|---|---|"]
    for size in dict.fromkeys(r["size"] for r in results):
        plain, folded = by.get((size, "plain"), {}), by.get((size, "folded"), {})
        a, b = plain.get("median_s"), folded.get("median_s")
        err = plain.get("error") or folded.get("error")
        lines.append(f"| {size} | {_fmt(a and a * 1e3, 1)} | {_fmt(b and b * 1e3, 1)} | {_fmt(a and b and b / a, 2)} |"
                     + (f" error: {err}" if err else ""))
    return "\n".join(lines)


def run_matmul(spec: dict, device) -> dict:
    import torch

    n = 4096 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    result = _timed(lambda: torch.mm(a, b), 2, 10 if device.type == "cpu" else 50, device)
    result["gflops"] = 2 * n**3 / result["min_s"] / 1e9
    result["dtype"] = str(dtype).replace("torch.", "")
    return result


def _chunked_attention(q, k, v, bias, mask, block: int = 64):
    """A candidate: exact attention over blocks of object queries with a custom backward that
    recomputes each block's probabilities from the saved log-sum-exp (memory O(block * N))."""
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


def run_candidate(spec: dict, device) -> dict:
    import torch
    import torch.nn.functional as F

    from detector.models import indirect_attention as ia
    from detector.models import relative_bias as rb

    g = torch.Generator().manual_seed(0)
    b, h, nq, side, dh = 2, 8, 1800, 32, 32
    name = spec["impl"]
    if name.startswith("mlp_"):
        rpb = rb.BoxRelativePositionBias(h, 512, recompute_hidden=name == "mlp_recomputed").to(device)
        boxes = (torch.rand(b, nq, 4, generator=g) * 0.5 + 0.2).to(device)
        valid = torch.tensor([[side, side]] * b, device=device)

        def compute():
            bias = rpb(boxes, (side, side), valid)
            return bias.bias_y.sum() + bias.bias_x.sum()
    else:
        def leaf(*shape):
            return torch.randn(*shape, generator=g).to(device).requires_grad_(spec["mode"] == "fwdbwd")

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
              "sdpa_unpadded": unpadded, "chunked": _chunked_attention}[name]

        def compute():
            return fn(q, k, v, bias, mask).square().sum()

    if spec["mode"] == "fwd":
        def step():
            with torch.no_grad():
                compute()
    else:
        def step():
            compute().backward()
    result = _timed(step, spec["warmup"], spec["iters"], device)
    if device.type == "cpu":
        result["tensor_peak_mb"] = _tensor_peak_mb(step)
    return result


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    run = {"decoder": run_decoder, "model": run_model, "matmul": run_matmul, "candidate": run_candidate,
           "backbone": run_backbone}[spec["kind"]]
    return {**spec, **run(spec, device)}


# ---------------------------------------------------------------------------------------------
# Parent side: start the workers, print the tables.
# ---------------------------------------------------------------------------------------------
def launch(spec: dict, timeout: float) -> dict:
    """One worker process; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "tools.benchmark", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def merge(results: list[dict], keys: tuple) -> list[dict]:
    """One result per configuration: the timed runs of all its processes pooled (median over all),
    the largest peak memory (whole, rise, tensors) of its processes."""
    groups: dict = {}
    for r in results:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for rs in groups.values():
        ok = [r for r in rs if "error" not in r]
        m = dict(ok[0] if ok else rs[0])
        if ok:
            m["times_s"] = [t for r in ok for t in r["times_s"]]
            m["median_s"], m["min_s"] = statistics.median(m["times_s"]), min(m["times_s"])
            m["rise_mb"] = max(r["peak_rss_mb"] - r["base_rss_mb"] for r in ok)
            for k in ("peak_rss_mb", "cuda_peak_mb", "tensor_peak_mb"):
                values = [r[k] for r in ok if r.get(k) is not None]
                m[k] = max(values) if values else None
            m["processes"] = len(ok)
        out.append(m)
    return out


def _fmt(x, digits=0):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _measures(f: dict, fb: dict) -> dict:
    """Forward and forward+backward results of one configuration -> the numbers of a table row."""
    ms = lambda r: r["median_s"] * 1e3 if r.get("median_s") else None  # noqa: E731
    cuda = fb.get("cuda_peak_mb")
    return {"fwd ms": ms(f), "fwd+bwd ms": ms(fb),
            "peak MB": cuda or fb.get("peak_rss_mb"),
            "rise MB": cuda or fb.get("rise_mb", (fb.get("peak_rss_mb") or 0) - (fb.get("base_rss_mb") or 0) or None),
            "tensor MB": cuda or fb.get("tensor_peak_mb"),
            "error": f.get("error") or fb.get("error")}


def comparison_table(results: list[dict], group: str, peak_gflops: float, pair: tuple) -> str:
    """Rows per (``group`` value, kernel), then ``pair[1]`` / ``pair[0]`` ratios per ``group`` value."""
    by = {(r.get(group), r["impl"], r["mode"]): r for r in results}
    has_flops = any("model_flops" in r for r in results)
    head = f"| {group} | impl | fwd ms | fwd+bwd ms | fwd+bwd peak memory MB: whole (rise) | tensors |"
    lines = [head + (" fwd+bwd GFLOP/s (% of matmul peak) |" if has_flops else ""),
             "|---" * (7 if has_flops else 6) + "|"]
    ratios = ["", f"| {group} | {pair[1]} / {pair[0]}: fwd time | fwd+bwd time | peak memory: whole | rise | tensors |",
              "|---|---|---|---|---|---|"]
    for key in dict.fromkeys(r.get(group) for r in results):
        rows = {}
        for impl in dict.fromkeys(r["impl"] for r in results if r.get(group) == key):
            fb = by.get((key, impl, "fwdbwd"), {})
            m = rows[impl] = _measures(by.get((key, impl, "fwd"), {}), fb)
            line = (f"| {key} | {impl} | {_fmt(m['fwd ms'])} | {_fmt(m['fwd+bwd ms'])} | {_fmt(m['peak MB'])} "
                    f"({_fmt(m['rise MB'])}) | {_fmt(m['tensor MB'])} |")
            if has_flops:
                gf = fb["model_flops"] / fb["median_s"] / 1e9 if m["fwd+bwd ms"] else None
                line += f" {_fmt(gf)} ({_fmt(gf and 100 * gf / peak_gflops)}%) |"
            lines.append(line + (f" error: {m['error']}" if m["error"] else ""))
        if pair[0] in rows and pair[1] in rows:
            cols = ("fwd ms", "fwd+bwd ms", "peak MB", "rise MB", "tensor MB")
            r, f = rows[pair[0]], rows[pair[1]]
            ratios.append(f"| {key} | " + " | ".join(
                _fmt(f[c] / r[c] if f[c] is not None and r[c] else None, 3) for c in cols) + " |")
    return "\n".join(lines + (ratios if len(ratios) > 3 else []))


def model_table(results: list[dict]) -> str:
    lines = ["| impl | object queries | training images/s (batch 2) | inference ms per pair | peak MB (train) |",
             "|---|---|---|---|---|"]
    by = {(r["impl"], r.get("one2many", 0), r["mode"]): r for r in results}
    for impl, o2m in dict.fromkeys((r["impl"], r.get("one2many", 0)) for r in results):
        tr, inf = by.get((impl, o2m, "train"), {}), by.get((impl, o2m, "infer"), {})
        ips = tr["batch"] / tr["median_s"] if tr.get("median_s") else None
        ms = inf["median_s"] * 1e3 / inf["batch"] if inf.get("median_s") else None
        err = tr.get("error") or inf.get("error")
        peak = tr.get("cuda_peak_mb") or tr.get("peak_rss_mb")
        lines.append(f"| {impl} | 300{f' + {o2m}' if o2m else ''} | {_fmt(ips, 2)} | {_fmt(ms)} | {_fmt(peak)} |"
                     + (f" error: {err}" if err else ""))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", default="", help="comma-separated: decoder, model, backbone, candidates, gpu "
                   "(default: gpu with --device cuda, else decoder,model)")
    p.add_argument("--scale", default="", choices=["", "cpu", "cuda"],
                   help="sizes of the gpu suite (default: the device's; detector.benchmark.gpu_suite.SCALES)")
    p.add_argument("--points", default=",".join(POINTS), help=f"decoder points, from {list(POINTS)}")
    p.add_argument("--impls", default="reference,fused", help="kernels to compare (the first is the baseline)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"for --suite candidates, from {CANDIDATES}")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="processes per configuration, interleaved across kernels")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    p.add_argument("--json", default="", help="also write every worker's result to this JSON file")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU is available on this machine", file=sys.stderr)
        sys.exit(2)
    impls = args.impls.split(",")
    if (args.suite or ("gpu" if device == "cuda" else "")) == "gpu":
        gpu_main(args, torch.device(device), impls)
        return
    fast = impls[-1]
    base = {"device": device, "threads": args.threads, "warmup": args.warmup, "iters": args.iters}
    suites = (args.suite or "decoder,model").split(",")
    if "gpu" in suites:
        print("error: --suite gpu runs on its own (it is one process)", file=sys.stderr)
        sys.exit(2)
    everything = []
    start_load = os.getloadavg()

    def go(spec):
        r = launch({**base, **spec}, args.timeout)
        print(f"  {json.dumps({k: r.get(k) for k in ('kind', 'point', 'impl', 'mode', 'one2many', 'median_s', 'peak_rss_mb', 'error') if k in r})}",
              file=sys.stderr, flush=True)
        everything.append(r)
        return r

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {args.threads} threads"
    print("$ python -m tools.benchmark " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"# torch {torch.__version__}, {name}; {args.repeats} process(es) per configuration, each {args.warmup} "
          f"warm-up + {args.iters} timed runs; medians over the timed runs\n")
    peak = go({"kind": "matmul", "warmup": 2, "iters": 10})
    peak_gflops = peak.get("gflops", 0.0)
    print(f"matmul peak ({peak.get('dtype')}): {peak_gflops:.0f} GFLOP/s\n")
    if "decoder" in suites:
        results = [go({"kind": "decoder", "point": pt, "impl": impl, "mode": mode})
                   for pt in args.points.split(",") for mode in ("fwd", "fwdbwd")
                   for _ in range(args.repeats) for impl in impls]
        results = merge(results, ("point", "impl", "mode"))
        print("## Decoder (6 layers, d 256, 8 heads, batch 2)\n\n" + comparison_table(results, "point", peak_gflops, (impls[0], fast)) + "\n")
    if "model" in suites:
        results = [go({"kind": "model", "impl": impl, "one2many": o2m, "mode": mode})
                   for o2m in (0, 1500) for mode in (("train", "infer") if o2m == 0 else ("train",))
                   for _ in range(args.repeats) for impl in impls]
        results = merge(results, ("impl", "one2many", "mode"))
        print("## Whole model (mobilenetv2_100, 512 px query, 128 px support)\n\n" + model_table(results) + "\n")
    if "backbone" in suites:
        results = [go({"kind": "backbone", "size": size, "impl": impl, "mode": "infer"})
                   for size in (256, 128) for _ in range(args.repeats) for impl in ("plain", "folded")]
        results = merge(results, ("size", "impl"))
        print("## Frozen backbone body, one image per pass (mobilenetv2_100, stride 16)\n\n" + backbone_table(results) + "\n")
    if "candidates" in suites:
        results = [go({"kind": "candidate", "impl": c, "mode": mode, "part": "bias MLPs" if c.startswith("mlp") else "attention"})
                   for mode in ("fwd", "fwdbwd") for _ in range(args.repeats) for c in args.candidates.split(",")]
        results = merge(results, ("impl", "mode"))
        attention = comparison_table([r for r in results if r["part"] == "attention"], "part", 0, ("reference", "fused"))
        mlp = comparison_table([r for r in results if r["part"] != "attention"], "part", 0, ("mlp_stored", "mlp_recomputed"))
        print("## Candidates: one cross-attention step (B 2, 8 heads, 1800 object queries, 32x32 keys, d_head 32), "
              "one layer's box-bias MLPs (both axes, hidden 512)\n\n"
              + attention + "\n\n" + mlp + "\n")
    loads = [" ".join(f"{x:.1f}" for x in la) for la in (start_load, os.getloadavg())]
    print(f"load average (1, 5, 15 min): {loads[0]} at the start, {loads[1]} at the end (other processes slow the "
          "workers down: every op of a multi-threaded run waits for its slowest thread)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(everything, f, indent=1)


def gpu_main(args, device, impls: list) -> None:
    """``--suite gpu``: the tables of detector.benchmark.gpu_suite, in this process."""
    import torch

    from detector.benchmark.gpu_suite import SCALES, run_suite, tables

    scale = dict(SCALES[args.scale or device.type])
    if args.iters != 3 or args.warmup != 1:  # only when given (the CPU suites' defaults are 1 and 3)
        scale.update(iters=args.iters, warmup=args.warmup)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print("$ python -m tools.benchmark " + " ".join(sys.argv[1:]), flush=True)
    rows = run_suite(device, scale, impls, progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    print(tables(rows, name, torch.__version__, scale))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": name, "torch": torch.__version__, "scale": scale, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
