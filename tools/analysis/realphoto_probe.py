"""Does the exemplar matter on real photos? Search each tile with a tree, then with no tree.

``python tools/analysis/realphoto_probe.py --checkpoint CKPT --output-dir DIR [--realphoto datasets/realphoto]
[--device cpu] [infer.KEY=VALUE ...]``

The real-photo benchmark's ``same_image`` pairs (each tile searched with its median tree) are run as
the benchmark runs them (``infer.rescale=exemplar`` unless overridden, tiles), once with the tree
as the exemplar and once with a box of the same size placed as far as possible from every tree of
the tile (:func:`detector.data.realphoto.treeless_box`: grass, road, shadow). The query scale is the
same in both (it depends only on the box size), so the difference is what the exemplar's content
does. A detector that uses the exemplar finds trees with the tree and far fewer with the treeless
box; one that ignores it scores the same. ``DIR/realphoto_probe.json``::

    {"checkpoint", "inference_options", "rows": {"tree": {...}, "no_tree": {...}}}

each row with ``ap50``, ``ap``, ``recall50``, ``count_error``, ``per_tile_recall50`` and the
exemplar ``boxes``; ``DIR/realphoto_probe.md`` has the table. Exit code 2 with one line for a bad
option, checkpoint or benchmark folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)


def parse_args(argv=None) -> argparse.Namespace:
    from detector.cli import ArgumentParser

    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py")
    p.add_argument("--output-dir", required=True, help="where realphoto_probe.json / .md go")
    p.add_argument("--realphoto", default=os.path.join(_REPO, "datasets", "realphoto"),
                   help="the benchmark folder (datasets/prepare_realphoto.py)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. infer.object_size=45.7")
    return p.parse(argv)


def probe(detector, bench, options: dict) -> dict:
    """``{"tree": row, "no_tree": row}`` over ``bench``'s ``same_image`` pairs (module docstring)."""
    from detector.data.realphoto import treeless_box
    from detector.evaluation_realphoto import predict_pairs, score_pairs

    same = [p for p in bench.pairs if p["mode"] == "same_image"]
    boxes = {"tree": [p["support_box"] for p in same],
             "no_tree": [treeless_box(bench.instances[p["query_image_id"]], bench.images[p["query_image_id"]]["width"],
                                      bench.images[p["query_image_id"]]["height"], p["support_box"][2:])
                         for p in same]}
    rows = {}
    for name, exemplars in boxes.items():
        variant = dataclasses.replace(bench, pairs=[dict(p, support_box=b) for p, b in zip(same, exemplars)])
        m = score_pairs(variant, predict_pairs(detector, variant, options))
        rows[name] = {"ap50": m["same_image_ap50"], "ap": m["same_image_ap"], "recall50": m["same_image_recall50"],
                      "count_error": m["same_image_count_error"],
                      "per_tile_recall50": [r["recall50"] for r in m["per_pair"]], "boxes": exemplars}
    return rows


def format_table(result: dict) -> str:
    lines = ["| exemplar | AP50 | AP | recall50 | count error | recall50 per tile |", "|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        tiles = ", ".join(f"{v:.3f}" for v in r["per_tile_recall50"])
        lines.append(f"| {name} | {r['ap50']:.4f} | {r['ap']:.4f} | {r['recall50']:.3f} | {r['count_error']:.1f} | {tiles} |")
    return "\n".join(lines)


def _main(argv=None) -> int:
    from detector.data.realphoto import load_realphoto
    from detector.evaluation import write_evaluation_files
    from detector.evaluation_realphoto import effective_options, protocol_options
    from detector.inference import OneShotDetector
    from detector.loading import load_model
    from detector.utils.output_paths import check_output_path
    from detector.utils.device import resolve_device

    args = parse_args(argv)
    check_output_path(args.output_dir, "--output-dir")
    device = resolve_device(args.device, "--device")
    bench = load_realphoto(args.realphoto)
    cfg, model, postprocessor = load_model(args.checkpoint, args.overrides)
    detector = OneShotDetector(model, postprocessor, cfg, device, max_pixels=None)
    options = protocol_options(args.overrides)
    effective = effective_options(detector, options)  # checked before the first pair
    result = {"checkpoint": os.path.abspath(args.checkpoint), "inference_options": effective,
              "rows": probe(detector, bench, options)}
    table = format_table(result)
    write_evaluation_files(result, args.output_dir, table, stem="realphoto_probe")
    print(table)
    return 0


def main(argv=None) -> int:
    from detector.cli import guarded

    return guarded(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
