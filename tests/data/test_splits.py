"""Split invariants, with the class lists pinned from docs/PAPER_NOTES.md section 4."""
import json

import pytest

from detector.data.splits import (COCO_CATEGORIES, SYNTHETIC_PATTERNS, SYNTHETIC_SHAPES, coco_split, custom_split,
                                  resolve_split, synthetic_categories, synthetic_split, voc_split)

COCO_UNSEEN = {
    1: ["person", "airplane", "boat", "parking meter", "dog", "elephant", "backpack", "suitcase", "sports ball",
        "skateboard", "wine glass", "spoon", "sandwich", "hot dog", "chair", "dining table", "mouse", "microwave",
        "refrigerator", "scissors"],
    2: ["bicycle", "bus", "traffic light", "bench", "horse", "bear", "umbrella", "frisbee", "kite", "surfboard", "cup",
        "bowl", "orange", "pizza", "couch", "toilet", "remote", "oven", "book", "teddy bear"],
    3: ["car", "train", "fire hydrant", "bird", "sheep", "zebra", "handbag", "skis", "baseball bat", "tennis racket",
        "fork", "banana", "broccoli", "donut", "potted plant", "tv", "keyboard", "toaster", "clock", "hair drier"],
    4: ["motorcycle", "truck", "stop sign", "cat", "cow", "giraffe", "tie", "snowboard", "baseball glove", "bottle",
        "knife", "apple", "carrot", "cake", "bed", "laptop", "cell phone", "sink", "vase", "toothbrush"],
}
SYNTHETIC_UNSEEN = ["circle-solid", "circle-bullseye", "square-stripes", "square-grid", "triangle-checker",
                    "triangle-twotone", "star-dots", "star-pinwheel", "cross-solid", "cross-bullseye", "ring-stripes",
                    "ring-grid", "halfdisc-checker", "halfdisc-twotone", "bowtie-dots", "bowtie-pinwheel"]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_coco_split_matches_the_paper(k):
    split = coco_split(k)
    info = split.to_info()
    assert info["unseen_names"] == COCO_UNSEEN[k]
    assert len(split.seen_ids) == 60 and len(split.unseen_ids) == 20
    assert not set(split.seen_ids) & set(split.unseen_ids)
    assert set(split.seen_ids) | set(split.unseen_ids) == {cid for cid, _ in COCO_CATEGORIES}


def test_coco_unseen_sets_partition_the_80_categories():
    union = [c for k in range(1, 5) for c in coco_split(k).unseen_ids]
    assert sorted(union) == sorted(cid for cid, _ in COCO_CATEGORIES)


def test_coco_split_rejects_other_categories_and_bad_k():
    cats = dict(COCO_CATEGORIES)
    cats[1] = "human"
    with pytest.raises(ValueError, match="80 COCO"):
        coco_split(1, cats)
    with pytest.raises(ValueError, match="1, 2, 3 or 4"):
        coco_split(5)


def test_voc_split():
    split = voc_split()
    assert split.to_info()["unseen_names"] == ["aeroplane", "cat", "cow", "sheep"]
    assert len(split.seen_ids) == 16 and not set(split.seen_ids) & set(split.unseen_ids)
    assert len(set(split.seen_ids) | set(split.unseen_ids)) == 20
    with pytest.raises(ValueError, match="voc"):
        voc_split({1: "aeroplane", 2: "dog"})


def test_synthetic_split_is_fixed_and_balanced():
    split = synthetic_split()
    names = split.to_info()["unseen_names"]
    assert names == SYNTHETIC_UNSEEN
    assert len(split.seen_ids) == 48 and len(split.unseen_ids) == 16
    assert set(split.seen_ids) | set(split.unseen_ids) == set(range(1, 65))
    # every shape and every pattern is in exactly two unseen categories (and so also in seen ones)
    for shape in SYNTHETIC_SHAPES:
        assert sum(n.startswith(shape + "-") for n in names) == 2
    for pattern in SYNTHETIC_PATTERNS:
        assert sum(n.endswith("-" + pattern) for n in names) == 2
    assert len(synthetic_categories()) == 64


def test_custom_split_text_file_names_ids_and_comments(tmp_path):
    cats = {1: "apple", 2: "Pear", 3: "plum", 7: "fig"}
    path = tmp_path / "unseen.txt"
    path.write_text("# held-out fruit\npear\n7   # by id\n\n")
    split = custom_split(str(path), cats)
    assert split.unseen_ids == (2, 7) and split.seen_ids == (1, 3)


def test_custom_split_json_with_explicit_seen(tmp_path):
    cats = {1: "apple", 2: "pear", 3: "plum", 7: "fig"}
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"unseen": ["fig"], "seen": [1, "plum"]}))
    split = resolve_split("custom", cats, split_file=str(path))
    assert split.unseen_ids == (7,) and split.seen_ids == (1, 3)  # pear is in neither list: left out


def test_custom_split_errors_name_the_file_and_entry(tmp_path):
    cats = {1: "apple", 2: "pear"}
    bad = tmp_path / "bad.txt"
    bad.write_text("banana\n")
    with pytest.raises(ValueError, match=r"bad\.txt.*'banana'"):
        custom_split(str(bad), cats)
    both = tmp_path / "both.yaml"
    both.write_text("unseen: [apple]\nseen: [apple, pear]\n")
    with pytest.raises(ValueError, match="both seen and unseen"):
        custom_split(str(both), cats)
    with pytest.raises(ValueError, match="not found"):
        custom_split(str(tmp_path / "missing.txt"), cats)
    with pytest.raises(ValueError, match="split_file"):
        resolve_split("custom", cats)
