"""Seen / unseen AP50 of one checkpoint with k = 1, 3, 5 ... exemplars per item (k-shot).

``python tools/kshot_table.py --checkpoint CKPT [--split val|test] [--shots 1,3,5] [--runs 5]
[--combinations joint/max,mean/mean] [--output-dir DIR] [key=value ...]``

Loads the checkpoint once and evaluates it with the one-shot protocol extended to ``eval.shots=k``
(:mod:`detector.evaluation`) for every k and every combination ``KEYS/CORRELATION`` of the k
exemplars (``model.shot_keys`` / ``model.shot_correlation``, :mod:`detector.models.kshot`; k = 1 is
evaluated once, the combinations do not apply to it). The backbone features of every image and crop
are computed once for all evaluations. Writes ``metrics_k{K}_{KEYS}-{CORR}.json`` per evaluation and
``kshot.md`` (the table) in the output folder (default: the checkpoint's folder) and prints the
table. Exit codes: 0 done, 2 a bad option, checkpoint, config or data (one line).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, guarded, positive_int, thread_count  # noqa: E402
from detector.errors import InputError  # noqa: E402


def int_list(text: str) -> list[int]:
    """``"1,3,5"`` -> ``[1, 3, 5]`` (argparse type; each >= 1)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 separated by commas, got {text!r}")
    return values


def combinations(text: str) -> list[tuple[str, str]]:
    """``"joint/max,mean/mean"`` -> ``[("joint", "max"), ("mean", "mean")]`` (argparse type)."""
    from detector.models.kshot import SHOT_CORRELATIONS, SHOT_KEYS

    out = []
    for part in text.split(","):
        keys, _, corr = part.strip().partition("/")
        if keys not in SHOT_KEYS or corr not in SHOT_CORRELATIONS:
            raise argparse.ArgumentTypeError(f"{part!r}: expected KEYS/CORRELATION with KEYS in {SHOT_KEYS} "
                                             f"and CORRELATION in {SHOT_CORRELATIONS}")
        out.append((keys, corr))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py")
    p.add_argument("--split", default="test", choices=["val", "test"], help="evaluation split (default test)")
    p.add_argument("--shots", type=int_list, default=[1, 3, 5], help="exemplars per item, e.g. 1,3,5")
    p.add_argument("--runs", type=positive_int, default=5, help="exemplar runs per evaluation (default 5)")
    p.add_argument("--combinations", type=combinations, default=None,
                   help="KEYS/CORRELATION pairs, e.g. joint/max,mean/mean (default: the checkpoint's config)")
    p.add_argument("--output-dir", default="", help="where the metrics and kshot.md go (default: checkpoint folder)")
    p.add_argument("--threads", type=thread_count, default=0, help="torch CPU threads (0: train.num_threads of the config)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    return p.parse(argv)


def table(rows: list[dict]) -> str:
    """Markdown table of the evaluations (AP values in %)."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| k | keys | correlation | unseen AP50 (std over runs) | seen AP50 (std) | unseen AP | seen AP | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['shots']} | {r['keys']} | {r['correlation']} | {pct(m['unseen_ap50'])} "
                     f"({pct(m['unseen_ap50_std'])}) | {pct(m['seen_ap50'])} ({pct(m['seen_ap50_std'])}) | "
                     f"{pct(m['unseen_ap'])} | {pct(m['seen_ap'])} | {m['runs']} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[list[dict], str]:
    import torch

    from detector.data import build_eval_dataset
    from detector.engine import run_evaluation
    from detector.evaluation import write_metrics
    from detector.features import FeatureCache
    from detector.loading import load_model
    from detector.utils.output_paths import check_output_path

    if args.output_dir:
        check_output_path(args.output_dir, "--output-dir")
    cfg, model, postprocessor = load_model(args.checkpoint, [*args.overrides, f"eval.split={args.split}",
                                                             f"eval.runs={args.runs}"])
    threads = args.threads or cfg.train.num_threads
    if threads > 0:
        torch.set_num_threads(threads)
    for p in model.parameters():
        p.requires_grad_(False)
    if not cfg.model.backbone.freeze:
        raise InputError("kshot_table caches backbone features: it needs model.backbone.freeze=true")
    out = args.output_dir or os.path.dirname(os.path.abspath(args.checkpoint))
    os.makedirs(out, exist_ok=True)
    combos = args.combinations or [(cfg.model.shot_keys, cfg.model.shot_correlation)]
    cache, device = FeatureCache(model.backbone, keep_pixels=model.uses_pixels), torch.device("cpu")
    rows = []
    for k in args.shots:
        for keys, corr in (combos if k > 1 else [("-", "-")]):
            if k > 1:
                model.cross_inputs.shot_keys, model.cross_inputs.shot_correlation = keys, corr
            cfg.eval.shots = k
            dataset, split_info = build_eval_dataset(cfg, args.split)
            start = time.time()
            metrics = run_evaluation(model, postprocessor, dataset, split_info, cfg, device, args.runs, cache=cache)
            metrics.update(shot_keys=keys, shot_correlation=corr, checkpoint=os.path.abspath(args.checkpoint))
            name = f"metrics_k{k}" + (f"_{keys}-{corr}" if k > 1 else "") + ".json"
            write_metrics(metrics, os.path.join(out, name))
            rows.append({"shots": k, "keys": keys, "correlation": corr, "metrics": metrics})
            print(f"k={k} {keys}/{corr}: unseen AP50 {metrics['unseen_ap50']:.3f}, seen AP50 {metrics['seen_ap50']:.3f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    text = (f"Checkpoint {os.path.abspath(args.checkpoint)}, {args.split} split, {args.runs} runs\n\n" + table(rows))
    with open(os.path.join(out, "kshot.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return rows, text


def main(argv=None) -> int:
    def body() -> int:
        _, text = run(parse_args(argv))
        print(text)
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
