"""Pictures: detections drawn on the query image with the exemplar beside it, and training curves."""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def draw_detections(query: Image.Image, exemplar: Image.Image, detections: Sequence[dict],
                    title: str = "") -> Image.Image:
    """The query image with each detection's box (``bbox`` = COCO ``[x, y, w, h]`` pixels) and
    score drawn, and the exemplar on a panel to its right. Returns a new RGB image."""
    query = query.convert("RGB")
    exemplar = exemplar.convert("RGB")
    w, h = query.size
    side = max(min(h, 256), 64)
    scale = side / max(exemplar.size)
    ex = exemplar.resize((max(1, round(exemplar.size[0] * scale)), max(1, round(exemplar.size[1] * scale))))
    pad = 8
    canvas = Image.new("RGB", (w + ex.size[0] + 3 * pad, max(h, ex.size[1] + 20) + 2 * pad), (255, 255, 255))
    canvas.paste(query, (pad, pad))
    canvas.paste(ex, (w + 2 * pad, pad + 16))
    draw = ImageDraw.Draw(canvas)
    draw.text((w + 2 * pad, pad), "exemplar", fill=(0, 0, 0))
    draw.rectangle([w + 2 * pad - 1, pad + 15, w + 2 * pad + ex.size[0], pad + 16 + ex.size[1]], outline=(0, 120, 255), width=2)
    for det in sorted(detections, key=lambda d: d["score"]):
        x, y, bw, bh = det["bbox"]
        colour = (255, int(255 * (1 - det["score"])), 0)
        draw.rectangle([pad + x, pad + y, pad + x + bw, pad + y + bh], outline=colour, width=2)
        draw.text((pad + x + 2, pad + y + 1), f"{det['score']:.2f}", fill=colour)
    if title:
        draw.text((pad, canvas.size[1] - pad - 2), title[:80], fill=(0, 0, 0))
    return canvas


def save_detections(path: str, query: Image.Image | np.ndarray, exemplar: Image.Image | np.ndarray,
                    detections: Sequence[dict], title: str = "") -> str:
    """:func:`draw_detections` written as a PNG to ``path`` (folders created)."""
    if isinstance(query, np.ndarray):
        query = Image.fromarray(query)
    if isinstance(exemplar, np.ndarray):
        exemplar = Image.fromarray(exemplar)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    draw_detections(query, exemplar, detections, title).save(path)
    return path


def plot_training_curves(metrics_jsonl: str, out_png: str) -> str:
    """Loss (and its main terms) and learning rate against iteration, plus the evaluation AP50
    points, from ``metrics.jsonl``; written to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    with open(metrics_jsonl, "r", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("type") == "train":
                    train.append(rec)
                elif rec.get("type") == "eval":
                    evals.append(rec)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    it = [r["iter"] for r in train]
    for key in ("loss", "loss_class", "loss_bbox", "loss_giou"):
        if train and key in train[0]:
            axes[0].plot(it, [r[key] for r in train], label=key)
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training loss (final layer terms)")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[1].plot(it, [r.get("lr", 0) for r in train])
    axes[1].set_xlabel("iteration")
    axes[1].set_title("learning rate (decoder)")
    # AP50 means with their spread over exemplar runs as error bars, one series per (set, split).
    series = sorted({(r.get("split", "val"), key) for r in evals for key in ("seen_ap50", "unseen_ap50")
                     if isinstance(r.get(key), (int, float))})
    for split, key in series:
        pts = [r for r in evals if r.get("split", "val") == split and isinstance(r.get(key), (int, float))]
        axes[2].errorbar([r["iter"] for r in pts], [r[key] for r in pts], yerr=[r.get(f"{key}_std") or 0.0 for r in pts],
                         marker="o" if split == "val" else "s", capsize=3, label=f"{split}: {key.replace('_', ' ')}")
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("AP50 (bars: std over exemplar runs)")
    axes[2].set_title("evaluation")
    if series:
        axes[2].legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
