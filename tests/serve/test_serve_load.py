"""Load test against 127.0.0.1 only, bounded in count (200 requests) and time (4 minutes): 8
concurrent clients, a fifth of the requests bad, and room for only 4 requests at once in the server
(1 worker + 3 queued), so that clients are told 503 and retry. Every good request gets the inference
API's answer, every bad one its 4xx with a one-line message, none a 500, and the server's memory
stays flat. Latency is printed, not asserted (docs/PERFORMANCE.md has the benchmark's numbers)."""
import json
import os
import sys

import pytest

from detector.server.load_test import BAD_KINDS, load_test
from detector.server.soak import expected_answers, wrong_answers
from detector_tools import serve_load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE = [sys.executable, os.path.join(ROOT, "tools", "serve.py")]  # the server the tests start

REQUESTS, CLIENTS, BAD_SHARE = 200, 8, 0.2


def test_200_requests_from_8_clients_with_bad_ones_mixed_in(serve_files):
    out = load_test(SERVE, serve_files["ckpt"], requests=REQUESTS, clients=CLIENTS, bad_share=BAD_SHARE, pairs=6, size=256,
                    time_limit_s=240, server_args=("--threads", "1", "--queue", "3"))
    print({k: v for k, v in out.items() if k not in ("records", "pairs")})
    assert out["unsent"] == 0 and out["sent"] == REQUESTS
    assert out["good"] == REQUESTS - round(BAD_SHARE * REQUESTS) and out["status_500"] == 0
    assert out["retried_503"] > 0  # the queue was full at times, and the clients got in later
    records = out["records"]
    assert all(not r.error for r in records)
    assert {r.spec.kind for r in records} == {"good", *BAD_KINDS}

    assert wrong_answers(records, out["pairs"], expected_answers(serve_files["ckpt"], out["pairs"])) == []

    rss = out["rss_mb"]
    assert rss["samples"] > 10
    # Flat: the 200 requests leave the server as big as the 16 warm-up requests did. (Keeping each
    # decoded 256 px query image, 150 kB, would add 24 MB.)
    assert rss["after"] - rss["before"] < 8, rss
    assert rss["peak_during"] - rss["before"] < 40, rss


def test_a_20_second_soak_at_the_default_limits(serve_files, tmp_path, capsys):
    """The CI version of ``tools/serve_load.py --soak``: 4 clients, every kind of bad request, the
    server at its default limits; 0 5xx, every answer right, memory flat, the picture written."""
    out, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    code = serve_load.main(["--checkpoint", serve_files["ckpt"], "--soak", str(20 / 60), "--size", "128",
                            "--json", str(out), "--plot", str(plot), "--", "--threads", "1"])
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert code == 0, printed
    assert summary["status_5xx"] == 0 and summary["wrong"] == 0, summary["wrong_examples"]
    kinds = {key.split()[0] for key in summary["counts"]}
    assert kinds == {"good", *BAD_KINDS}, summary["counts"]
    assert summary["sent"] > 50 and summary["wall_s"] == pytest.approx(20, abs=10)
    assert abs(summary["rss_mb"]["drift"]) < 0.05, summary["rss_mb"]
    assert "wrong answers: 0" in printed and plot.stat().st_size > 10_000
