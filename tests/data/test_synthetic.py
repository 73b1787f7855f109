"""The synthetic benchmark: determinism, content, and that it needs the support (oracle test)."""
import json
import os

import numpy as np
import pytest
import torch

from detector.data import CocoIndex, OneShotEvalDataset, build_synthetic, generate_synthetic, synthetic_split
from detector.data.synthetic import COLOUR_STREAM, VERSION, render_image
from detector.evaluation import evaluate_oneshot, oracle_predict

SPLIT = synthetic_split()


def _load(root, split):
    with open(os.path.join(root, "annotations", f"{split}.json")) as f:
        return json.load(f)


def test_generation_is_deterministic_and_worker_independent(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate_synthetic(a, "tiny", seed=5, workers=1, num_train=70, num_val=2, image_size=64)
    generate_synthetic(b, "tiny", seed=5, workers=2, num_train=70, num_val=2, image_size=64)
    generate_synthetic(c, "tiny", seed=6, workers=1, num_train=70, num_val=2, image_size=64)
    assert _load(a, "train")["annotations"] == _load(b, "train")["annotations"]
    for name in ("000001.jpg", "000070.jpg"):
        with open(os.path.join(a, "images", "train", name), "rb") as f1, open(os.path.join(b, "images", "train", name), "rb") as f2:
            assert f1.read() == f2.read()
    assert _load(a, "train")["annotations"] != _load(c, "train")["annotations"]


def test_tiny_benchmark_content(tiny_root):
    train, val = CocoIndex(f"{tiny_root}/annotations/train.json"), CocoIndex(f"{tiny_root}/annotations/val.json")
    assert len(train.categories) == 64 and train.num_dropped_boxes == 0
    assert {a.category_id for a in train.annotations} <= set(SPLIT.seen_ids)  # unseen never shown in training
    assert {a.category_id for a in val.annotations} & set(SPLIT.unseen_ids)
    sides = []
    for index in (train, val):
        for image_id, anns in index.by_image.items():
            cats = {a.category_id for a in anns}
            assert 2 <= len(cats) <= 4  # several instances of 2 to 4 categories
            assert len(anns) >= 2
            for a in anns:
                x0, y0, x1, y1 = a.box_xyxy
                assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
                sides.append(max(x1 - x0, y1 - y0))
    assert max(sides) / min(sides) >= 4.0  # scale range of at least 4x
    overlapping = 0  # partial occlusion: instances drawn over each other
    for anns in train.by_image.values():
        boxes = torch.tensor([a.box_xyxy for a in anns])
        lt, rb = torch.max(boxes[:, None, :2], boxes[None, :, :2]), torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        overlapping += int((inter.triu(1) > 0).any())
    assert overlapping >= len(train.by_image) // 4


def test_identity_is_not_a_colour():
    rng = np.random.default_rng(0)
    colours = []
    for _ in range(30):
        image, anns = render_image(rng, 128, [1, 2])  # circle-solid and circle-stripes
        for a in [a for a in anns if a["category_id"] == 1]:
            x, y, w, h = a["bbox"]
            colours.append(image[y + h // 2, x + w // 2].astype(float))
    assert len(colours) >= 20
    assert np.std(np.stack(colours), axis=0).min() > 30  # the same category in many colours


def test_image_colours_share_a_category_look_within_a_training_image_only(tmp_path):
    rng_args = [3, 0, 7]
    plain, plain_anns = render_image(np.random.default_rng(rng_args), 128, [1, 2, 3])
    shared, shared_anns = render_image(np.random.default_rng(rng_args), 128, [1, 2, 3],
                                       colour_rng=np.random.default_rng(rng_args + [COLOUR_STREAM]))
    assert shared_anns == plain_anns  # the same scene: only the colours differ
    assert not np.array_equal(shared, plain)
    spread = {}
    for seed in range(40):  # the centre pixel of each unhidden solid circle (category 1) of many images
        image, anns = render_image(np.random.default_rng([seed]), 128, [1, 9],
                                   colour_rng=np.random.default_rng([seed, COLOUR_STREAM]))
        centres = [image[a["bbox"][1] + a["bbox"][3] // 2, a["bbox"][0] + a["bbox"][2] // 2].astype(float)
                   for a in anns if a["category_id"] == 1 and a["area"] > 0.7 * a["bbox"][2] * a["bbox"][3]]  # unhidden
        spread[seed] = np.stack(centres) if centres else None
    within = [np.abs(c - c.mean(0)).max() for c in spread.values() if c is not None and len(c) > 1]
    across = np.std(np.stack([c[0] for c in spread.values() if c is not None]), axis=0).min()
    assert within and max(within) < 45  # jitter, shading and noise only
    assert across > 30  # across images the category still comes in many colours
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    generate_synthetic(a, "tiny", seed=1, workers=1, num_train=3, num_val=3, image_size=64)
    generate_synthetic(b, "tiny", seed=1, workers=1, num_train=3, num_val=3, image_size=64, train_colours="image")
    for split in ("val", "test"):  # the benchmark's evaluation images are the default's, byte for byte
        for name in sorted(os.listdir(os.path.join(a, "images", split))):
            with open(os.path.join(a, "images", split, name), "rb") as f1, open(os.path.join(b, "images", split, name), "rb") as f2:
                assert f1.read() == f2.read()
    assert _load(a, "train")["annotations"] == _load(b, "train")["annotations"]
    assert build_synthetic(b, "tiny", 1, verbose=False, train_colours="image") == b
    with pytest.raises(ValueError, match="train_colours=image, not .*train_colours=instance"):
        build_synthetic(b, "tiny", 1, verbose=False)
    with pytest.raises(ValueError, match="training colours 'frame'"):
        generate_synthetic(str(tmp_path / "c"), "tiny", train_colours="frame")


def test_build_synthetic_checks_what_is_there(tmp_path):
    root = str(tmp_path / "bench")
    generate_synthetic(root, "tiny", seed=0, workers=1, num_train=4, num_val=4, image_size=64)
    assert build_synthetic(root, "tiny", 0, verbose=False) == root  # same size and seed: kept
    with pytest.raises(ValueError, match="size=tiny seed=0.*not size=small seed=0"):
        build_synthetic(root, "small", 0, verbose=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a synthetic benchmark"):
        build_synthetic(str(other), "tiny", 0, verbose=False)
    with open(os.path.join(root, "meta.json")) as f:
        assert json.load(f)["version"] == VERSION


def test_class_agnostic_oracle_cannot_pass_without_the_support(tmp_path):
    root = str(tmp_path / "oracle")
    generate_synthetic(root, "tiny", seed=1, workers=1, num_train=2, num_val=160, image_size=96)
    ds = OneShotEvalDataset(f"{root}/annotations/val.json", f"{root}/images/val", SPLIT.seen_ids + SPLIT.unseen_ids,
                            support_size=32, eval_size=96, min_exemplar_area=64)
    kwargs = dict(runs=1, seen_ids=SPLIT.seen_ids, unseen_ids=SPLIT.unseen_ids, batch_size=32)
    assert len([it for it in ds.items if it.category_id in SPLIT.unseen_ids]) >= 60
    blind = evaluate_oneshot(oracle_predict(ds), ds, **kwargs)
    assert blind["unseen_ap50"] <= 0.5 and blind["seen_ap50"] <= 0.5
    perfect = evaluate_oneshot(oracle_predict(ds, same_category_only=True), ds, **kwargs)
    assert perfect["unseen_ap50"] == pytest.approx(1.0) and perfect["seen_ap"] == pytest.approx(1.0)


def test_test_split_is_held_out_from_its_own_stream(tmp_path):
    root = str(tmp_path / "bench")
    generate_synthetic(root, "tiny", seed=0, workers=1, num_train=4, num_val=6, image_size=64)
    val, test = _load(root, "val"), _load(root, "test")
    assert len(test["images"]) == len(val["images"]) == 6
    assert test["annotations"] != val["annotations"]  # other images, not a copy of val
    assert {a["category_id"] for a in test["annotations"]} & set(SPLIT.unseen_ids)
    for name in ("000001.jpg", "000006.jpg"):
        with open(os.path.join(root, "images", "val", name), "rb") as f1, \
                open(os.path.join(root, "images", "test", name), "rb") as f2:
            assert f1.read() != f2.read()
    with open(os.path.join(root, "meta.json")) as f:
        assert json.load(f)["num_test"] == 6


def test_a_benchmark_made_before_the_test_split_gets_it_added_unchanged_otherwise(tmp_path):
    fresh, old = str(tmp_path / "fresh"), str(tmp_path / "old")
    for root in (fresh, old):
        generate_synthetic(root, "tiny", seed=0, workers=1, num_train=4, num_val=5, image_size=64)
    # Turn `old` into a folder written before the test split existed.
    import shutil
    shutil.rmtree(os.path.join(old, "images", "test"))
    os.remove(os.path.join(old, "annotations", "test.json"))
    with open(os.path.join(old, "meta.json")) as f:
        meta = json.load(f)
    meta.pop("num_test")
    with open(os.path.join(old, "meta.json"), "w") as f:
        json.dump(meta, f)
    val_before = _load(old, "val")
    assert build_synthetic(old, "tiny", 0, verbose=False) == old
    assert _load(old, "test") == _load(fresh, "test") and _load(old, "val") == val_before
    with open(os.path.join(old, "images", "test", "000005.jpg"), "rb") as f1, \
            open(os.path.join(fresh, "images", "test", "000005.jpg"), "rb") as f2:
        assert f1.read() == f2.read()
    assert sorted(os.listdir(tmp_path)) == ["fresh", "old"]  # no partial folder left behind
