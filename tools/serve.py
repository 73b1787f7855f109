"""Serve the page to try the detector, and its JSON API (``detector/server``).

``python tools/serve.py --checkpoint CKPT_OR_FOLDER [--host 127.0.0.1] [--port 8000]``

Open ``http://127.0.0.1:8000/``: choose a query and a support image, drag a box around the
exemplar, press Find. The API: ``POST /api/predict`` (multipart: ``query``, ``support``,
``support_box`` as ``x,y,w,h``, ``score_threshold``), ``GET /api/health``, ``GET /api/model``.
A folder as ``--checkpoint`` serves its newest ``checkpoint_*.pth``. It listens on 127.0.0.1 only,
unless ``--host`` says otherwise.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import (ArgumentParser, non_negative_int, port_number, positive_float, positive_int,  # noqa: E402
                          thread_count)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint of tools/train.py, or a folder: its newest one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--workers", type=positive_int, default=1, help="model worker threads")
    p.add_argument("--queue", type=non_negative_int, default=8, help="requests that may wait for a worker; more get 503")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0, help="largest request body (both images)")
    p.add_argument("--max-megapixels", type=positive_float, default=40.0, help="largest image, read before decoding")
    p.add_argument("--max-tiles", type=positive_int, default=256,
                   help="tiles one query image may be cut into (rescale=exemplar / native); more: 413")
    p.add_argument("--upload-slots", type=non_negative_int, default=0,
                   help="request bodies that may arrive at once (0: twice workers + queue); more get 503")
    p.add_argument("--read-timeout", type=positive_float, default=30.0, help="seconds to receive a request's body")
    p.add_argument("--header-timeout", type=positive_float, default=10.0,
                   help="seconds for a connection to send its request headers; then it is closed")
    p.add_argument("--threads", type=thread_count, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="uvicorn log level (warning: no line per request)")
    return p.parse_args(argv)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file as it is; a folder -> its newest ``checkpoint_*.pth``. ``FileNotFoundError``
    saying what to run when there is none."""
    from detector.utils.checkpoint import latest_checkpoint

    first = "train one first: `make demo` writes outputs/demo/checkpoint_*.pth (about 17 minutes)"
    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint_*.pth in {path}; {first}")
        return found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}; {first}")
    return path


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(args: argparse.Namespace):
    """``(app, limits, checkpoint path)``: the detector loaded once (``weights_only``), the app around
    it, and the limits it was built with."""
    from detector.inference import OneShotDetector
    from detector.server import ServeLimits, build_app

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    checkpoint = resolve_checkpoint(args.checkpoint)
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                         max_pixels=int(args.max_megapixels * 1_000_000), max_tiles=args.max_tiles,
                         workers=args.workers, queue_size=args.queue, upload_slots=args.upload_slots,
                         read_timeout_s=args.read_timeout, header_timeout_s=args.header_timeout)
    detector = OneShotDetector.from_checkpoint(checkpoint, device=args.device)
    return build_app(detector, limits, checkpoint=checkpoint), limits, checkpoint


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from detector.inference import CheckpointError
        from detector.server.protocol import run_server
    except ImportError as e:
        print(f"error: {e}; install the server's packages with `pip install -e .[serve]`", file=sys.stderr)
        return 2
    try:
        app, limits, checkpoint = create_app(args)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: other machines can reach this server", file=sys.stderr)
    print(f"serving {checkpoint} at http://{args.host}:{args.port}/ (Ctrl+C stops)", flush=True)
    run_server(app, limits, args.host, args.port, args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
