"""Load test of the web server (``tools/serve.py``) on this machine only: bounded in requests and in time.

Run by ``python tools/serve_load.py --checkpoint CKPT [--requests 200] [--clients 8] [--bad-share 0.2]
[--images DIR] [--size 256] [--json OUT]``. :func:`load_test` starts the server on a free 127.0.0.1 port, warms it up, then sends ``--requests`` requests from
``--clients`` concurrent clients, a share of them bad (not an image, a truncated image, a
decompression bomb, a body over the cap, a bad or outside box, a bad threshold, an unknown field, no
query). A client told 503 waits its ``Retry-After`` (at most 1 s) and tries again, up to 20 times.
It samples the server's resident memory all along and prints the good requests' p50 / p95 latency,
the memory before, at the peak of and after the run, and the answers counted by kind and status.
The test (``tests/serve/test_serve_load.py``) asserts on what :func:`load_test` returns.
"""
from __future__ import annotations

import io
import math
import os
import random
import socket
import struct
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence
from urllib.parse import urlparse

LOAD_UPLOAD_MB = 1.0  # the server's body cap during the load test, so an over-cap request stays cheap
# kind of bad request -> status the server must answer
BAD_KINDS = {"not_image": 400, "truncated": 400, "bomb": 413, "too_large": 413, "too_many_tiles": 413, "bad_box": 400,
             "box_outside": 400, "bad_threshold": 400, "unknown_field": 400, "no_query": 400}
# a plain 1024 px query at its own scale in 32 px tiles: about 1,850 tiles, over the server's default cap
MANY_TILES = {"size": 1024, "tile": 32}


@dataclass
class Pair:
    """A good request: query and support PNG bytes, exemplar box ``x,y,w,h`` (pixels)."""

    name: str
    query: bytes
    support: bytes
    box: tuple


@dataclass
class Spec:
    """One request to send: its kind (``good`` or a key of :data:`BAD_KINDS`), multipart parts,
    expected status and, for a good one, the index of its pair."""

    kind: str
    files: list
    data: dict
    expected: int
    pair: Optional[int] = None


@dataclass
class Record:
    """What one request got."""

    spec: Spec
    status: int = 0
    seconds: float = 0.0
    body: dict = field(default_factory=dict)
    retries: int = 0
    error: str = ""  # a transport failure (no HTTP answer)
    sent_at: float = 0.0  # time.time() when it was first sent


def png(array) -> bytes:
    """``uint8`` ``[H, W, 3]`` -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header then claims ``width x height`` pixels (a decompression bomb as far
    as a reader that trusts the header is concerned; there are no pixel data behind it)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts after signature, length, type
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def make_pairs(count: int, size: int, images_dir: str = "", seed: int = 0) -> list[Pair]:
    """``count`` good pairs: image files of ``images_dir`` (sorted, the next one as support) or
    random ``size`` px images; the box is the support's middle half."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    if images_dir:
        files = sorted(f for f in os.listdir(images_dir) if f.lower().endswith((".png", ".jpg", ".jpeg")))[:count + 1]
        arrays = [(f, np.asarray(Image.open(os.path.join(images_dir, f)).convert("RGB"))) for f in files]
    else:
        arrays = [(f"random{i}.png", rng.integers(0, 256, (size, size * 3 // 4 + 8 * i, 3), dtype=np.uint8))
                  for i in range(count + 1)]
    pairs = []
    for i in range(min(count, len(arrays) - 1)):
        (name, query), (_, support) = arrays[i], arrays[i + 1]
        h, w = support.shape[:2]
        pairs.append(Pair(name, png(query), png(support), (w / 4, h / 4, w / 2, h / 2)))
    return pairs


def bad_spec(kind: str, pair: Pair, max_upload_bytes: int) -> Spec:
    """A request of a bad ``kind`` built around ``pair``."""
    files = [("query", (pair.name, pair.query, "image/png")), ("support", ("s.png", pair.support, "image/png"))]
    data = {"support_box": ",".join(f"{v:.1f}" for v in pair.box)}
    if kind == "not_image":
        files[0] = ("query", ("notes.txt", b"this is not an image\n" * 20, "text/plain"))
    elif kind == "truncated":
        files[0] = ("query", (pair.name, pair.query[: len(pair.query) * 2 // 3], "image/png"))
    elif kind == "bomb":
        files[1] = ("support", ("bomb.png", bomb_png(30000, 30000), "image/png"))
    elif kind == "too_large":
        files[1] = ("support", ("big.png", pair.support + os.urandom(max_upload_bytes), "image/png"))
    elif kind == "too_many_tiles":
        import numpy as np

        side = MANY_TILES["size"]
        files = [("query", ("plain.png", png(np.full((side, side, 3), 127, np.uint8)), "image/png"))]
        data.update(rescale="native", size=str(MANY_TILES["tile"]))
    elif kind == "bad_box":
        data["support_box"] = "10,20,abc"
    elif kind == "box_outside":
        data["support_box"] = "100000,100000,10,10"
    elif kind == "bad_threshold":
        data["score_threshold"] = "1.5"
    elif kind == "unknown_field":
        data["tile_size"] = "512"  # an option the inference API does not have (yet)
    elif kind == "no_query":
        files = files[1:]
    else:
        raise ValueError(f"unknown bad kind {kind!r}; expected one of {list(BAD_KINDS)}")
    return Spec(kind, files, data, BAD_KINDS[kind])


def build_specs(pairs: list[Pair], requests: int, bad_share: float, max_upload_bytes: int,
                score_threshold: float = 0.0, seed: int = 0) -> list[Spec]:
    """``requests`` specs in a seeded random order: ``round(bad_share * requests)`` bad ones (the
    kinds in turn), the rest good (the pairs in turn)."""
    n_bad = round(bad_share * requests)
    kinds = list(BAD_KINDS)
    specs = [bad_spec(kinds[i % len(kinds)], pairs[i % len(pairs)], max_upload_bytes) for i in range(n_bad)]
    for i in range(requests - n_bad):
        p = pairs[i % len(pairs)]
        files = [("query", (p.name, p.query, "image/png")), ("support", ("s.png", p.support, "image/png"))]
        specs.append(Spec("good", files,
                          {"support_box": ",".join(f"{v:.1f}" for v in p.box), "score_threshold": str(score_threshold)},
                          200, pair=i % len(pairs)))
    random.Random(seed).shuffle(specs)
    return specs


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the load test targets this machine only (127.0.0.1), not {host!r}")


def send(client, url: str, spec: Spec, deadline: float) -> Record:
    """Send one request; on 503 wait ``Retry-After`` (at most 1 s) and retry, up to 20 times or
    the deadline."""
    record = Record(spec, sent_at=time.time())
    start = time.perf_counter()
    while True:
        try:
            r = client.post(url + "/api/predict", files=spec.files, data=spec.data)
        except Exception as e:  # noqa: BLE001 - a transport failure is a result to report
            record.error = f"{type(e).__name__}: {e}"
            break
        record.status = r.status_code
        try:
            record.body = r.json()
        except ValueError:
            record.body = {"raw": r.text[:200]}
        if r.status_code != 503 or record.retries >= 20 or time.time() > deadline:
            break
        record.retries += 1
        time.sleep(min(float(r.headers.get("Retry-After", "1")), 1.0))
    record.seconds = time.perf_counter() - start
    return record


def run_load(url: str, specs: list[Spec], clients: int, time_limit_s: float, cycle: bool = False) -> list[Record]:
    """Send ``specs`` from ``clients`` threads (one HTTP connection each); specs left when
    ``time_limit_s`` is over are not sent (and not returned). ``cycle``: send them over and over
    until then (a soak)."""
    import httpx

    _check_loopback(url)
    deadline = time.time() + time_limit_s
    lock = threading.Lock()
    records: list[Record] = []
    sent = [0]

    def client_loop():
        with httpx.Client(timeout=60.0) as client:
            while time.time() < deadline:
                with lock:
                    if sent[0] >= len(specs) and not cycle:
                        return
                    spec = specs[sent[0] % len(specs)]
                    sent[0] += 1
                rec = send(client, url, spec, deadline)
                with lock:
                    records.append(rec)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        for f in [pool.submit(client_loop) for _ in range(clients)]:
            f.result()
    return records


class RssSampler:
    """Samples a process's resident memory (``/proc/PID/status``, Linux) every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.samples, self.times = pid, interval, [], []  # MiB, seconds since start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def read(self, key: str = "VmRSS") -> float:
        """``key`` of ``/proc/PID/status`` in MiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
        raise KeyError(key)

    def _loop(self):
        start = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.samples.append(self.read())
            except (OSError, KeyError):
                return
            self.times.append(time.perf_counter() - start)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(serve: Sequence[str], checkpoint: str, *extra: str, timeout: float = 90.0,
                 cwd: Optional[str] = None) -> tuple[subprocess.Popen, str]:
    """The server command ``serve`` (e.g. ``[sys.executable, "tools/serve.py"]``) on a free 127.0.0.1
    port -> (process, base URL), once it answers ``/api/health``. ``RuntimeError`` with its output if
    it does not."""
    import httpx

    port = free_port()
    cmd = [*serve, "--checkpoint", checkpoint, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {proc.stdout.read()[-2000:]}")
        try:
            if httpx.get(url + "/api/health", timeout=2.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"the server did not answer /api/health within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop it (SIGTERM, then SIGKILL after 10 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 100]."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))] if ordered else math.nan


def summarize(records: list[Record], rss: dict) -> dict:
    """Counts by kind and status, latency of the good requests (ms), memory (MiB)."""
    counts: dict = {}
    for r in records:
        key = f"{r.spec.kind} {r.status or r.error.split(':')[0]}"
        counts[key] = counts.get(key, 0) + 1
    good = [r.seconds * 1000 for r in records if r.spec.kind == "good" and r.status == 200]
    return {"sent": len(records), "good": sum(r.spec.kind == "good" for r in records),
            "bad": sum(r.spec.kind != "good" for r in records),
            "status_500": sum(r.status >= 500 and r.status != 503 for r in records),
            "retried_503": sum(r.retries for r in records), "counts": dict(sorted(counts.items())),
            "latency_ms": {"p50": percentile(good, 50), "p95": percentile(good, 95), "p99": percentile(good, 99),
                           "max": max(good, default=math.nan)},
            "rss_mb": rss}


def load_test(serve: Sequence[str], checkpoint: str, requests: int = 200, clients: int = 8, bad_share: float = 0.2, pairs: int = 8,
              images_dir: str = "", size: int = 256, warmup: int = 16, time_limit_s: float = 300.0,
              server_args: tuple = ()) -> dict:
    """Start a server (the command ``serve``, as :func:`start_server`), warm it up, run the load, stop
    it. Returns :func:`summarize`'s dict plus
    ``records``, ``pairs`` (to check answers against) and ``wall_s``."""
    good_pairs = make_pairs(pairs, size, images_dir)
    cap = int(LOAD_UPLOAD_MB * 1024 * 1024)
    specs = build_specs(good_pairs, requests, bad_share, cap)
    proc, url = start_server(serve, checkpoint, "--max-upload-mb", str(LOAD_UPLOAD_MB), *server_args)
    try:
        warm = build_specs(good_pairs, warmup, 0.5, cap, seed=1)
        run_load(url, warm, clients, time_limit_s)
        sampler = RssSampler(proc.pid)
        before = sampler.read()
        start = time.perf_counter()
        with sampler:
            records = run_load(url, specs, clients, time_limit_s)
        wall = time.perf_counter() - start
        rss = {"before": before, "peak_during": max(sampler.samples, default=before), "after": sampler.read(),
               "process_peak": sampler.read("VmHWM"), "samples": len(sampler.samples)}
    finally:
        stop_server(proc)
    return {**summarize(records, rss), "records": records, "pairs": good_pairs, "wall_s": wall,
            "unsent": len(specs) - len(records)}
