"""The GPU suite of ``tools/benchmark.py`` (``--suite gpu``, the default with ``--device cuda``).

Runs in one process, measurement after measurement (on a GPU a process per measurement would cost
more start-up than the suite; the CPU suites keep one process each). Everything the issue's tables
ask for, for each kernel:

* **decoder**: the default config's decoder (6 layers, d 256, 8 heads, FFN 2048, bias MLP hidden
  512), forward + backward at training points and a forward at an evaluation point, with a padding
  mask and the hybrid-matching block mask, as :func:`detector.benchmark.decoder.decoder_step` builds it;
* **training**: the whole model of the default config (MobileNetV2, random weights, trained) with
  300 + 1500 object queries, one real training step (:func:`detector.engine.train_step`: bf16
  autocast on CUDA, losses with matching, backward, clipping, the optimiser of
  :func:`detector.optim.build_optimizer`);
* **inference**: the same model, one query + exemplar pair at the single size and a batch at the
  batched size, forward and postprocessing (boxes in pixels), from tensors already on the device;
* **demo**: the demo config's model (``configs/synthetic.yaml``: frozen backbone, cached features)
  trained as the demo trains it, its batches taken from the feature cache (on the device).

Times are medians after warm-ups with ``torch.cuda.synchronize()`` around each step
(:func:`detector.benchmark.timing.measure`); memory is the ``rise_mb`` of that helper: on CUDA the
peak allocated during the steps above what was allocated before them, on the CPU the rise of the
resident set size. For the training and inference steps the table
also gives what :class:`detector.utils.op_audit.OpAudit` counts in one more step: operators
dispatched (about the kernels launched) and host synchronisations (on the CPU with NMS calls grouped
as on CUDA, ``detector.models.nms.CHUNK_BOXES``).

Sizes: ``SCALES["cuda"]`` are the issue's operating points; ``SCALES["cpu"]`` smaller ones so
that the suite runs on the CPU too (its numbers are not comparable with the GPU's).
"""
from __future__ import annotations

import datetime
import statistics
import time
from typing import Callable, Optional

from .decoder import BENCH_MODEL
from .timing import measure, sync

SCALES = {
    "cuda": {
        "decoder": [  # (label, batch, grid rows, grid columns, one-to-one, one-to-many object queries)
            ("32x32, 300 + 1500, batch 2", 2, 32, 32, 300, 1500),
            ("32x32, 300 + 1500, batch 16", 16, 32, 32, 300, 1500),
            ("50x84 (800x1333 images), 300 + 1500, batch 8", 8, 50, 84, 300, 1500),
            ("evaluation, 32x32, 300, batch 1, forward", 1, 32, 32, 300, 0),
        ],
        "train": {"size": 512, "support": 128, "batch": 16, "one2one": 300, "one2many": 1500},
        "infer": {"size": 512, "batched_size": 256, "batch": 64, "support": 128, "queries": 300},
        "demo": {"batch": 8, "batches": 12, "compile": [False, True]},
        "warmup": 3, "iters": 10,
    },
    "cpu": {
        "decoder": [
            ("16x16, 100 + 300, batch 2", 2, 16, 16, 100, 300),
            ("evaluation, 16x16, 100, batch 1, forward", 1, 16, 16, 100, 0),
        ],
        "train": {"size": 256, "support": 64, "batch": 2, "one2one": 100, "one2many": 300},
        "infer": {"size": 256, "batched_size": 128, "batch": 4, "support": 64, "queries": 100},
        "demo": {"batch": 8, "batches": 3, "compile": [False]},
        "warmup": 1, "iters": 2,
    },
}


def audit(step: Callable[[], object], *device_tensors) -> dict:
    """Operators and host synchronisations of one more ``step``, and where the syncs are."""
    from detector.utils.op_audit import OpAudit

    with OpAudit(*device_tensors) as a:
        step()
    return {"ops": a.ops, "syncs": a.syncs, "sync_sites": dict(a.sync_sites)}


def _guarded(fn: Callable[[], dict]) -> dict:
    """``fn()``, or ``{"error": one line}`` (an out-of-memory error must not end the suite)."""
    import torch

    try:
        return fn()
    except (RuntimeError, ValueError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def _batches(g, n: int, batch: int, size: int, support: int, device):
    """``n`` random ``(query, support, targets)`` batches on ``device`` (two boxes per image)."""
    import torch

    from detector.structures import ImageBatch

    out = []
    for _ in range(n):
        q = ImageBatch.from_tensors([torch.rand(3, size, size, generator=g) for _ in range(batch)]).to(device)
        s = ImageBatch.from_tensors([torch.rand(3, support, support, generator=g) for _ in range(batch)]).to(device)
        t = [{"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.25, 0.2]], device=device)} for _ in range(batch)]
        out.append((q, s, t))
    return out


def _device_tensors(model, batches) -> list:
    """What lives on the device for :func:`audit`: the model's parameters and buffers, the batches."""
    out = [model.parameters(), model.buffers()]
    for q, s, t in batches:
        out += [q.tensors, q.mask, q.image_sizes, s.tensors, s.mask, s.image_sizes, t]
    return out


def decoder_points(device, scale: dict, impls: list) -> list[dict]:
    """One row per decoder point and kernel."""
    from .decoder import decoder_step

    rows = []
    for label, b, gh, gw, n_one, n_many in scale["decoder"]:
        for impl in impls:
            spec = {"impl": impl, "batch": b, "grid_h": gh, "grid_w": gw, "one2one": n_one, "one2many": n_many,
                    "mode": "fwdbwd" if n_many else "fwd"}

            def run():
                step, _ = decoder_step(spec, device)
                return measure(step, device, scale["warmup"], scale["iters"])
            rows.append({"part": "decoder", "point": label, "impl": impl, **_guarded(run)})
    return rows


def _paper_model(device, impl: str, one2one: int, one2many: int):
    from detector.config import load_config
    from detector.models import build_model

    cfg = load_config(None, BENCH_MODEL + ["model.backbone.pretrained=none", f"model.attention_impl={impl}",
                             f"model.num_queries={one2one}", f"model.num_queries_one2many={one2many}"])
    model, criterion, postprocessor = build_model(cfg)
    return cfg, model.to(device), criterion, postprocessor


def training(device, scale: dict, impls: list) -> list[dict]:
    """Images/s of the whole default-config model, one row per kernel."""
    import torch

    from detector.engine import amp_dtype, train_step
    from detector.optim import build_optimizer

    p = scale["train"]
    rows = []
    for impl in impls:
        def run():
            cfg, model, criterion, _ = _paper_model(device, impl, p["one2one"], p["one2many"])
            model.train()
            optimizer = build_optimizer(model, cfg.train)
            scaler = torch.amp.GradScaler("cuda", enabled=False)
            amp = amp_dtype(device, True)
            batches = _batches(torch.Generator().manual_seed(0), 2, p["batch"], p["size"], p["support"], device)
            turn = iter(range(1 << 30))

            def step():
                q, s, t = batches[next(turn) % len(batches)]
                train_step(model, criterion, optimizer, scaler, q, s, t, amp, cfg.train.clip_max_norm)
            out = measure(step, device, scale["warmup"], scale["iters"])
            out.update(audit(step, *_device_tensors(model, batches)))
            out["images_per_s"] = p["batch"] / out["median_s"]
            return out
        rows.append({"part": "train", "impl": impl, "batch": p["batch"], "size": p["size"],
                     "queries": f"{p['one2one']} + {p['one2many']}", **_guarded(run)})
    return rows


def inference(device, scale: dict, impls: list) -> list[dict]:
    """Latency of one pair and throughput of a batch, one row per kernel."""
    import torch

    from detector.engine import amp_dtype
    from detector.models.postprocess import results_to_host

    p = scale["infer"]
    rows = []
    for impl in impls:
        def run():
            _, model, _, postprocessor = _paper_model(device, impl, p["queries"], 0)
            model.eval()
            amp = amp_dtype(device, True)
            g = torch.Generator().manual_seed(0)
            out = {}
            for key, batch, size in (("single", 1, p["size"]), ("batched", p["batch"], p["batched_size"])):
                data = _batches(g, 1, batch, size, p["support"], device)[0]

                def step():
                    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                        results = postprocessor(model(data[0], data[1]), data[0].image_sizes)
                    return results_to_host(results)  # as predict() returns them
                m = measure(step, device, scale["warmup"], scale["iters"])
                out[f"{key}_ms"] = m["median_s"] * 1e3
                out[f"{key}_pairs_per_s"] = batch / m["median_s"]
                out[f"{key}_peak_mb"] = m["rise_mb"]
                a = audit(step, *_device_tensors(model, [data]))
                out[f"{key}_syncs"], out[f"{key}_ops"] = a["syncs"], a["ops"]
            return out
        rows.append({"part": "infer", "impl": impl, **p, **_guarded(run)})
    return rows


def demo_training(device, scale: dict, config: str, compiled: bool = False) -> dict:
    """Images/s of the demo config's training step on cached features (``config``: the path of
    ``configs/synthetic.yaml``); ``compiled``: with ``train.compile=true`` (``torch.compile``; its compilation happens in the
    first pass over the batches, before the timed steps)."""
    import torch

    from detector.config import load_config
    from detector.engine import amp_dtype, to_device, train_step
    from detector.features import FeatureCache
    from detector.models import build_model
    from detector.optim import build_optimizer
    from detector.structures import ImageBatch

    p = scale["demo"]

    def run():
        cfg = load_config(config, ["model.backbone.pretrained=none"])
        model, criterion, _ = build_model(cfg)
        model.to(device).train()
        train_model = torch.compile(model) if compiled else model
        cache = FeatureCache(model.backbone, keep_pixels=model.uses_pixels)
        optimizer = build_optimizer(model, cfg.train)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        amp = amp_dtype(device, cfg.train.amp)
        g = torch.Generator().manual_seed(0)
        size, s_size, b = cfg.data.query_max_size, cfg.model.support_size, p["batch"]
        loader = []  # host batches as the data loader gives them; their features get cached on the first pass
        for _ in range(p["batches"]):
            q = ImageBatch.from_tensors([torch.rand(3, size, size, generator=g) for _ in range(b)])
            s = ImageBatch.from_tensors([torch.rand(3, 48 + 8 * (i % 4), 48 + 8 * (i % 3), generator=g) for i in range(b)])
            t = [{"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.25, 0.2]])} for _ in range(b)]
            loader.append((q, s, t))
        turn = iter(range(1 << 30))

        def step():
            q, s, t = to_device(*loader[next(turn) % len(loader)], device, cache, s_size)
            train_step(train_model, criterion, optimizer, scaler, q, s, t, amp, cfg.train.clip_max_norm)
        t0 = time.perf_counter()
        for _ in range(len(loader)):  # fill the cache, as the demo's first epoch does (and compile)
            step()
        sync(device)
        first_pass = time.perf_counter() - t0
        out = measure(step, device, scale["warmup"], max(scale["iters"], 2 * len(loader)))
        if not compiled:  # (an audit's dispatcher hooks would change what a compiled step runs)
            out.update(audit(step, model.parameters(), model.buffers(), list(cache.store.values())))
        out["images_per_s"] = b / out["median_s"]
        out["first_pass_s"] = first_pass
        return out

    return {"part": "demo", "batch": p["batch"], "compiled": compiled, **_guarded(run)}


def run_suite(device, scale: dict, impls: list, demo_config: str,
              progress: Optional[Callable[[str], None]] = None) -> list[dict]:
    """Every measurement of the suite at ``scale`` -> result rows (``demo_config``: the path of the
    demo's config, ``configs/synthetic.yaml``)."""
    from detector.models import nms

    say = progress or (lambda _: None)
    rows = []
    chunks = dict(nms.CHUNK_BOXES)
    # On the CPU, NMS calls grouped as on CUDA, so that the host waits counted are a GPU's.
    nms.CHUNK_BOXES[device.type] = nms.CHUNK_BOXES["cuda"]
    try:
        for name, fn in (("decoder", lambda: decoder_points(device, scale, impls)),
                         ("training", lambda: training(device, scale, impls)),
                         ("inference", lambda: inference(device, scale, impls)),
                         ("demo", lambda: [demo_training(device, scale, demo_config, c) for c in scale["demo"]["compile"]])):
            t0 = time.perf_counter()
            rows += fn()
            say(f"{name}: {time.perf_counter() - t0:.0f} s")
    finally:
        nms.CHUNK_BOXES.clear()
        nms.CHUNK_BOXES.update(chunks)
    return rows


def _f(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _err(r: dict) -> str:
    return f" error: {r['error']}" if r.get("error") else ""


def _section(title: str, columns: list, lines: list) -> list[str]:
    return ["", f"### {title}", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"] + lines


def _ms(r: dict) -> str:
    return _f(r.get("median_s") and r["median_s"] * 1e3)


def _decoder_tables(rows: list[dict]) -> list[str]:
    dec = [r for r in rows if r["part"] == "decoder"]
    out = _section("Decoder (6 layers, d 256, 8 heads, FFN 2048, bias MLP hidden 512; forward + backward unless noted)",
                   ["point", "impl", "ms", "peak MB"],
                   [f"| {r['point']} | {r['impl']} | {_ms(r)} | {_f(r.get('rise_mb'), 0)} |" + _err(r) for r in dec])
    by = {(r["point"], r["impl"]): r for r in dec}
    impls = list(dict.fromkeys(r["impl"] for r in dec))
    if len(impls) != 2:
        return out
    ratios = []
    for point in dict.fromkeys(r["point"] for r in dec):
        a, b = by.get((point, impls[0]), {}), by.get((point, impls[1]), {})
        t = b["median_s"] / a["median_s"] if a.get("median_s") and b.get("median_s") else None
        m = b["rise_mb"] / a["rise_mb"] if a.get("rise_mb") and b.get("rise_mb") is not None else None
        ratios.append(f"| {point} | {_f(t, 2)} | {_f(m, 3)} |")
    return out + ["", f"| point | {impls[1]} / {impls[0]}: time | memory |", "|---|---|---|"] + ratios


def tables(rows: list[dict], device_name: str, torch_version: str, scale: dict) -> str:
    """The suite's markdown tables."""
    today = datetime.date.today().isoformat()
    out = [f"GPU suite, {today}: {device_name}, torch {torch_version}; medians of {scale['iters']} steps after "
           f"{scale['warmup']} warm-ups; memory: the rise during the steps (CUDA: peak allocated above what was "
           "held before them; CPU: resident set size, detector.benchmark.timing)"]
    out += _decoder_tables(rows)
    out += _section("Whole model, training (default config, MobileNetV2 trained, AdamW, one train_step)",
                    ["impl", "images", "object queries", "batch", "images/s", "ms/step", "peak MB", "operators/step",
                     "host syncs/step"],
                    [f"| {r['impl']} | {r['size']} px | {r['queries']} | {r['batch']} | {_f(r.get('images_per_s'))} | "
                     f"{_ms(r)} | {_f(r.get('rise_mb'), 0)} | {r.get('ops', 'n/a')} | {r.get('syncs', 'n/a')} |" + _err(r)
                     for r in rows if r["part"] == "train"])
    queries = next((r["queries"] for r in rows if r["part"] == "infer"), "n/a")
    out += _section(f"Inference (default config, {queries} object queries, forward + postprocessing, results copied "
                    "to the host)", ["impl", "one pair: px", "ms", "host syncs", "batch: px x pairs", "pairs/s", "host syncs"],
                    [f"| {r['impl']} | {r['size']} | {_f(r.get('single_ms'), 2)} | {r.get('single_syncs', 'n/a')} | "
                     f"{r['batched_size']} x {r['batch']} | {_f(r.get('batched_pairs_per_s'), 0)} | "
                     f"{r.get('batched_syncs', 'n/a')} |" + _err(r) for r in rows if r["part"] == "infer"])
    out += _section("Demo config (configs/synthetic.yaml: frozen backbone, cached features on the device, 256 px)",
                    ["torch.compile", "batch", "images/s", "ms/step", "first pass s", "peak MB", "operators/step",
                     "host syncs/step"],
                    [f"| {'yes' if r['compiled'] else 'no'} | {r['batch']} | {_f(r.get('images_per_s'))} | {_ms(r)} | "
                     f"{_f(r.get('first_pass_s'))} | {_f(r.get('rise_mb'), 0)} | {r.get('ops', 'n/a')} | "
                     f"{r.get('syncs', 'n/a')} |" + _err(r) for r in rows if r["part"] == "demo"])
    return "\n".join(out)
