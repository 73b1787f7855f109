"""Which support paths carry the exemplar? Feed each one the exemplar of another category and measure.

``python tools/analysis/support_paths.py --checkpoint CKPT --output-dir DIR [--runs R] [--seed S]
[key=value ...]``

The checkpoint is evaluated with the one-shot protocol (on its config's ``eval.split``; ``test`` for
the shipped synthetic configs) once as it is, and once per *support path* of its model with that
path fed the exemplar of an item of a **different category** while every other path keeps the
item's own exemplar. The paths (``OneShotDETR.support_paths``):

* ``keys``: the keys of the decoder's cross step (indirect / misaligned attention);
* ``fusion``: the double cross-attention baseline's encoder (its keys and values come from it), or
  the light fusion step of an indirect decoder (``model.fusion_layers``: its values and proposals);
* ``object_queries``: the pooled support embedding added to the object queries' content;
* ``logits``: the support-similarity term of every logit;
* ``correlation``: the per-cell exemplar correlation added to the values;
* ``proposals``: support-conditioned proposals.

Two more rows: ``all_but_keys`` (every path but the keys gets the wrong exemplar) and ``all``
(every path does: the floor). A path whose wrong exemplar leaves AP where it was carries no class
information; a path whose wrong exemplar drops AP to the floor carries all of it.

The wrong exemplar of item ``j`` in exemplar run ``r`` is run ``r``'s exemplar of item ``k``, drawn
with ``numpy.random.default_rng([seed, r, j])`` among the items of other categories: reproducible,
and the same for every path. ``DIR/support_paths.json``::

    {"checkpoint", "split", "runs", "seed", "paths": [...],
     "baseline": {"seen_ap50", "unseen_ap50", "seen_ap", "unseen_ap"},
     "wrong_exemplar": {"keys": {... the same keys ..., "fed": ["keys"], "unseen_ap50_drop",
                                 "seen_ap50_drop", "score_change"}, "<path>": {...},
                        "all_but_keys": {...}, "all": {...}}}

``score_change`` is the mean absolute change of each item's best detection score against the
baseline (0 exactly when the path changes nothing). ``DIR/support_paths.md`` has the table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

METRICS = ("seen_ap50", "unseen_ap50", "seen_ap", "unseen_ap")


class WrongExemplars:
    """``path_supports`` for :func:`detector.engine.run_evaluation`: every named path of the model
    sees, for item ``j``, the current run's exemplar of another-category item ``k`` (see the module
    docstring)."""

    def __init__(self, dataset, paths, seed: int = 0):
        self.dataset, self.paths, self.seed = dataset, tuple(paths), int(seed)
        categories = np.array([item.category_id for item in dataset.items])
        self._others = {int(c): np.flatnonzero(categories != c) for c in np.unique(categories)}
        if any(len(v) == 0 for v in self._others.values()):
            raise ValueError("the wrong-exemplar probe needs items of at least two categories")

    def other_item(self, index: int, run: int) -> int:
        """The item whose exemplar item ``index`` gets in run ``run``."""
        candidates = self._others[self.dataset.items[index].category_id]
        return int(candidates[np.random.default_rng([self.seed, run, index]).integers(len(candidates))])

    def __call__(self, targets: list[dict]) -> dict:
        from detector.data import collate_supports

        run = self.dataset.run
        crops = [self.dataset.support_image(self.other_item(int(t["index"]), run), run) for t in targets]
        batch = collate_supports(crops)
        return {path: batch for path in self.paths}


def probe_rows(paths) -> dict:
    """``{row name: paths fed the wrong exemplar}``: each path alone, then ``all_but_keys`` (when
    the model has keys and other paths) and ``all`` (when it has more than one path)."""
    rows = {p: [p] for p in paths}
    others = [p for p in paths if p != "keys"]
    if "keys" in paths and others:
        rows["all_but_keys"] = others
    if len(paths) > 1:
        rows["all"] = list(paths)
    return rows


def _top_scores(record: list) -> np.ndarray:
    return np.array([float(r["scores"].max()) if len(r["scores"]) else 0.0 for _, _, r in record])


def probe(checkpoint: str, overrides=(), runs: int = 2, seed: int = 0, device: str = "", progress: bool = True) -> dict:
    """Run the probe (module docstring); returns the ``support_paths.json`` dict."""
    from detector.engine import run_evaluation
    from detector.loading import load_for_evaluation

    cfg, model, postprocessor, dev, dataset, split_info, cache = load_for_evaluation(checkpoint, overrides,
                                                                                      device=device)

    def evaluate(fed) -> tuple[dict, np.ndarray]:
        record: list = []
        supports = WrongExemplars(dataset, fed, seed) if fed else None
        metrics = run_evaluation(model, postprocessor, dataset, split_info, cfg, dev, runs, cache=cache,
                                 record=record, progress=progress, path_supports=supports)
        return {k: metrics[k] for k in METRICS}, _top_scores(record)

    paths = list(model.support_paths)
    baseline, base_scores = evaluate([])
    result = {"checkpoint": os.path.abspath(checkpoint), "split": cfg.eval.split, "runs": runs, "seed": seed,
              "attention": cfg.model.attention, "support_layout": cfg.model.support_layout, "paths": paths,
              "baseline": baseline, "wrong_exemplar": {}}
    for name, fed in probe_rows(paths).items():
        metrics, scores = evaluate(fed)
        row = {**metrics, "fed": fed, "score_change": float(np.abs(scores - base_scores).mean())}
        for k in ("seen_ap50", "unseen_ap50"):
            row[f"{k}_drop"] = None if baseline[k] is None or metrics[k] is None else baseline[k] - metrics[k]
        result["wrong_exemplar"][name] = row
    return result


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown_table(result: dict) -> str:
    """The probe as a markdown table: one row for the baseline and one per probe row."""
    lines = [f"Support paths of `{result['checkpoint']}` ({result['attention']} attention, "
             f"{result['support_layout']} layout), {result['split']} set, {result['runs']} exemplar runs:", "",
             "| wrong exemplar in | unseen AP50 | drop | seen AP50 | drop | unseen AP | mean change of the best score |",
             "|---|---|---|---|---|---|---|"]
    b = result["baseline"]
    lines.append(f"| nothing (baseline) | {_fmt(b['unseen_ap50'])} | | {_fmt(b['seen_ap50'])} | | {_fmt(b['unseen_ap'])} | |")
    for name, row in result["wrong_exemplar"].items():
        label = name if row["fed"] == [name] else f"{name} ({', '.join(row['fed'])})"
        lines.append(f"| {label} | {_fmt(row['unseen_ap50'])} | {_fmt(row['unseen_ap50_drop'])} | "
                     f"{_fmt(row['seen_ap50'])} | {_fmt(row['seen_ap50_drop'])} | {_fmt(row['unseen_ap'])} | "
                     f"{row['score_change']:.4f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    from detector.cli import ArgumentParser, positive_int

    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py")
    p.add_argument("--output-dir", required=True, help="where support_paths.json / .md go")
    p.add_argument("--runs", type=positive_int, default=2, help="exemplar runs per evaluation (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the wrong-exemplar draw")
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.split=val")
    return p.parse(argv)


def main(argv=None) -> int:
    from detector.cli import guarded

    return guarded(_main, argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    result = probe(args.checkpoint, args.overrides, args.runs, args.seed, args.device, not args.no_progress)
    result["seconds"] = round(time.time() - start, 1)
    from detector.evaluation import write_evaluation_files

    table = markdown_table(result)
    json_path, _ = write_evaluation_files(result, args.output_dir, table, stem="support_paths")
    print(table)
    print(f"wrote {json_path} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
