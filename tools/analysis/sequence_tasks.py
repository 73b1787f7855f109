"""Train indirect, naive misaligned and standard cross-attention on the paper's sequence tasks.

``python tools/analysis/sequence_tasks.py --task sort --seeds 0 1 2 --out docs/figures`` trains the
three variants of :class:`tools.analysis.sequence_model.SequenceModel` (6 layers, 4 heads, hidden 128) with each
seed on the fixed 1000-example training split and writes, under ``--out``:

* ``seq_<task>.png``: test accuracy against training step, mean over seeds with a min-max band;
* ``seq_<task>.json``: the settings, every curve and the final accuracies;
* a markdown table of final test accuracy (mean, std and min-max over seeds) on stdout.

Training (the paper states none of it): AdamW (betas 0.9/0.999, weight decay 1e-4), learning rate
``--lr`` with a linear warm-up over the first 5% of steps and a cosine decay to zero, batch
``--batch-size`` drawn without replacement within each pass over the training set, gradient norm
clipped at 1, loss = cross-entropy of every layer's prediction averaged over layers (DETR's auxiliary
losses). The seed fixes the initialisation and the batch order; the data are the same for all runs.
The reported accuracy is the last layer's, on the 200 test examples (per slot for sorting).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tools.analysis.sequence_data import CHANCE, NUM_SLOTS, PAD, SEQ_LEN, SequenceTaskData, load_task  # noqa: E402
from tools.analysis.sequence_model import VARIANTS, SequenceModel  # noqa: E402

DEFAULTS = {
    # per task: steps, batch size, learning rate, evaluation interval
    "sort": dict(steps=400, batch_size=32, lr=5e-4, eval_every=25),
    "retrieval": dict(steps=300, batch_size=32, lr=5e-4, eval_every=25),
}


def predict(logits: torch.Tensor, num_targets: int) -> torch.Tensor:
    """``logits [B, Q, n]`` -> predicted positions ``[B, num_targets]``.

    With one target per slot this is the per-slot arg-max; with a single target shared by all slots
    (retrieval) it is the arg-max of the slots' mean log-probability.
    """
    if logits.shape[1] == num_targets:
        return logits.argmax(-1)
    return logits.log_softmax(-1).mean(1, keepdim=True).argmax(-1)


def slot_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits [B, Q, n]`` against ``target [B, Q]`` or ``[B, 1]`` (shared)."""
    target = target.expand(-1, logits.shape[1])
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


@torch.no_grad()
def accuracy(model: SequenceModel, data: SequenceTaskData, batch_size: int = 200) -> float:
    """Fraction of targets predicted exactly by the last layer (per slot for sorting)."""
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        out = model(data.conditioning[i:i + batch_size], data.content[i:i + batch_size])
        target = data.target[i:i + batch_size]
        correct += (predict(out["logits"], target.shape[1]) == target).sum().item()
    model.train()
    return correct / data.target.numel()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_run(task: str, variant: str, seed: int, train: SequenceTaskData, test: SequenceTaskData,
              steps: int, batch_size: int, lr: float, eval_every: int, model_kwargs: dict | None = None,
              log=None) -> dict:
    """Train one model; returns ``{"steps": [...], "test_acc": [...], "train_loss": [...], "seconds"}``.

    ``model_kwargs`` overrides the :class:`SequenceModel` sizes (the tests use a smaller model).
    """
    torch.manual_seed(seed)
    kwargs = {"slots_from_content": task == "retrieval", **(model_kwargs or {})}
    model = SequenceModel(variant, NUM_SLOTS[task], SEQ_LEN, PAD + 1, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=gen)
    cursor = 0
    curve = {"steps": [0], "test_acc": [accuracy(model, test)], "train_loss": [float("nan")]}
    running, count = 0.0, 0
    t0 = time.time()
    for step in range(1, steps + 1):
        if cursor + batch_size > len(train):
            order, cursor = torch.randperm(len(train), generator=gen), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        out = model(train.conditioning[idx], train.content[idx])
        target = train.target[idx]
        loss = sum(slot_loss(lg, target) for lg in out["aux_logits"]) / len(out["aux_logits"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        count += 1
        if step % eval_every == 0 or step == steps:
            curve["steps"].append(step)
            curve["test_acc"].append(accuracy(model, test))
            curve["train_loss"].append(running / count)
            running, count = 0.0, 0
            if log:
                log(f"{task} {variant:>10} seed {seed} step {step:>5} loss {curve['train_loss'][-1]:.3f} "
                    f"test acc {curve['test_acc'][-1]:.3f} ({time.time() - t0:.0f}s)")
    curve["seconds"] = time.time() - t0
    return curve


def summarise(results: dict) -> dict:
    """``{variant: {"mean", "std", "min", "max", "per_seed"}}`` of final test accuracies."""
    table = {}
    for variant, runs in results.items():
        finals = torch.tensor([r["test_acc"][-1] for r in runs.values()], dtype=torch.float64)
        table[variant] = {"mean": finals.mean().item(), "std": finals.std().item() if len(finals) > 1 else 0.0,
                          "min": finals.min().item(), "max": finals.max().item(),
                          "per_seed": {s: r["test_acc"][-1] for s, r in runs.items()}}
    return table


def markdown_table(task: str, table: dict) -> str:
    """Final test accuracy per variant: mean +- std (min - max) over seeds."""
    lines = [f"| {task}: variant | final test accuracy, mean ± std | min – max | per seed |", "|---|---|---|---|"]
    for variant, row in table.items():
        per_seed = ", ".join(f"{v:.3f}" for v in row["per_seed"].values())
        lines.append(f"| {variant} | {row['mean']:.3f} ± {row['std']:.3f} | {row['min']:.3f} – {row['max']:.3f} "
                     f"| {per_seed} |")
    return "\n".join(lines)


def make_figure(task: str, results: dict, path: str) -> None:
    """Test accuracy vs step per variant: mean over seeds (line) and min-max band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for variant, runs in results.items():
        steps = next(iter(runs.values()))["steps"]
        accs = torch.tensor([r["test_acc"] for r in runs.values()])
        line, = ax.plot(steps, accs.mean(0), label=f"{variant} ({len(runs)} seeds)")
        ax.fill_between(steps, accs.min(0).values, accs.max(0).values, color=line.get_color(), alpha=0.2)
    ax.axhline(CHANCE[task], color="k", ls=":", lw=1, label="chance")
    ax.set(xlabel="training step", ylabel="test accuracy" + (" (per slot)" if task == "sort" else ""),
           title=f"{task}: test accuracy (mean, min-max band over seeds)", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, help="optimiser steps per run (default per task)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    cfg = dict(DEFAULTS[args.task])
    for key in cfg:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    train, test = load_task(args.task)
    t0 = time.time()
    results = {v: {} for v in args.variants}
    for variant in args.variants:
        for seed in args.seeds:
            results[variant][seed] = train_run(args.task, variant, seed, train, test, log=print, **cfg)
    table = summarise(results)
    png = os.path.join(args.out, f"seq_{args.task}.png")
    make_figure(args.task, results, png)
    with open(os.path.join(args.out, f"seq_{args.task}.json"), "w") as f:
        json.dump({"task": args.task, "settings": cfg, "seeds": args.seeds, "threads": args.threads,
                   "total_seconds": time.time() - t0, "final": table,
                   "curves": {v: {str(s): r for s, r in runs.items()} for v, runs in results.items()}}, f, indent=1)
    print(markdown_table(args.task, table))
    print(f"wrote {png}; total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
