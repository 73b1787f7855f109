"""The JSON API (detector/server) through FastAPI's test client: every field, every refusal, the
answer equal to OneShotDetector.predict, the bounded queue."""
import asyncio
import io
import threading
import time

import numpy as np
import pytest
import httpx
from fastapi.testclient import TestClient
from PIL import Image

from detector import OneShotDetector
from detector.server import ServeLimits, build_app
from detector.server.load_test import bomb_png

LIMITS = ServeLimits(max_upload_bytes=256 * 1024, max_pixels=1_000_000, workers=1, queue_size=2)


@pytest.fixture(scope="module")
def detector(serve_files):
    return OneShotDetector.from_checkpoint(serve_files["ckpt"])


@pytest.fixture(scope="module")
def client(detector, serve_files):
    with TestClient(build_app(detector, LIMITS, checkpoint=serve_files["ckpt"])) as c:
        yield c


def upload(path, name=None):
    with open(path, "rb") as f:
        return (name or path.rsplit("/", 1)[-1], f.read(), "image/png")


def png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def assert_refused(r, status, message):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    assert message in body["error"], body["error"]


def test_health_model_and_page(client, serve_files):
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "workers": 1, "capacity": 3, "admitted": 0, "uploading": 0, "upload_slots": 6,
                      "completed": health["completed"]}
    model = client.get("/api/model").json()
    assert model["checkpoint"] == serve_files["ckpt"] and model["device"] == "cpu"
    assert model["checkpoint_bytes"] > 0
    assert model["model"]["backbone"] == "mobilenetv2_100" and model["model"]["attention"] == "indirect"
    assert model["inference"] == {"eval_size": 64, "support_size": 32, "support_margin": 0.1, "max_detections": 6,
                                  "nms_iou": 0.0}
    assert model["limits"] == {"max_upload_bytes": 256 * 1024, "max_pixels": 1_000_000, "max_tiles": 256, "workers": 1,
                               "queue_size": 2, "upload_slots": 0, "read_timeout_s": 30.0, "header_timeout_s": 10.0,
                               "max_header_bytes": 16384}
    assert model["predict_fields"] == ["query", "support", "support_box", "score_threshold", "size", "rescale",
                                       "object_size", "tile_overlap", "max_detections"]
    assert model["infer"]["rescale"] == "auto" and model["infer"]["max_detections"] == 1000
    page = client.get("/")
    assert page.status_code == 200 and 'id="find"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("box, threshold", [((5, 5, 30, 20), 0.0), ((5, 5, 30, 20), None), (None, 0.5)])
def test_predict_equals_the_inference_api(client, detector, serve_files, box, threshold):
    data = {} if box is None else {"support_box": ",".join(str(v) for v in box)}
    if threshold is not None:
        data["score_threshold"] = str(threshold)
    files = {"query": upload(serve_files["query"]), "support": upload(serve_files["support"])}
    r = client.post("/api/predict", files=files, data=data)
    assert r.status_code == 200, r.text
    expected = detector.predict(serve_files["query"], serve_files["support"], support_box=box,
                                score_threshold=0.3 if threshold is None else threshold)
    assert r.json() == {**expected, "image": "query.png"}
    # the default rescale (auto): by the exemplar box when there is one, else fitted in one pass
    assert expected["scale"] == pytest.approx(64 / 80 if box is None else 24.5 / (box[2] * box[3]) ** 0.5)
    everything = detector.predict(serve_files["query"], serve_files["support"], support_box=box, score_threshold=0.0)
    if threshold is None:  # the default 0.3 keeps some and drops some
        assert 0 < len(expected["detections"]) < len(everything["detections"])


def test_real_photo_fields_are_predict_s_options(client, detector, serve_files):
    data = {"support_box": "10,10,20,20", "score_threshold": "0", "rescale": "exemplar", "object_size": "40",
            "size": "32", "tile_overlap": "0.5", "max_detections": "8"}
    r = client.post("/api/predict", files={"query": upload(serve_files["query"])}, data=data)
    assert r.status_code == 200, r.text
    expected = detector.predict(serve_files["query"], serve_files["query"], support_box=(10, 10, 20, 20),
                                score_threshold=0.0, rescale="exemplar", object_size=40.0, size=32, tile_overlap=0.5,
                                max_detections=8)
    assert r.json() == {**expected, "image": "query.png"}
    assert r.json()["scale"] == 2.0 and r.json()["tiles"] > 1 and len(r.json()["detections"]) == 8


def test_without_support_the_exemplar_comes_from_the_query(client, detector, serve_files):
    r = client.post("/api/predict", files={"query": upload(serve_files["query"])},
                    data={"support_box": "10,10,40,30", "score_threshold": "0"})
    assert r.status_code == 200, r.text
    expected = detector.predict(serve_files["query"], serve_files["query"], support_box=(10, 10, 40, 30),
                                score_threshold=0.0)
    assert r.json()["detections"] == expected["detections"]


def test_jpeg_exif_orientation_is_read_as_the_inference_api_reads_it(client, detector, serve_files):
    path = serve_files["query_jpeg_rotated"]
    r = client.post("/api/predict", files={"query": (path, open(path, "rb").read(), "image/jpeg"),
                                           "support": upload(serve_files["support"])}, data={"score_threshold": "0"})
    expected = detector.predict(path, serve_files["support"], score_threshold=0.0)
    assert (r.json()["width"], r.json()["height"]) == (60, 90) == (expected["width"], expected["height"])
    assert r.json()["detections"] == expected["detections"]


def eps_file() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def real_bomb() -> bytes:
    """A real PNG of 2000 x 2000 one-bit pixels: a few kilobytes that decode to 12 MB of RGB."""
    buf = io.BytesIO()
    Image.new("1", (2000, 2000)).save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < 20_000
    return buf.getvalue()


BAD = [  # (name, files (query/support replaced), data, status, message)
    ("not an image", {"query": ("notes.txt", b"hello, not an image", "text/plain")}, {}, 400, "not an image"),
    ("truncated", {"query": "truncated"}, {}, 400, "truncated"),
    ("empty file", {"query": ("q.png", b"", "image/png")}, {}, 400, "empty file"),
    ("postscript", {"support": ("x.eps", eps_file(), "application/postscript")}, {}, 400, "accepted format"),
    ("bomb over our limit", {"support": ("b.png", bomb_png(2000, 1000), "image/png")}, {}, 413,
     "2000x1000 pixels (2.0 megapixels) is over the limit of 1 megapixels"),
    ("bomb over PIL's limit", {"query": ("b.png", bomb_png(100_000, 100_000), "image/png")}, {}, 413,
     "100000x100000 pixels (10000.0 megapixels) is over the limit"),
    ("compressed bomb", {"support": ("b.png", real_bomb(), "image/png")}, {}, 413, "is over the limit"),
    ("three numbers", {}, {"support_box": "1,2,3"}, 400, "support_box: expected x,y,w,h"),
    ("words", {}, {"support_box": "a,b,c,d"}, 400, "support_box: expected x,y,w,h"),
    ("nan box", {}, {"support_box": "nan,1,2,3"}, 400, "support_box: expected x,y,w,h"),
    ("zero width", {}, {"support_box": "1,2,0,5"}, 400, "width and height must be > 0"),
    ("negative height", {}, {"support_box": "1,2,3,-4"}, 400, "width and height must be > 0"),
    ("box outside", {}, {"support_box": "400,400,10,10"}, 400, "outside the support image"),
    ("threshold words", {}, {"score_threshold": "high"}, 400, "score_threshold: expected a number in [0, 1]"),
    ("threshold above 1", {}, {"score_threshold": "1.5"}, 400, "score_threshold"),
    ("threshold nan", {}, {"score_threshold": "nan"}, 400, "score_threshold"),
    ("unknown text field", {}, {"tile_size": "512"}, 400, "unknown field 'tile_size'"),
    ("size too small", {}, {"size": "16"}, 400, "size: expected 0 (the training size) or an integer >= 32, got '16'"),
    ("size not an integer", {}, {"size": "64.5"}, 400, "size: expected 0"),
    ("rescale unknown", {}, {"rescale": "zoom"}, 400, "rescale: expected one of auto, fit, exemplar, native, got 'zoom'"),
    ("object size negative", {}, {"object_size": "-2"}, 400, "object_size: expected a number >= 0"),
    ("object size inf", {}, {"object_size": "inf"}, 400, "object_size: expected a number >= 0"),
    ("overlap 1", {}, {"tile_overlap": "1"}, 400, "tile_overlap: expected a number in [0, 1)"),
    ("max detections 0", {}, {"max_detections": "0"}, 400, "max_detections: expected an integer >= 1"),
    ("exemplar without object size", {}, {"rescale": "exemplar", "object_size": "0", "support_box": "1,1,20,20"}, 400,
     "set infer.object_size"),
    ("exemplar without a box", {}, {"rescale": "exemplar", "object_size": "40"}, 400,
     "rescale=exemplar needs an exemplar box"),
    ("unknown file field", {"extra": ("e.png", b"x", "image/png")}, {}, 400, "unknown field 'extra'"),
    ("text as query", {"query": None}, {"query": "query.png"}, 400, "query: expected an image file, got text"),
    ("file as box", {"support_box": ("b.txt", b"1,2,3,4", "text/plain")}, {}, 400, "support_box: expected text"),
    ("no query", {"query": None}, {}, 400, "query: missing"),
]


@pytest.mark.parametrize("name, files, data, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_are_refused_with_one_line(client, serve_files, name, files, data, status, message):
    parts = {"query": upload(serve_files["query"]), "support": upload(serve_files["support"])}
    for key, value in files.items():
        if value == "truncated":
            value = ("q.png", parts["query"][1][: len(parts["query"][1]) // 2], "image/png")
        if value is None:
            del parts[key]
        else:
            parts[key] = value
    assert_refused(client.post("/api/predict", files=parts, data=data), status, message)


def test_repeated_field_wrong_body_and_oversized_uploads(client, serve_files):
    q = upload(serve_files["query"])
    r = client.post("/api/predict", files=[("query", q), ("query", q)])
    assert_refused(r, 400, "field 'query' given more than once")
    assert_refused(client.post("/api/predict", json={"query": "x"}), 415, "multipart/form-data")
    r = client.post("/api/predict", content=b"--xx\r\ngarbage",
                    headers={"content-type": "multipart/form-data; boundary=yy"})
    assert r.status_code == 400 and "malformed form" in r.json()["error"]
    big = ("big.png", q[1] + b"\0" * LIMITS.max_upload_bytes, "image/png")
    assert_refused(client.post("/api/predict", files={"query": big}), 413, "over the limit of 262144 bytes")

    def chunks():  # no Content-Length: the cap is counted as the body arrives
        yield b"--b\r\nContent-Disposition: form-data; name=\"query\"; filename=\"q.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 8192
    r = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_refused(r, 413, "over the limit")
    assert_refused(client.get("/api/predict"), 405, "Method Not Allowed")
    assert_refused(client.get("/api/nothing"), 404, "Not Found")


def test_random_bytes_never_give_a_500(client, serve_files):
    rng = np.random.default_rng(1)
    png = open(serve_files["query"], "rb").read()
    for i in range(24):
        blob = bytearray(png)
        for j in rng.integers(0, len(blob), size=int(rng.integers(1, 40))):  # flipped bytes, header included
            blob[j] = int(rng.integers(0, 256))
        if i % 3 == 0:
            blob = bytes(rng.integers(0, 256, size=int(rng.integers(1, 3000)), dtype=np.uint8))
        r = client.post("/api/predict", files={"query": ("q.png", bytes(blob), "image/png")})
        assert r.status_code in (200, 400), r.text  # a flipped byte in pixel data may still decode


class GatedDetector:
    """The real detector behind a gate: predict waits until the test opens it."""

    def __init__(self, detector):
        self.cfg, self.device, self._detector = detector.cfg, detector.device, detector
        self.entered, self.gate = threading.Event(), threading.Event()

    def predict(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(30)
        return self._detector.predict(*args, **kwargs)


def test_a_full_queue_answers_503_with_retry_after(detector, serve_files):
    gated = GatedDetector(detector)
    app = build_app(gated, ServeLimits(workers=1, queue_size=1), checkpoint=serve_files["ckpt"])
    files = {"query": upload(serve_files["query"]), "support": upload(serve_files["support"])}
    with TestClient(app) as client:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(client.post("/api/predict", files=files)))
                   for _ in range(2)]
        threads[0].start()
        assert gated.entered.wait(30)  # the one worker is busy
        threads[1].start()  # ... and this one waits in the queue
        deadline = time.time() + 30
        while app.state.pool.admitted < 2 and time.time() < deadline:
            time.sleep(0.01)
        r = client.post("/api/predict", files=files)
        assert_refused(r, 503, "server busy")
        assert int(r.headers["Retry-After"]) >= 1
        assert client.get("/api/health").json()["admitted"] == 2  # health still answers
        gated.gate.set()
        for t in threads:
            t.join(30)
        assert [a.status_code for a in answers] == [200, 200]
        assert client.post("/api/predict", files=files).status_code == 200  # room again
        assert app.state.pool.admitted == 0


def test_a_stalled_upload_is_cut_off_and_frees_its_slot(detector, serve_files):
    app = build_app(detector, ServeLimits(workers=1, queue_size=0, read_timeout_s=0.3))

    async def stalled():
        yield b"--b\r\nContent-Disposition: form-data; name=\"query\"; filename=\"q.png\"\r\n\r\n"
        await asyncio.sleep(30)  # and nothing more

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            start = time.perf_counter()
            r = await client.post("/api/predict", content=stalled(),
                                  headers={"content-type": "multipart/form-data; boundary=b"})
            return r, time.perf_counter() - start

    r, seconds = asyncio.run(go())
    assert_refused(r, 408, "did not arrive within 0.3 s")
    assert seconds < 5 and app.state.pool.admitted == 0 and app.state.pool.stats()["uploading"] == 0


def test_two_workers_share_one_model_and_agree_with_it(detector, serve_files):
    app = build_app(detector, ServeLimits(workers=2, queue_size=6))
    expected = detector.predict(serve_files["query"], serve_files["support"], support_box=(5, 5, 30, 20),
                                score_threshold=0.0)
    files = {"query": upload(serve_files["query"]), "support": upload(serve_files["support"])}
    with TestClient(app) as client:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(client.post(
            "/api/predict", files=files, data={"support_box": "5,5,30,20", "score_threshold": "0"}))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert app.state.pool.completed == 8
    assert [a.status_code for a in answers] == [200] * 8
    assert all(a.json()["detections"] == expected["detections"] for a in answers)
