"""Load test and soak of ``tools/serve.py`` on this machine only, bounded in requests and in time
(:mod:`detector.server.load_test` and :mod:`detector.server.soak` say what they send and measure).

``python tools/serve_load.py --checkpoint CKPT [--requests 200] [--clients 8] [--bad-share 0.2]
[--images DIR] [--size 256] [--json OUT] [-- SERVER ARGS]``

``python tools/serve_load.py --checkpoint CKPT --soak MINUTES [--clients 4] [--plot soak.png]
[--json OUT]``: good and bad requests from several clients for MINUTES at the server's default
limits, its memory sampled every few seconds, every answer checked (good ones against ``predict``).
Exit code 1 when a 5xx or a wrong answer came back.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from detector.cli import positive_float  # noqa: E402

SERVE = [sys.executable, os.path.join(ROOT, "tools", "serve.py")]  # the server the load test starts


def print_summary(summary: dict, clients: int) -> None:
    lat = summary["latency_ms"]
    print(f"{summary['sent']} requests ({summary['good']} good, {summary['bad']} bad) from {clients} clients "
          f"in {summary['wall_s']:.1f} s; 5xx other than 503: {summary['status_500']}")
    print(f"good requests: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms, "
          f"max {lat['max']:.0f} ms; 503 retries {summary['retried_503']}")
    for key, n in summary["counts"].items():
        print(f"  {key}: {n}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint, or a folder: its newest checkpoint_*.pth")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=0, help="concurrent clients (default: 8, or 4 in a soak)")
    p.add_argument("--bad-share", type=float, default=0.2)
    p.add_argument("--images", default="", help="folder of query/support images (default: random images)")
    p.add_argument("--size", type=int, default=256, help="side of the random images")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds; requests left then are not sent")
    p.add_argument("--soak", type=positive_float, default=None, metavar="MINUTES", help="a soak of this many minutes")
    p.add_argument("--plot", default="", help="with --soak: the memory and latency picture (PNG) here")
    p.add_argument("--json", default="", help="also write the summary here")
    p.add_argument("server_args", nargs="*", help="passed to tools/serve.py after --, e.g. -- --workers 2")
    args = p.parse_args(argv)
    from detector.errors import InputError
    from detector.server.load_test import load_test
    from detector.server.soak import plot_soak, soak
    from detector.utils.atomic import write_json
    from detector.utils.checkpoint import latest_checkpoint
    from detector.utils.output_paths import check_output_file

    try:  # before minutes of load, not after
        for path, what, example in ((args.plot, "--plot", "soak.png"), (args.json, "--json", "summary.json")):
            if path:
                check_output_file(path, what, example)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if os.path.isdir(args.checkpoint):  # the same file the server would pick, for the answers to check against
        args.checkpoint = latest_checkpoint(args.checkpoint) or args.checkpoint
    if args.soak is not None:
        clients = args.clients or 4
        summary = soak(SERVE, args.checkpoint, args.soak, clients, args.bad_share, images_dir=args.images,
                       size=args.size, server_args=tuple(args.server_args))
        print_summary(summary, clients)
        rss = summary["rss_mb"]
        print(f"server RSS: {rss['first_minute']:.0f} MiB after the first minute, {rss['end']:.0f} MiB at the end "
              f"({100 * rss['drift']:+.1f}%), peak {rss['peak_during']:.0f} MiB; every 5xx: {summary['status_5xx']}; "
              f"wrong answers: {summary['wrong']}")
        for example in summary["wrong_examples"]:
            print(f"  wrong: {example}")
        if args.plot:
            print(f"picture: {plot_soak(summary, args.plot)}")
        failed = summary["status_5xx"] > 0 or summary["wrong"] > 0
    else:
        clients = args.clients or 8
        out = load_test(SERVE, args.checkpoint, args.requests, clients, args.bad_share, images_dir=args.images,
                        size=args.size, time_limit_s=args.time_limit, server_args=tuple(args.server_args))
        summary = {k: v for k, v in out.items() if k not in ("records", "pairs")}
        print_summary(summary, clients)
        rss = summary["rss_mb"]
        print(f"server RSS: {rss['before']:.0f} MiB before, {rss['peak_during']:.0f} MiB peak during, "
              f"{rss['after']:.0f} MiB after (process peak {rss['process_peak']:.0f} MiB); {summary['unsent']} not sent")
        failed = False
    if args.json:
        write_json(args.json, summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
