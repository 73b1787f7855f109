"""Property-based tests of the web API and the server's command line: any multipart body, any
field, any server argument gets a clean answer (HTTP 200 with detections, or a 4xx whose body is
one line) and never a 5xx or a traceback. At least 200 drawn cases each."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from detector import OneShotDetector
from detector.server import ServeLimits, build_app
from detector.server.uploads import accepted_fields
from detector_tools import serve

PROFILE = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LIMITS = ServeLimits(max_upload_bytes=256 * 1024, max_pixels=1_000_000, workers=1, queue_size=2)


def _png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(h * 7 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


GOOD_PNG = _png(48, 64)


@pytest.fixture(scope="module")
def client(serve_files):
    detector = OneShotDetector.from_checkpoint(serve_files["ckpt"])
    with TestClient(build_app(detector, LIMITS, checkpoint=serve_files["ckpt"]), raise_server_exceptions=False) as c:
        yield c


NAMES = st.one_of(st.sampled_from(accepted_fields()), st.text(min_size=1, max_size=10))
FILE_BODY = st.one_of(st.just(GOOD_PNG), st.binary(max_size=512),
                      st.integers(1, len(GOOD_PNG) - 1).map(lambda n: GOOD_PNG[:n]))
TEXT_BODY = st.one_of(st.text(max_size=30), st.sampled_from(["1,1,20,20", "0,0,1e200,1e200", "nan,1,2,3", "0.3",
                                                             "32", "native", "exemplar", "1e-300", "-1", ""]))
PARTS = st.lists(st.tuples(NAMES, st.one_of(FILE_BODY.map(lambda b: ("file", b)), TEXT_BODY.map(lambda t: ("text", t)))),
                 max_size=6)


@PROFILE
@given(PARTS)
@example([("query", ("file", GOOD_PNG)), ("size", ("text", "32"))])  # once a 500: too few proposals
@example([("query", ("file", GOOD_PNG)), ("rescale", ("text", "native")), ("size", ("text", "32")),
          ("support_box", ("text", "1,1,20,20"))])
@example([("query", ("file", GOOD_PNG)), ("rescale", ("text", "exemplar")), ("object_size", ("text", "1e-300")),
          ("support_box", ("text", "1,1,20,20"))])
@example([("query", ("file", GOOD_PNG)), ("query", ("file", GOOD_PNG))])
def test_any_multipart_body_gets_a_clean_answer(client, parts):
    files = [(name, ("f.png", body, "image/png")) for name, (kind, body) in parts if kind == "file"]
    data = [(name, body) for name, (kind, body) in parts if kind == "text"]
    r = client.post("/api/predict", files=files or None, data=data or None,
                    headers=None if files else {"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code < 500, r.text
    body = r.json()
    if r.status_code == 200:
        assert isinstance(body["detections"], list) and body["width"] >= 1 and body["height"] >= 1
    else:
        assert 400 <= r.status_code < 500 and set(body) == {"error"} and "\n" not in body["error"], body


@PROFILE
@given(st.lists(st.tuples(st.sampled_from(["--port", "--workers", "--queue", "--max-upload-mb", "--max-megapixels",
                                           "--read-timeout", "--threads", "--log-level"]),
                          st.one_of(st.integers(-10, 100000).map(str), st.floats(allow_nan=True).map(str),
                                    st.text(max_size=6), st.sampled_from(["info", "bogus", "0", "99999", "-1"]))),
                max_size=3))
@example([("--port", "99999")])
@example([("--port", "-1")])
@example([("--log-level", "bogus")])
@example([("--max-upload-mb", "0")])
@example([("--read-timeout", "0")])
@example([("--threads", "100000")])
def test_any_server_argument_is_accepted_in_range_or_refused_in_one_line(capsys, options):
    argv = ["--checkpoint", "x.pth"] + [x for pair in options for x in pair]
    try:
        args = serve.parse_args(argv)
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error:" in err, err
        return
    assert 1 <= args.port <= 65535 and args.workers >= 1 and args.queue >= 0 and 0 <= args.threads <= 256
    assert args.max_upload_mb > 0 and args.max_megapixels > 0 and args.read_timeout > 0
    assert args.log_level in serve.LOG_LEVELS


def test_a_bad_port_is_one_line_from_the_command_line(serve_files):
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools", "serve.py")
    r = subprocess.run([sys.executable, tool, "--checkpoint", serve_files["ckpt"], "--port", "99999"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "a port from 1 to 65535" in r.stderr
