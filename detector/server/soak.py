"""Answers checked, and a soak of the web server: good and bad requests from several clients for a
given time at the server's default limits, its memory sampled every few seconds.

Run by ``python tools/serve_load.py --checkpoint CKPT --soak MINUTES [--plot soak.png]``. It
reuses the requests, the client loop and the memory sampler of :mod:`detector.server.load_test`;
every answer is checked (:func:`wrong_answers`: good ones against ``predict`` in this process).
"""
from __future__ import annotations

import io
import time
from typing import Sequence

from .load_test import Pair, Record, RssSampler, build_specs, make_pairs, run_load, start_server, stop_server, summarize


def expected_answers(checkpoint: str, pairs: list[Pair], score_threshold: float = 0.0) -> list[dict]:
    """What :meth:`detector.inference.OneShotDetector.predict` answers for each pair in this process
    (the box as the request sends it, to one decimal)."""
    import numpy as np
    from PIL import Image

    from ..inference import OneShotDetector

    detector = OneShotDetector.from_checkpoint(checkpoint)
    decode = lambda data: np.asarray(Image.open(io.BytesIO(data)))  # noqa: E731
    return [detector.predict(decode(p.query), decode(p.support), support_box=tuple(round(v, 1) for v in p.box),
                             score_threshold=score_threshold) for p in pairs]


def same_answer(answer: dict, expected: dict) -> bool:
    """Same image size and detections up to the last rounded digit (the server runs in another
    process, whose float rounding of the last digit may differ)."""
    import numpy as np

    a, e = answer.get("detections", []), expected["detections"]
    return (answer.get("width"), answer.get("height")) == (expected["width"], expected["height"]) and len(a) == len(e) \
        and all(abs(x["score"] - y["score"]) <= 2e-4 and np.allclose(x["bbox"], y["bbox"], atol=0.02) for x, y in zip(a, e))


def wrong_answers(records: list[Record], pairs: list[Pair], expected: list[dict]) -> list[Record]:
    """The records whose answer is not what it should be: a good request not answered 200 with its
    pair's image name and :func:`same_answer` detections, a bad one not answered its status with
    one ``{"error": one line}``."""
    wrong = []
    for r in records:
        if r.spec.kind == "good":
            ok = r.status == 200 and r.body.get("image") == pairs[r.spec.pair].name and same_answer(r.body, expected[r.spec.pair])
        else:
            ok = r.status == r.spec.expected and set(r.body) == {"error"} and "\n" not in str(r.body["error"])
        if not ok:
            wrong.append(r)
    return wrong


def soak(serve: Sequence[str], checkpoint: str, minutes: float, clients: int = 4, bad_share: float = 0.2,
         pairs: int = 8, images_dir: str = "", size: int = 256, sample_every_s: float = 5.0,
         server_args: tuple = ()) -> dict:
    """Start a server at its default limits (plus ``server_args``), warm it up, send good and bad
    requests (the kinds of :data:`BAD_KINDS`) from ``clients`` clients for ``minutes``, sampling its
    resident memory every ``sample_every_s`` s, stop it, and check every answer
    (:func:`wrong_answers`, the good ones against ``predict`` in this process). Returns
    :func:`summarize`'s dict plus ``wrong`` (count), ``wrong_examples``, ``wall_s``, ``minutes``,
    ``status_5xx`` and ``rss_series`` ``[[seconds, MiB], ...]`` with ``rss_mb`` holding ``first_minute``
    (the sample at one minute, or at a third of a shorter soak), ``end`` and ``drift`` (end over
    first_minute, minus 1)."""
    from .app import ServeLimits

    good_pairs = make_pairs(pairs, size, images_dir)
    cap = ServeLimits().max_upload_bytes
    specs = build_specs(good_pairs, 200, bad_share, cap, seed=2)
    proc, url = start_server(serve, checkpoint, *server_args)
    try:
        run_load(url, build_specs(good_pairs, 16, 0.5, cap, seed=1), clients, 120.0)
        sampler = RssSampler(proc.pid, interval=sample_every_s)
        start = time.perf_counter()
        with sampler:
            records = run_load(url, specs, clients, minutes * 60.0, cycle=True)
        wall = time.perf_counter() - start
        end = sampler.read()
        peak = sampler.read("VmHWM")
    finally:
        stop_server(proc)
    series = [[t, v] for t, v in zip(sampler.times, sampler.samples)] + [[wall, end]]
    mark = min(60.0, wall / 3)
    first = next(v for t, v in series if t >= mark)
    rss = {"first_minute": first, "end": end, "drift": end / first - 1, "peak_during": max(v for _, v in series),
           "process_peak": peak, "samples": len(series)}
    wrong = wrong_answers(records, good_pairs, expected_answers(checkpoint, good_pairs))
    t0 = min((r.sent_at for r in records), default=0.0)
    return {**summarize(records, rss), "status_5xx": sum(r.status >= 500 for r in records), "wrong": len(wrong),
            "wrong_examples": [(r.spec.kind, r.status, r.error or str(r.body)[:200]) for r in wrong[:5]],
            "wall_s": wall, "minutes": minutes, "clients": clients, "rss_series": series,
            "good_latency_series": [[r.sent_at - t0, r.seconds * 1000] for r in records
                                    if r.spec.kind == "good" and r.status == 200]}


def plot_soak(summary: dict, path: str) -> str:
    """The soak's picture at ``path`` (PNG): the server's resident memory over the run, with its
    value at the first minute and the +-5% band, above the latency of every good request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s / 60 for s, _ in summary["rss_series"]]
    rss = [v for _, v in summary["rss_series"]]
    first = summary["rss_mb"]["first_minute"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    top.plot(t, rss, color="tab:blue", lw=1.5, label="server RSS")
    top.axhline(first, color="grey", lw=1, ls="--", label=f"at the first minute ({first:.0f} MiB)")
    top.axhspan(first * 0.95, first * 1.05, color="grey", alpha=0.15, label="within 5%")
    top.set_ylabel("resident memory (MiB)")
    top.set_ylim(min(rss + [first * 0.95]) * 0.97, max(rss + [first * 1.05]) * 1.03)
    top.legend(loc="lower right")
    top.set_title(f"soak: {summary['sent']} requests from {summary['clients']} clients in "
                  f"{summary['wall_s'] / 60:.1f} min; 5xx: {summary['status_5xx']}; wrong answers: {summary['wrong']}")
    times = summary.get("good_latency_series", [])
    if times:
        bottom.scatter([a / 60 for a, _ in times], [b for _, b in times], s=3, color="tab:green", alpha=0.5)
    bottom.set_ylabel("good request latency (ms)")
    bottom.set_xlabel("minutes since the start of the soak")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
