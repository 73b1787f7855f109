"""One-shot datasets: item contract, sampling invariants, augmentation consistency, collate."""
import json

import numpy as np
import pytest
import torch

from detector.config import load_config
from detector.data import (CocoIndex, OneShotDataset, OneShotEvalDataset, QueryTransform, build_datasets,
                           collate_oneshot, synthetic_split)
from detector.utils.box_ops import box_cxcywh_to_xyxy

SPLIT = synthetic_split()


def _train(root, augment=True, seed=0, support_size=48, **kw):
    qt = QueryTransform(train=True, augment=augment, shorter_sides=(96, 128), max_size=128)
    return OneShotDataset(f"{root}/annotations/train.json", f"{root}/images/train", SPLIT.seen_ids,
                          support_size=support_size, query_transform=qt, min_exemplar_area=100,
                          augment_support=augment, seed=seed, **kw)


def _val(root, **kw):
    return OneShotEvalDataset(f"{root}/annotations/val.json", f"{root}/images/val", SPLIT.seen_ids + SPLIT.unseen_ids,
                              support_size=48, eval_size=128, min_exemplar_area=100, **kw)


def test_train_item_contract(tiny_root):
    ds = _train(tiny_root)
    for i in range(6):
        item = ds[i]
        q, s, t = item["query_image"], item["support_image"], item["target"]
        assert q.dtype == torch.float32 and q.shape[0] == 3 and 0 <= q.min() and q.max() <= 1
        assert s.shape[0] == 3 and max(s.shape[1:]) == 48 and 0 <= s.min() and s.max() <= 1
        assert t["boxes"].shape == (len(t["labels"]), 4) and t["labels"].dtype == torch.long
        assert torch.all(t["labels"] == 0)
        assert torch.all((t["boxes"] >= 0) & (t["boxes"] <= 1))
        assert t["size"].tolist() == list(q.shape[1:])
        assert t["orig_size"].tolist() == [128, 128]
        assert t["category_id"] in SPLIT.seen_ids
        assert 96 <= min(q.shape[1:]) or max(q.shape[1:]) == 128


def test_train_exemplar_never_from_the_query_image(tiny_root):
    ds = _train(tiny_root)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            category_id, exemplar = ds.choose(i, ds.sample_rng(i))
            assert exemplar.image_id != ds.image_ids[i]
            assert exemplar.category_id == category_id
            assert category_id in ds.choices[i]
            ann_ids = {a.id for a in ds.index.by_image[ds.image_ids[i]]}
            assert exemplar.ann_id not in ann_ids


def test_same_image_share_takes_the_exemplar_from_the_query_image(tiny_root):
    plain, none, every, half = (_train(tiny_root), _train(tiny_root, same_image_share=0.0),
                                _train(tiny_root, same_image_share=1.0), _train(tiny_root, same_image_share=0.5))
    inside = {"every": 0, "half": 0}
    for i in range(len(plain)):
        assert none.choose(i, none.sample_rng(i)) == plain.choose(i, plain.sample_rng(i))  # share 0: draws unchanged
        image_id = every.image_ids[i]
        category_id, exemplar = every.choose(i, every.sample_rng(i))
        assert exemplar.category_id == category_id
        own = [a for a in every.index.by_image[image_id] if a.category_id == category_id and a.area >= 100]
        if own:  # the image holds a candidate: it is the exemplar, and one of the item's targets
            assert exemplar.image_id == image_id and exemplar.ann_id in {a.id for a in own}
            inside["every"] += 1
        else:
            assert exemplar.image_id != image_id
        inside["half"] += int(half.choose(i, half.sample_rng(i))[1].image_id == image_id)
    assert inside["every"] > len(plain) // 2
    assert 0.25 * inside["every"] < inside["half"] < 0.75 * inside["every"]
    item = every[0]
    if every.choose(0, every.sample_rng(0))[1].image_id == every.image_ids[0]:
        assert len(item["target"]["boxes"]) >= 1
    with pytest.raises(ValueError, match="same_image_share"):
        _train(tiny_root, same_image_share=1.5)


def test_train_samples_are_reproducible_and_change_with_epoch(tiny_root):
    a, b = _train(tiny_root, seed=3), _train(tiny_root, seed=3)
    for ds in (a, b):
        ds.set_epoch(2)
    x, y = a[5], b[5]
    assert torch.equal(x["query_image"], y["query_image"]) and torch.equal(x["support_image"], y["support_image"])
    assert torch.equal(x["target"]["boxes"], y["target"]["boxes"])
    draws = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        category_id, exemplar = a.choose(5, a.sample_rng(5))
        draws.add((category_id, exemplar.ann_id, tuple(a[5]["query_image"].shape)))
    assert len(draws) > 1


def test_class_balanced_weights_are_inverse_frequency(tiny_root):
    ds = _train(tiny_root, class_balanced=True)
    counts = ds.index.instance_counts()
    for c in SPLIT.seen_ids:
        if counts[c]:
            assert ds.class_weight[c] == pytest.approx(1.0 / counts[c])


def _box_image(make_coco):
    """Two 96x128 images, each with one bright rectangle (category 1) on black, and a crowd box."""
    images, anns = [], []
    for image_id, (x0, y0, x1, y1) in ((1, (20, 30, 60, 70)), (2, (70, 10, 120, 50))):
        arr = np.zeros((96, 128, 3), np.uint8)
        arr[y0:y1, x0:x1] = (230, 200, 210)
        images.append((image_id, f"{image_id}.png", arr))
        anns.append({"image_id": image_id, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0]})
    anns.append({"image_id": 1, "category_id": 1, "bbox": [100, 70, 20, 20], "iscrowd": 1})
    return make_coco(images, anns, [{"id": 1, "name": "rect"}])


def test_boxes_follow_the_object_through_augmentation(make_coco):
    path, image_dir = _box_image(make_coco)
    qt = QueryTransform(train=True, augment=True, shorter_sides=(64, 96), max_size=112)
    ds = OneShotDataset(path, image_dir, [1], support_size=32, query_transform=qt, min_exemplar_area=16, seed=1)
    checked = 0
    for epoch in range(20):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            q, t = item["query_image"], item["target"]
            h, w = q.shape[1:]
            assert torch.all((t["boxes"] >= 0) & (t["boxes"] <= 1)) and torch.all(t["ignore_boxes"] <= 1)
            if len(t["boxes"]) == 0:
                continue
            bright = q.mean(0) > 0.5 * q.mean(0).max()
            if t["image_id"] == 1:  # the crowd region is bright too: remove it from the comparison
                for b in box_cxcywh_to_xyxy(t["ignore_boxes"]) * torch.tensor([w, h, w, h]):
                    bright[int(b[1]):int(b[3]) + 1, int(b[0]):int(b[2]) + 1] = False
            ys, xs = torch.nonzero(bright, as_tuple=True)
            found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            box = box_cxcywh_to_xyxy(t["boxes"][0]) * torch.tensor([w, h, w, h])
            assert torch.allclose(found, box, atol=2.0), (epoch, i, found, box)
            checked += 1
    assert checked >= 20


def test_crowd_regions_are_ignore_boxes_not_targets(make_coco):
    path, image_dir = _box_image(make_coco)
    ds = OneShotEvalDataset(path, image_dir, [1], support_size=32, eval_size=128, min_exemplar_area=16)
    item = ds[[j for j, it in enumerate(ds.items) if it.image_id == 1][0]]
    assert len(item["target"]["boxes"]) == 1 and len(item["target"]["ignore_boxes"]) == 1
    gt = ds.ground_truth([j for j, it in enumerate(ds.items) if it.image_id == 1][0])
    assert sorted(g["iscrowd"] for g in gt) == [0, 1]
    assert all(e.ann_id != 3 for e in ds.pool.by_category[1])  # a crowd box is never an exemplar


def test_query_transform_handles_no_boxes():
    qt = QueryTransform(train=True, augment=True, shorter_sides=(32, 48), max_size=64)
    image = np.zeros((40, 50, 3), np.uint8)
    tensor, boxes, ignore = qt(image, np.zeros((0, 4)), np.zeros(0, bool), np.random.default_rng(0))
    assert boxes.shape == (0, 4) and ignore.shape == (0,) and tensor.shape[0] == 3


def test_collate_pads_support_to_exactly_support_size(tiny_root):
    ds = _train(tiny_root, support_size=40)
    items = [ds[i] for i in range(5)]
    items[0]["target"]["boxes"] = torch.zeros(0, 4)  # an item without targets must pass through
    items[0]["target"]["labels"] = torch.zeros(0, dtype=torch.long)
    query, support, targets = collate_oneshot(items)
    assert support.tensors.shape[-2:] == (40, 40)
    assert query.tensors.shape[-1] % 32 == 0 and query.tensors.shape[-2] % 32 == 0
    for k, it in enumerate(items):
        hs, ws = it["support_image"].shape[1:]
        assert not support.mask[k, :hs, :ws].any() and support.mask[k].sum() == 40 * 40 - hs * ws
        assert support.image_sizes[k].tolist() == [hs, ws]
    assert len(targets) == 5 and len(targets[0]["boxes"]) == 0


def test_eval_items_and_exemplar_rule(tiny_root):
    ds = _val(tiny_root)
    index = ds.index
    pairs = sorted({(a.image_id, a.category_id) for a in index.annotations if not a.ignore})
    usable = [(i, c) for i, c in pairs if any(e.image_id != i for e in ds.pool.by_category.get(c, []))]
    assert sorted((it.image_id, it.category_id) for it in ds.items) == usable  # every (image, category present)
    assert ds.num_skipped == len(pairs) - len(usable) and len(usable) > 40  # ... that has an exemplar elsewhere
    again = _val(tiny_root)
    differs = 0
    for j, item in enumerate(ds.items):
        runs = [ds.exemplar(j, r) for r in range(5)]
        assert runs == [again.exemplar(j, r) for r in range(5)]  # identical in another instance / process
        assert all(e.image_id != item.image_id and e.category_id == item.category_id for e in runs)
        candidates = [e for e in ds.pool.by_category[item.category_id] if e.image_id != item.image_id]
        order = np.random.default_rng(item.image_id).permutation(len(candidates))
        assert runs == [candidates[order[r % len(candidates)]] for r in range(5)]  # docs/PAPER_NOTES.md section 5
        if len(candidates) >= 2:
            assert runs[0] != runs[1]
            differs += 1
    assert differs > 10
    j = 3
    ds.set_run(0)
    first = ds[j]["support_image"]
    ds.set_run(1)
    assert not torch.equal(first, ds[j]["support_image"]) or ds.exemplar(j, 0) == ds.exemplar(j, 1)
    again.set_run(1)
    assert torch.equal(ds[j]["query_image"], again[j]["query_image"])
    assert torch.equal(ds[j]["support_image"], again[j]["support_image"])


def test_eval_items_are_resized_deterministically(tiny_root):
    item = _val(tiny_root)[0]
    assert max(item["query_image"].shape[1:]) == 128 and item["target"]["size"].tolist() == [128, 128]


def test_user_exemplar_file_replaces_the_pool(tiny_root, tmp_path):
    ds = _val(tiny_root)
    category_id = ds.items[0].category_id
    others = [a for a in ds.index.annotations if a.category_id == category_id and not a.ignore]
    chosen = others[:2]
    entries = [{"category_id": category_id, "image_id": a.image_id,
                "bbox": [a.box_xyxy[0], a.box_xyxy[1], a.box_xyxy[2] - a.box_xyxy[0], a.box_xyxy[3] - a.box_xyxy[1]]}
               for a in chosen]
    entries.append({"category": ds.index.categories[category_id], "file_name": f"{tiny_root}/images/train/000001.jpg",
                    "bbox": [0, 0, 30, 30]})
    path = tmp_path / "exemplars.json"
    path.write_text(json.dumps({"exemplars": entries}))
    user = _val(tiny_root, exemplar_file=str(path))
    assert len(user.pool.by_category[category_id]) == 3 and set(user.pool.by_category) == {category_id}
    items = [j for j, it in enumerate(user.items) if it.category_id == category_id]
    assert items and len(user.items) == len(items)  # other categories have no exemplars: no items
    for j in items:
        e = user.exemplar(j, 0)
        assert e.image_id != user.items[j].image_id
        assert user[j]["support_image"].shape[0] == 3
    path.write_text(json.dumps([{"category_id": category_id, "bbox": [0, 0, 10, 10]}]))
    with pytest.raises(ValueError, match=r"exemplars\.json: exemplar 0: needs an 'image_id'"):
        _val(tiny_root, exemplar_file=str(path))


def test_absent_class_items_come_after_and_have_no_targets(tiny_root):
    plain, ds = _val(tiny_root), _val(tiny_root, absent_per_image=1)
    n = len(plain.items)
    assert ds.items[:n] == plain.items and len(ds.items) == n + len(ds.index.images)
    for j in range(n, len(ds.items)):
        item = ds.items[j]
        assert not item.present
        assert item.category_id not in {a.category_id for a in ds.index.by_image[item.image_id]}
        assert ds.ground_truth(j) == []
    assert len(ds[n]["target"]["boxes"]) == 0


def test_pretrain_stage_uses_a_patch_of_the_query_image(tiny_root):
    ds = _train(tiny_root, augment=False, stage="pretrain")
    item = ds[0]
    assert len(item["target"]["boxes"]) == 1 and item["target"]["category_id"] == 0


def test_build_datasets_on_the_synthetic_benchmark(tiny_root):
    cfg = load_config(None, [f"data.root={tiny_root}", "data.synthetic_size=tiny", "model.support_size=32",
                             "data.eval_size=128", "data.query_min_size=[128,128]", "data.query_max_size=128",
                             "data.min_exemplar_area=64"])
    train, val, info = build_datasets(cfg)
    assert len(info["seen_ids"]) == 48 and len(info["unseen_ids"]) == 16
    assert set(train.category_ids) == set(info["seen_ids"])
    assert {it.category_id for it in val.items} & set(info["unseen_ids"])
    assert all(c in info["seen_ids"] for c in {train.choices[i][0] for i in range(len(train))})
    assert isinstance(train.index, CocoIndex) and train.seed == cfg.train.seed


def test_the_test_split_is_its_own_evaluation_set(tiny_root):
    from detector.config import ConfigError
    from detector.data import build_eval_dataset

    overrides = [f"data.root={tiny_root}", "data.synthetic_size=tiny", "model.support_size=32", "data.eval_size=128",
                 "data.min_exemplar_area=64"]
    cfg = load_config(None, overrides)
    (val, val_info), (test, test_info) = build_eval_dataset(cfg, "val"), build_eval_dataset(cfg, "test")
    assert val.split_name == "val" and test.split_name == "test" and val_info == test_info
    assert test.index.path.endswith("test.json") and val.index.path.endswith("val.json")
    assert [it.category_id for it in test.items] != [it.category_id for it in val.items]
    assert test[0]["target"]["index"] == 0
    with pytest.raises(ConfigError, match="eval.split"):
        load_config(None, overrides + ["eval.split=train"])


def test_sampling_leaves_the_global_random_state_alone(tiny_root):
    import random

    ds = _train(tiny_root)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    for i in range(4):
        ds[i]
    after = (random.getstate(), np.random.get_state()[1], torch.get_rng_state())
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])
