"""The paper's Table 1 on the synthetic benchmark: the cross step of the detector, ablated.

``python tools/analysis/detector_ablation.py`` trains the detector of ``--config`` (default
``configs/synthetic.yaml``, the demo's model and schedule) once per cross-step variant and seed,
with everything else identical (data, schedule, seeds, threads), evaluates each run with the
protocol, and writes under ``--out`` (default ``outputs/ablation``):

* ``<variant>[_<layout>]_seed<s>/``: each run's ordinary training folder (config, metrics,
  checkpoints, curves);
* ``ablation.json``: every run's numbers; ``ablation.md``: the table (also printed);
* ``ablation.png``: seen / unseen AP50 per variant (bars: mean over seeds; dots: seeds) beside the
  training loss curves.

Variants (``model.attention``): ``indirect`` (keys from the support, values from the query image,
box-relative bias), ``misaligned`` (the same without the bias: the paper's naive misaligned
attention), ``double_cross`` (the query features first cross-attend to the support in an encoder,
then object queries attend to the result: keys and values from one image). ``--layouts`` adds the
support layouts to compare (``box``, the exemplar laid into each object query's box; ``pad``, the
official one; ``resize``); ``double_cross`` does not depend on the layout and runs once.

Every run is a subprocess ``python -m tools.train`` (so a crash or a kill loses one run, and a
rerun skips the runs whose ``metrics.json`` exists). ``--parallel N`` runs N at once with
``cpu_count / N`` threads each. The step time is the median over the run's logging windows after
its first epoch (the first epoch also fills the feature cache); the same number of threads for every
run makes the step times comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import yaml

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

VARIANTS = ("indirect", "misaligned", "double_cross")
LAYOUTS = ("box", "pad", "resize")


def run_name(variant: str, layout: str, seed: int) -> str:
    return f"{variant}_seed{seed}" if variant == "double_cross" else f"{variant}_{layout}_seed{seed}"


def plan(variants, layouts, seeds) -> list[dict]:
    """The runs of the table: one per (variant, layout, seed); ``double_cross`` once per seed."""
    runs = []
    for variant in variants:
        for layout in (layouts[:1] if variant == "double_cross" else layouts):
            for seed in seeds:
                runs.append({"variant": variant, "layout": layout, "seed": seed, "name": run_name(variant, layout, seed)})
    return runs


def train_command(config: str, run: dict, out_dir: str, threads: int, overrides: list[str]) -> list[str]:
    """The training subprocess of one run; ``--overwrite``: a run folder left by an unfinished
    attempt (no metrics.json) or a ``--rerun`` starts over."""
    return [sys.executable, "-m", "tools.train", "--config", config, "--no-progress", "--overwrite",
            f"train.output_dir={os.path.join(out_dir, run['name'])}", f"model.attention={run['variant']}",
            f"model.support_layout={run['layout']}", f"train.seed={run['seed']}", f"train.num_threads={threads}",
            *overrides]


def count_parameters(config: str, overrides: list[str]) -> dict:
    """Trainable and total parameters of the model ``config`` + ``overrides`` builds (random weights)."""
    from detector.config import load_config
    from detector.models import build_model

    cfg = load_config(config, overrides + ["model.backbone.pretrained=none"])
    model = build_model(cfg)[0]
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def read_run(folder: str) -> dict:
    """Final metrics, step time and loss curve of one finished training folder."""
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    with open(os.path.join(folder, "config.yaml"), encoding="utf-8") as f:
        batch = int(yaml.safe_load(f)["train"]["batch_size"])
    train = []
    with open(os.path.join(folder, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if record.get("type") == "train":
                    train.append(record)
    later = [r for r in train if r["epoch"] >= 1] or train
    speeds = [r["images_per_s"] for r in later if r.get("images_per_s")]
    step_ms = 1e3 * batch / statistics.median(speeds) if speeds else None
    keys = ("seen_ap50", "unseen_ap50", "seen_ap", "unseen_ap", "seen_ap50_std", "unseen_ap50_std")
    return {**{k: metrics.get(k) for k in keys}, "step_ms": step_ms, "iterations": train[-1]["iter"] if train else 0,
            "train_time_s": train[-1]["time_s"] if train else None,
            "loss_curve": [(r["iter"], r["loss"]) for r in train]}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (variant, layout): means over seeds (and the seeds' min-max for AP50)."""
    rows: dict = {}
    for r in runs:
        rows.setdefault((r["variant"], r["layout"] if r["variant"] != "double_cross" else "-"), []).append(r)
    out = []
    for (variant, layout), rs in rows.items():
        row = {"variant": variant, "layout": layout, "seeds": [r["seed"] for r in rs],
               "params_trainable": rs[0]["params"]["trainable"], "params_total": rs[0]["params"]["total"]}
        for k in ("seen_ap50", "unseen_ap50", "seen_ap", "unseen_ap", "step_ms", "iterations"):
            row[k] = _mean([r[k] for r in rs])
        for k in ("seen_ap50", "unseen_ap50"):
            values = [r[k] for r in rs if r[k] is not None]
            row[k + "_range"] = (min(values), max(values)) if values else None
        out.append(row)
    return out


def markdown_table(rows: list[dict]) -> str:
    lines = ["| cross step | support layout | seen AP50 | unseen AP50 | seen AP | unseen AP | trainable params | "
             "step ms | iterations |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def ap50(k):
            rng = r[k + "_range"]
            spread = f" ({_fmt(rng[0])}-{_fmt(rng[1])})" if rng and len(r["seeds"]) > 1 else ""
            return _fmt(r[k]) + spread
        lines.append(f"| {r['variant']} | {r['layout']} | {ap50('seen_ap50')} | {ap50('unseen_ap50')} | "
                     f"{_fmt(r['seen_ap'])} | {_fmt(r['unseen_ap'])} | {r['params_trainable'] / 1e6:.3f} M | "
                     f"{_fmt(r['step_ms'], 0)} | {_fmt(r['iterations'], 0)} |")
    return "\n".join(lines)


def make_figure(runs: list[dict], rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.2))
    labels = [r["variant"] if r["layout"] == "-" else f"{r['variant']}\n({r['layout']})" for r in rows]
    width = 0.38
    for j, (key, colour) in enumerate((("seen_ap50", "tab:blue"), ("unseen_ap50", "tab:orange"))):
        xs = [i + (j - 0.5) * width for i in range(len(rows))]
        ax.bar(xs, [r[key] or 0.0 for r in rows], width, color=colour, alpha=0.8, label=key.replace("_", " "))
        for x, row in zip(xs, rows):
            layout = row["layout"] if row["layout"] != "-" else None
            seeds = [r[key] for r in runs if r["variant"] == row["variant"]
                     and (layout is None or r["layout"] == layout) and r[key] is not None]
            ax.scatter([x] * len(seeds), seeds, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("AP50")
    ax.set_title("Synthetic one-shot benchmark: cross-step ablation")
    ax.legend()
    for r in runs:
        if r["loss_curve"]:
            it, loss = zip(*r["loss_curve"])
            ax_loss.plot(it, loss, label=r["name"], linewidth=1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss (all terms)")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/synthetic.yaml")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--layouts", nargs="+", default=["pad"], choices=LAYOUTS,
                   help="support layouts for indirect / misaligned (the first is also double_cross's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="outputs/ablation", help="folder of the runs and the table")
    p.add_argument("--figure", default="", help="also copy the figure here (e.g. docs/figures/ablation.png)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (threads per run: cpu_count / parallel)")
    p.add_argument("--rerun", action="store_true", help="train again even where a run's metrics.json exists")
    p.add_argument("overrides", nargs="*", help="dotted config overrides applied to every run")
    args = p.parse_args(argv)
    if args.parallel < 1:
        p.error("--parallel must be at least 1")
    os.makedirs(args.out, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    runs = plan(args.variants, args.layouts, args.seeds)
    t0 = time.time()

    def execute(run: dict) -> dict:
        folder = os.path.join(args.out, run["name"])
        if args.rerun or not os.path.isfile(os.path.join(folder, "metrics.json")):
            log_path = os.path.join(args.out, run["name"] + ".log")
            print(f"[{time.time() - t0:6.0f}s] training {run['name']} (log: {log_path})", flush=True)
            with open(log_path, "w", encoding="utf-8") as log:
                rc = subprocess.call(train_command(args.config, run, args.out, threads, args.overrides),
                                     stdout=log, stderr=subprocess.STDOUT, cwd=_REPO)
            if rc != 0:
                raise RuntimeError(f"run {run['name']} failed (exit {rc}); see {log_path}")
        else:
            print(f"[{time.time() - t0:6.0f}s] {run['name']}: finished earlier, reusing {folder}", flush=True)
        return {**run, **read_run(folder)}

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        done = list(pool.map(execute, runs))
    params: dict = {}  # one model build per (variant, layout), whatever the number of seeds
    for r in done:
        key = (r["variant"], r["layout"])
        if key not in params:
            params[key] = count_parameters(args.config, args.overrides + [f"model.attention={r['variant']}",
                                                                          f"model.support_layout={r['layout']}"])
        r["params"] = params[key]
    rows = summarise(done)
    table = markdown_table(rows)
    png = os.path.join(args.out, "ablation.png")
    make_figure(done, rows, png)
    if args.figure:
        os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
        make_figure(done, rows, args.figure)
    with open(os.path.join(args.out, "ablation.json"), "w", encoding="utf-8") as f:
        json.dump({"config": args.config, "overrides": args.overrides, "threads_per_run": threads,
                   "parallel": args.parallel, "total_seconds": time.time() - t0, "rows": rows, "runs": done}, f, indent=1)
    with open(os.path.join(args.out, "ablation.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    print(f"wrote {png} and {os.path.join(args.out, 'ablation.json')}; total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
