"""Limits that keep one client from starving the others: a cap on the tiles one request may ask
for (413 before any tile runs), slow bodies that hold upload slots and never the model's queue, and
a header timeout on the real server (connections that send nothing, or their headers a byte at a
time, are closed; huge headers are refused)."""
import asyncio
import io
import socket
import sys
import threading
import time
import os

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from detector import OneShotDetector
from detector.server import ServeLimits, build_app
from detector.server.load_test import start_server, stop_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE = [sys.executable, os.path.join(ROOT, "tools", "serve.py")]


def png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def counted(serve_files):
    """A detector of its own whose forward passes are counted: ``(detector, calls)``."""
    det = OneShotDetector.from_checkpoint(serve_files["ckpt"])
    calls = []
    real = det._forward
    det._forward = lambda *a: calls.append(len(a[0])) or real(*a)
    return det, calls


def test_a_heavy_client_is_refused_before_any_tile_and_a_light_one_is_answered_as_predict(counted, serve_files):
    det, calls = counted
    heavy_query = png_bytes(np.random.default_rng(1).integers(0, 256, (1200, 1200, 3), dtype=np.uint8))
    heavy = {"files": {"query": ("big.png", heavy_query, "image/png")},
             "data": {"support_box": "10,10,40,40", "rescale": "native", "size": "64"}}  # 625 tiles of 64 px
    light_files = {"query": ("query.png", open(serve_files["query"], "rb").read(), "image/png"),
                   "support": ("support.png", open(serve_files["support"], "rb").read(), "image/png")}
    light = {"files": light_files, "data": {"support_box": "5,5,30,20", "score_threshold": "0"}}
    expected = det.predict(serve_files["query"], serve_files["support"], support_box=(5, 5, 30, 20), score_threshold=0.0)
    per_light = len(calls)
    calls.clear()
    app = build_app(det, ServeLimits(max_tiles=16, workers=1, queue_size=4), checkpoint=serve_files["ckpt"])
    answers = {"heavy": [], "light": []}
    with TestClient(app) as client:
        def loop(kind, request):
            for _ in range(6):
                answers[kind].append(client.post("/api/predict", **request))
        threads = [threading.Thread(target=loop, args=("heavy", heavy)), threading.Thread(target=loop, args=("light", light))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert [r.status_code for r in answers["heavy"]] == [413] * 6
    message = answers["heavy"][0].json()["error"]
    assert "1200x1200 px query scaled by 1 is 1200x1200 px, 625 tiles of 64 px" in message
    assert "over the limit of 16 tiles per image" in message and "\n" not in message
    assert [r.status_code for r in answers["light"]] == [200] * 6
    assert all(r.json() == {**expected, "image": "query.png"} for r in answers["light"])
    assert len(calls) == 6 * per_light  # the heavy requests ran no tile at all


def test_slow_bodies_hold_upload_slots_and_never_the_model_queue(detector_files):
    det, files = detector_files
    app = build_app(det, ServeLimits(workers=1, queue_size=0, upload_slots=3, read_timeout_s=3.0))
    head = b"--b\r\nContent-Disposition: form-data; name=\"query\"; filename=\"q.png\"\r\n\r\n"

    async def stalled():
        yield head
        await asyncio.sleep(30)  # and nothing more

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30) as c:
            slow = [asyncio.create_task(c.post("/api/predict", content=stalled(),
                                               headers={"content-type": "multipart/form-data; boundary=b"}))
                    for _ in range(2)]
            while app.state.pool.stats()["uploading"] < 2:
                await asyncio.sleep(0.01)
            good = await c.post("/api/predict", files=files)  # one model slot, and it is free
            third = asyncio.create_task(c.post("/api/predict", content=stalled(),
                                               headers={"content-type": "multipart/form-data; boundary=b"}))
            while app.state.pool.stats()["uploading"] < 3:
                await asyncio.sleep(0.01)
            busy = await c.post("/api/predict", files=files)  # every upload slot is taken
            return good, busy, await asyncio.gather(*slow, third)

    good, busy, slow = asyncio.run(go())
    assert good.status_code == 200, good.text
    assert busy.status_code == 503 and "server busy" in busy.json()["error"] and int(busy.headers["Retry-After"]) >= 1
    assert [r.status_code for r in slow] == [408] * 3
    assert app.state.pool.stats()["uploading"] == 0 and app.state.pool.admitted == 0


@pytest.fixture()
def detector_files(serve_files):
    det = OneShotDetector.from_checkpoint(serve_files["ckpt"])
    files = {"query": ("query.png", open(serve_files["query"], "rb").read(), "image/png")}
    return det, files


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.fixture(scope="module")
def server(serve_files):
    proc, url = start_server(SERVE, serve_files["ckpt"], "--threads", "1", "--header-timeout", "1")
    yield url.rsplit(":", 1)[1]
    stop_server(proc)


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server):
    with socket.create_connection(("127.0.0.1", int(server))) as idle:
        assert closed_within(idle, 8.0)


def test_headers_sent_a_byte_at_a_time_are_cut_off(server):
    with socket.create_connection(("127.0.0.1", int(server))) as slow:
        start = time.monotonic()
        request = b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
        try:
            for byte in request:  # 200+ bytes, one every 0.05 s: about 12 s if nothing stopped it
                slow.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_within(slow, 2.0) and time.monotonic() - start < 8.0


def test_a_keep_alive_client_is_not_cut_between_or_during_requests(server):
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as client:
        for _ in range(3):  # the timer is re-armed after each response, and a request in progress keeps it off
            assert client.get("/api/health").status_code == 200
            time.sleep(0.5)


def test_huge_headers_are_refused_with_a_4xx(server):
    statuses = []
    for headers in ({"X-Huge": "a" * 100_000}, {f"X-{i}": "b" * 50 for i in range(2000)}, {"X-Big": "c" * 20_000}):
        try:
            r = httpx.post(f"http://127.0.0.1:{server}/api/predict", headers=headers, files={"query": ("q.png", b"x")})
        except (httpx.RemoteProtocolError, httpx.ReadError):  # h11 dropped a header that arrived in pieces
            continue
        assert r.status_code in (400, 431), r.text
        statuses.append(r.status_code)
        if r.status_code == 431:
            assert "over the limit of 16384 bytes" in r.json()["error"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"  # the refusal carries the security headers too
    assert 431 in statuses  # a header that arrived whole was measured and refused by the app
    assert httpx.get(f"http://127.0.0.1:{server}/api/health").status_code == 200
