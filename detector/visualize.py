"""Pictures: detections drawn on the query image with the exemplar beside it, and training curves."""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


MIN_PICTURE_SIDE = 720  # the query image is enlarged to at least this longer side, so small objects show
MAX_SCORE_LABELS = 100  # more detections than this (a tiled photo) get no score labels: colour alone tells the score


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (words longer than a line are cut)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            while draw.textlength(word, font=font) > width and len(word) > 1:
                cut = max(1, int(len(word) * width / draw.textlength(word, font=font)) - 1)
                lines.append(word[:cut])
                word = word[cut:]
            lines.append(word)
    return lines or [""]


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour, font, bounds: tuple[int, int]) -> None:
    """``text`` on a filled box of ``colour`` just above ``xy`` (inside the box when there is no
    room above), kept inside ``bounds`` = (width, height)."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    w, h = x1 - x0 + 6, y1 - y0 + 4
    x = min(max(xy[0], 0), bounds[0] - w)
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    draw.rectangle([x, y, x + w, y + h], fill=colour)
    draw.text((x + 3 - x0, y + 2 - y0), text, fill=(0, 0, 0), font=font)


def _box_style(detections: Sequence[dict], scale: float, picture_side: int) -> tuple[int, int]:
    """``(line width, label font size)`` of the boxes: scaled with the picture, but no thicker than
    an eighth and no larger than a third of the median box side (hundreds of small boxes on a
    large photo stay apart and readable); font size 0: no score labels (see :data:`MAX_SCORE_LABELS`)."""
    line = max(2, min(4, round(picture_side / 300)))
    font_size = max(12, round(picture_side / 48))
    if not detections:
        return line, font_size
    side = float(np.median([np.sqrt(max(d["bbox"][2], 0) * max(d["bbox"][3], 0)) for d in detections])) * scale
    line = max(1, min(line, round(side / 8)))
    font_size = 0 if len(detections) > MAX_SCORE_LABELS else max(10, min(font_size, round(side / 3)))
    return line, font_size


def draw_detections(query: Image.Image, exemplar: Image.Image, detections: Sequence[dict],
                    title: str = "", *, ground_truth: Sequence[Sequence[float]] = (), score_labels: bool = True,
                    exemplar_side: int = 0) -> Image.Image:
    """The query image with each detection's box (``bbox`` = COCO ``[x, y, w, h]`` pixels of
    ``query``) and its score on a coloured label, the exemplar on a panel to its right and
    ``title`` as a caption below, wrapped to the picture's width. A query image whose longer side
    is below :data:`MIN_PICTURE_SIDE` is enlarged to it. Box lines and labels follow the boxes' size
    (:func:`_box_style`); past :data:`MAX_SCORE_LABELS` detections the colour alone gives the score
    (red: high, yellow: low). Returns a new RGB image.

    ``ground_truth``: ``[x, y, w, h]`` boxes (pixels of ``query``) drawn first as thin cyan lines.
    ``score_labels``: ``False`` never writes the scores. ``exemplar_side``: longer side of the
    exemplar panel in pixels (0: the query's height, clamped to 128-256)."""
    query, exemplar = query.convert("RGB"), exemplar.convert("RGB")
    scale = max(1.0, MIN_PICTURE_SIDE / max(query.size))
    w, h = round(query.width * scale), round(query.height * scale)
    font = _font(max(12, round(max(w, h) / 48)))
    side = exemplar_side or max(min(h, 256), 128)
    ex_scale = side / max(exemplar.size)
    ex = exemplar.resize((max(1, round(exemplar.width * ex_scale)), max(1, round(exemplar.height * ex_scale))))
    pad, head = 8, font.size + 8 if hasattr(font, "size") else 20
    width = w + ex.width + 3 * pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption = _wrap(probe, title, font, width - 2 * pad) if title else []
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 4
    body_h = max(h, head + ex.height) + 2 * pad
    canvas = Image.new("RGB", (width, body_h + len(caption) * line_h + (pad if caption else 0)), (255, 255, 255))
    canvas.paste(query.resize((w, h), Image.BICUBIC) if scale > 1 else query, (pad, pad))
    canvas.paste(ex, (w + 2 * pad, pad + head))
    draw = ImageDraw.Draw(canvas)
    draw.text((w + 2 * pad, pad), "exemplar", fill=(0, 0, 0), font=font)
    draw.rectangle([w + 2 * pad - 1, pad + head - 1, w + 2 * pad + ex.width, pad + head + ex.height],
                   outline=(0, 120, 255), width=2)
    line, label_size = _box_style(detections, scale, max(w, h))
    label_font = _font(label_size) if label_size and score_labels else None
    for box in ground_truth:
        x, y, bw, bh = (v * scale for v in box)
        draw.rectangle([pad + x, pad + y, pad + x + bw, pad + y + bh], outline=(0, 230, 255), width=max(1, line // 2))
    for det in sorted(detections, key=lambda d: d["score"]):
        x, y, bw, bh = (v * scale for v in det["bbox"])
        colour = (255, int(200 * (1 - det["score"])), 0)
        draw.rectangle([pad + x, pad + y, pad + x + bw, pad + y + bh], outline=colour, width=line)
        if label_font is not None:
            _label(draw, (pad + x, pad + y), f"{det['score']:.2f}", colour, label_font, (pad + w, body_h))
    for i, line in enumerate(caption):
        draw.text((pad, body_h + i * line_h), line, fill=(0, 0, 0), font=font)
    return canvas


def tile_exemplars(exemplars: Sequence[Image.Image]) -> Image.Image:
    """Several exemplar crops side by side (k-shot), each scaled to the tallest one's height, on a
    white background with a 4-pixel gap; one crop comes back as it is."""
    if len(exemplars) == 1:
        return exemplars[0]
    height = max(e.height for e in exemplars)
    scaled = [e.convert("RGB").resize((max(1, round(e.width * height / e.height)), height)) for e in exemplars]
    gap = 4
    canvas = Image.new("RGB", (sum(e.width for e in scaled) + gap * (len(scaled) - 1), height), (255, 255, 255))
    x = 0
    for e in scaled:
        canvas.paste(e, (x, 0))
        x += e.width + gap
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


def _read_metrics(metrics_jsonl: str) -> tuple[list[dict], list[dict]]:
    """The ``train`` and ``eval`` records of ``metrics.jsonl``."""
    train, evals = [], []
    with open(metrics_jsonl, "r", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("type") == "train":
                    train.append(rec)
                elif rec.get("type") == "eval":
                    evals.append(rec)
    return train, evals


def draw_eval_panel(ax, evals: Sequence[dict]) -> list[str]:
    """AP50 and AP of the ``eval`` records against iteration, one colour per (split, seen/unseen):
    AP50 as a solid line with markers, AP (0.5:0.95) dashed, and the spread of AP50 over exemplar
    runs (± std) as a shaded band (an error bar where there is a single point), each its own legend
    entry. Returns the legend labels."""
    colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"])
    groups = sorted({(r.get("split", "val"), part) for r in evals for part in ("seen", "unseen")
                     if isinstance(r.get(f"{part}_ap50"), (int, float))})
    for split, part in groups:
        pts = sorted((r for r in evals if r.get("split", "val") == split and isinstance(r.get(f"{part}_ap50"), (int, float))),
                     key=lambda r: r["iter"])
        x = np.array([r["iter"] for r in pts], dtype=float)
        ap50 = np.array([r[f"{part}_ap50"] for r in pts], dtype=float)
        std = np.array([r.get(f"{part}_ap50_std") or 0.0 for r in pts], dtype=float)
        colour, name = next(colours, None), f"{split} {part}"
        ax.plot(x, ap50, "-o", color=colour, label=f"{name} AP50 (mean of runs)")
        if len(x) > 1:
            ax.fill_between(x, ap50 - std, ap50 + std, color=colour, alpha=0.2, linewidth=0,
                            label=f"{name} AP50 ± std over runs")
        else:
            ax.errorbar(x, ap50, yerr=std, fmt="none", ecolor=colour, alpha=0.35, capsize=0, elinewidth=8,
                        zorder=1, label=f"{name} AP50 ± std over runs")
        ap = [(r["iter"], r[f"{part}_ap"]) for r in pts if isinstance(r.get(f"{part}_ap"), (int, float))]
        if ap:
            ax.plot(*zip(*ap), "--", marker="x", color=colour, label=f"{name} AP (0.5:0.95)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("AP (fraction)")
    ax.set_title("evaluation")
    if groups:  # beside the panel, so that it hides no point
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return [t.get_text() for t in ax.get_legend().get_texts()] if groups else []


def plot_training_curves(metrics_jsonl: str, out_png: str) -> str:
    """Loss (and its main terms) and learning rate against iteration, and the evaluations
    (:func:`draw_eval_panel`), from ``metrics.jsonl``; written to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = _read_metrics(metrics_jsonl)
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.5), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    it = [r["iter"] for r in train]
    for key in ("loss", "loss_class", "loss_bbox", "loss_giou"):
        if train and key in train[0]:
            axes[0].plot(it, [r[key] for r in train], label=key)
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training loss (final layer terms)")
    axes[0].set_yscale("log")
    if train:
        axes[0].legend()
    axes[1].plot(it, [r.get("lr", 0) for r in train], label="lr (decoder)")
    axes[1].set_xlabel("iteration")
    axes[1].set_title("learning rate")
    if train:
        axes[1].legend()
    draw_eval_panel(axes[2], evals)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
