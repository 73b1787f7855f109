"""Load test of ``tools/serve.py`` on this machine only: bounded in requests and in time
(:mod:`detector.server.load_test` says what it sends and measures).

``python tools/serve_load.py --checkpoint CKPT [--requests 200] [--clients 8] [--bad-share 0.2]
[--images DIR] [--size 256] [--json OUT] [-- SERVER ARGS]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SERVE = [sys.executable, os.path.join(ROOT, "tools", "serve.py")]  # the server the load test starts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--bad-share", type=float, default=0.2)
    p.add_argument("--images", default="", help="folder of query/support images (default: random images)")
    p.add_argument("--size", type=int, default=256, help="side of the random images")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds; requests left then are not sent")
    p.add_argument("--json", default="", help="also write the summary here")
    p.add_argument("server_args", nargs="*", help="passed to tools/serve.py after --, e.g. -- --workers 2")
    args = p.parse_args(argv)
    from detector.server.load_test import load_test

    out = load_test(SERVE, args.checkpoint, args.requests, args.clients, args.bad_share, images_dir=args.images,
                    size=args.size, time_limit_s=args.time_limit, server_args=tuple(args.server_args))
    summary = {k: v for k, v in out.items() if k not in ("records", "pairs")}
    lat, rss = summary["latency_ms"], summary["rss_mb"]
    print(f"{summary['sent']} requests ({summary['good']} good, {summary['bad']} bad) from {args.clients} clients "
          f"in {summary['wall_s']:.1f} s; {summary['unsent']} not sent; 5xx other than 503: {summary['status_500']}")
    print(f"good requests: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms; "
          f"503 retries {summary['retried_503']}")
    print(f"server RSS: {rss['before']:.0f} MiB before, {rss['peak_during']:.0f} MiB peak during, "
          f"{rss['after']:.0f} MiB after (process peak {rss['process_peak']:.0f} MiB)")
    for key, n in summary["counts"].items():
        print(f"  {key}: {n}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
