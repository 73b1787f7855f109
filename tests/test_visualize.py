"""Pictures people can read: score labels on a background, captions not clipped, small images
enlarged, and a legend that covers every series of the evaluation panel."""
import json

import numpy as np
from PIL import Image

from detector.visualize import MIN_PICTURE_SIDE, draw_detections, draw_eval_panel, plot_training_curves


def test_small_queries_are_enlarged_and_labels_have_a_background():
    query = Image.new("RGB", (64, 48), (255, 255, 255))
    exemplar = Image.new("RGB", (20, 20), (0, 0, 255))
    out = draw_detections(query, exemplar, [{"bbox": [20, 20, 10, 8], "score": 0.87}])
    scale = MIN_PICTURE_SIDE / 64
    assert out.width >= MIN_PICTURE_SIDE
    arr = np.asarray(out).astype(int)
    # The label sits just above the box, on a filled rectangle of the box's colour (not white).
    x0, y0 = 8 + round(20 * scale), 8 + round(20 * scale)
    label = arr[y0 - 12:y0 - 2, x0 + 2:x0 + 30]
    assert (np.abs(label - [255, 255, 255]).sum(axis=2) > 100).mean() > 0.9


def test_a_long_caption_is_wrapped_not_clipped():
    query = Image.new("RGB", (300, 200), (255, 255, 255))
    title = "query_image_with_a_long_name.png: " + "many words in the caption " * 8
    out = draw_detections(query, Image.new("RGB", (30, 30)), [], title=title)
    arr = np.asarray(out)
    dark_rows = np.where((arr < 128).all(axis=2).any(axis=1))[0]
    caption_rows = dark_rows[dark_rows > 8 + MIN_PICTURE_SIDE * 200 / 300]
    assert len(caption_rows) > 0 and caption_rows.max() < out.height - 1  # text inside the picture
    dark_cols = np.where((arr[caption_rows.min():] < 128).all(axis=2).any(axis=0))[0]
    assert dark_cols.max() < out.width - 4  # no line runs off the right edge
    line_tops = np.diff(caption_rows) > 3
    assert line_tops.sum() >= 1  # at least two lines


def test_the_evaluation_legend_covers_every_series(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [{"type": "eval", "iter": i, "split": "val", "seen_ap50": 0.3, "seen_ap50_std": 0.02, "unseen_ap50": 0.2,
              "unseen_ap50_std": 0.04, "seen_ap": 0.1, "unseen_ap": 0.08} for i in (10, 20)]
    evals.append({"type": "eval", "iter": 20, "split": "test", "final": True, "seen_ap50": 0.3, "seen_ap50_std": 0.01,
                  "unseen_ap50": 0.25, "unseen_ap50_std": 0.03, "seen_ap": 0.1, "unseen_ap": 0.09})
    fig, ax = plt.subplots()
    labels = draw_eval_panel(ax, evals)
    plt.close(fig)
    expected = {f"{split} {part} {what}" for split in ("val", "test") for part in ("seen", "unseen")
                for what in ("AP50 (mean of runs)", "AP50 ± std over runs", "AP (0.5:0.95)")}
    assert set(labels) == expected  # mean, spread and AP: separate entries for every series
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"type": "train", "iter": 10, "loss": 1.0, "lr": 1e-3}] + evals))
    png = plot_training_curves(str(path), str(tmp_path / "curves.png"))
    assert Image.open(png).size[0] > 1000


def test_hundreds_of_small_boxes_on_a_large_photo_stay_apart():
    """A tiled photo: thin lines that follow the boxes' size, colour instead of hundreds of labels."""
    from detector.visualize import MAX_SCORE_LABELS, _box_style

    rng = np.random.default_rng(0)
    many = [{"bbox": [float(x), float(y), 40.0, 40.0], "score": 0.5} for x, y in rng.uniform(0, 2400, (500, 2))]
    line, font = _box_style(many, 1.0, 2500)
    assert line <= 5 and font == 0 and len(many) > MAX_SCORE_LABELS
    line, font = _box_style(many[:50], 1.0, 2500)
    assert 10 <= font <= 40 // 3 + 1  # labels no larger than a third of the boxes
    query = Image.new("RGB", (2500, 2400), (255, 255, 255))
    out = draw_detections(query, Image.new("RGB", (40, 40)), many, title="500 detections")
    assert out.width > 2500
