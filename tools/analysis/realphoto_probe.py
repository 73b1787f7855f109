"""Does the exemplar matter on real photos? Search each tile with a tree, then with no tree.

``python tools/analysis/realphoto_probe.py --checkpoint CKPT --output-dir DIR [--realphoto datasets/realphoto]
[--paths all | none | PATH,...] [--device cpu] [infer.KEY=VALUE ...]``

The real-photo benchmark's ``same_image`` pairs (each tile searched with its median tree) are run as
the benchmark runs them (``infer.rescale=exemplar`` unless overridden, tiles), once with the tree
as the exemplar and once with a box of the same size placed as far as possible from every tree of
the tile (:func:`detector.data.realphoto.treeless_box`: grass, road, shadow). The query scale is the
same in both (it depends only on the box size), so the difference is what the exemplar's content
does. A detector that uses the exemplar finds trees with the tree and far fewer with the treeless
box; one that ignores it scores the same.

Then, per support path of the model (``--paths``; default every one, ``OneShotDETR.support_paths``:
``keys``, ``correlation``, ``similarity``, ...), a row ``no_tree in <path>``: the tree is the
exemplar of every path but that one, which is fed the treeless box (``forward(...,
path_supports=...)``, as ``tools/analysis/support_paths.py`` does on the synthetic split). A path
whose row falls towards ``no_tree`` is the one through which the tree steers the detections on
photos. ``DIR/realphoto_probe.json``::

    {"checkpoint", "inference_options", "paths",
     "rows": {"tree": {...}, "no_tree": {...}, "no_tree in keys": {...}, ...}}

each row with ``ap50``, ``ap``, ``recall50``, ``count_error``, ``per_tile_recall50`` and the
exemplar ``boxes`` (of the path rows: the treeless boxes their path saw; ``fed`` names it);
``DIR/realphoto_probe.md`` has the table. Exit code 2 with one line for a bad
option, checkpoint or benchmark folder.
"""
from __future__ import annotations

import argparse
import contextlib
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
    p.add_argument("--paths", default="all",
                   help="support paths fed the treeless box one at a time: all (default), none, or a comma list")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. infer.object_size=45.7")
    return p.parse(argv)


def chosen_paths(spec: str, available) -> list[str]:
    """``--paths`` -> the support paths to probe one at a time (``all``, ``none`` or a comma list of
    names of ``available``); :class:`~detector.errors.InputError` naming an unknown one."""
    from detector.errors import InputError

    if spec == "all":
        return list(available)
    if spec == "none":
        return []
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise InputError(f"--paths: {', '.join(unknown) or repr(spec)} is not a support path of this model; "
                         f"its paths: {', '.join(available)} (or all / none)")
    return names


@contextlib.contextmanager
def exemplar_in_paths(model, paths, exemplar, support_size: int):
    """While active, every forward of ``model`` feeds ``paths`` the exemplar tensor ``exemplar
    [3, h, w]`` (padded as the detector pads its exemplars) and every other path the one it is given."""
    from detector.structures import ImageBatch

    def feed(module, args, kwargs):
        query = args[0] if args else kwargs["query"]
        batch = ImageBatch.from_tensors([exemplar] * len(query), size_divisibility=support_size)
        batch = batch.to(query.tensors.device)
        return args, {**kwargs, "path_supports": {p: batch for p in paths}}

    handle = model.register_forward_pre_hook(feed, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _row(metrics: dict, exemplars: list) -> dict:
    return {"ap50": metrics["same_image_ap50"], "ap": metrics["same_image_ap"], "recall50": metrics["same_image_recall50"],
            "count_error": metrics["same_image_count_error"],
            "per_tile_recall50": [r["recall50"] for r in metrics["per_pair"]], "boxes": exemplars}


def probe(detector, bench, options: dict, paths=()) -> dict:
    """``{"tree": row, "no_tree": row, "no_tree in <path>": row, ...}`` over ``bench``'s
    ``same_image`` pairs, one ``no_tree in`` row per name of ``paths`` (module docstring)."""
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
        rows[name] = _row(score_pairs(variant, predict_pairs(detector, variant, options)), exemplars)
    trees = dataclasses.replace(bench, pairs=same)
    for path in paths:
        results = []
        for pair, box in zip(same, boxes["no_tree"]):
            treeless, _ = detector.prepare_support(bench.image_path(pair["support_image_id"]), box)
            with exemplar_in_paths(detector.model, [path], treeless, detector.cfg.model.support_size):
                results += predict_pairs(detector, dataclasses.replace(bench, pairs=[pair]), options)
        rows[f"no_tree in {path}"] = dict(_row(score_pairs(trees, results), boxes["no_tree"]), fed=[path])
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
    paths = chosen_paths(args.paths, model.support_paths)
    if paths and cfg.infer.self_exemplars:
        from detector.errors import InputError

        raise InputError("--paths needs one exemplar per pass; give --paths none with infer.self_exemplars")
    result = {"checkpoint": os.path.abspath(args.checkpoint), "inference_options": effective, "paths": paths,
              "rows": probe(detector, bench, options, paths)}
    table = format_table(result)
    write_evaluation_files(result, args.output_dir, table, stem="realphoto_probe")
    print(table)
    return 0


def main(argv=None) -> int:
    from detector.cli import guarded

    return guarded(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
