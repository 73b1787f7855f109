"""datasets/prepare_voc.py and datasets/prepare_coco.py on small files written here."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from detector.data import CocoIndex, ExemplarPool, OneShotEvalDataset, read_exemplar_file, voc_split
from detector.data.splits import COCO_CATEGORIES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "datasets", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _voc_xml(filename, objects, width=64, height=48):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def _voc_devkit(root):
    layout = {
        ("VOC2007", "trainval"): {"000005": [("cat", (11, 6, 40, 30), 0), ("aeroplane", (2, 2, 20, 20), 1)],
                                  "000007": [("cat", (5, 5, 30, 40), 0)]},
        ("VOC2007", "test"): {"000001": [("dog", (1, 1, 64, 48), 0), ("cat", (20, 10, 50, 40), 1)],
                              "000002": [("dog", (10, 10, 30, 30), 0)]},
        ("VOC2012", "trainval"): {"2008_000001": [("sheep", (3, 4, 33, 44), 0)]},
    }
    for (year, image_set), files in layout.items():
        for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
            os.makedirs(os.path.join(root, year, sub), exist_ok=True)
        with open(os.path.join(root, year, "ImageSets", "Main", f"{image_set}.txt"), "w") as f:
            f.write("\n".join(files) + "\n")
        for stem, objects in files.items():
            with open(os.path.join(root, year, "Annotations", f"{stem}.xml"), "w") as f:
                f.write(_voc_xml(f"{stem}.jpg", objects))
            Image.fromarray(np.full((48, 64, 3), 100, np.uint8)).save(os.path.join(root, year, "JPEGImages", f"{stem}.jpg"))


def test_prepare_voc_converts_boxes_and_keeps_difficult(tmp_path):
    devkit, out = str(tmp_path / "VOCdevkit"), str(tmp_path / "voc")
    _voc_devkit(devkit)
    assert _script("prepare_voc").main(["--devkit", devkit, "--out", out]) == 0
    train = CocoIndex(os.path.join(out, "annotations", "voc_trainval0712.json"), os.path.join(out, "JPEGImages"))
    test = CocoIndex(os.path.join(out, "annotations", "voc_test2007.json"), os.path.join(out, "JPEGImages"))
    assert len(train.images) == 3 and len(test.images) == 2
    split = voc_split(train.categories)
    assert [train.categories[c] for c in split.unseen_ids] == ["aeroplane", "cat", "cow", "sheep"]
    with open(os.path.join(out, "annotations", "voc_trainval0712.json")) as f:
        raw = json.load(f)
    first = raw["annotations"][0]
    assert first["bbox"] == [10.0, 5.0, 30.0, 25.0]  # VOC (11, 6, 40, 30) 1-based inclusive -> COCO xywh
    assert [a["difficult"] for a in raw["annotations"]] == [0, 1, 0, 0]
    plane = [a for a in train.annotations if train.categories[a.category_id] == "aeroplane"][0]
    assert plane.ignore and not plane.iscrowd  # difficult: an ignore region
    assert os.path.isfile(os.path.join(out, "JPEGImages", "2008_000001.jpg"))
    # evaluation: the difficult cat of the test image is ignored (iscrowd), not a miss
    cat = next(c for c, n in test.categories.items() if n == "cat")
    ds = OneShotEvalDataset(test, os.path.join(out, "JPEGImages"), [cat], support_size=16, eval_size=64,
                            exemplar_file="", min_exemplar_area=1.0)
    assert ds.items == []  # the only cat in the test set is difficult: no item, no exemplar
    dog = next(c for c, n in test.categories.items() if n == "dog")
    ds = OneShotEvalDataset(test, os.path.join(out, "JPEGImages"), [dog], support_size=16, eval_size=64,
                            min_exemplar_area=1.0)
    assert len(ds.items) == 2 and ds[0]["support_image"].shape[0] == 3


def test_prepare_voc_names_a_broken_file_and_writes_nothing(tmp_path, capsys):
    devkit = str(tmp_path / "VOCdevkit")
    _voc_devkit(devkit)
    bad = os.path.join(devkit, "VOC2007", "Annotations", "000007.xml")
    with open(bad, "w") as f:
        f.write("<annotation><filename>000007.jpg</filename>")
    out = tmp_path / "voc"
    assert _script("prepare_voc").main(["--devkit", devkit, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {bad}: not valid XML (no element found: line 1, column 43)\n"
    with open(bad, "w") as f:
        f.write(_voc_xml("000007.jpg", [("unicorn", (1, 1, 5, 5), 0)]))
    assert _script("prepare_voc").main(["--devkit", devkit, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {bad}: unknown VOC class 'unicorn'\n"
    assert _script("prepare_voc").main(["--devkit", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "image set list not found" in capsys.readouterr().err
    assert not out.exists()  # every annotation is read before the first write


def _coco_root(root, missing_image=False):
    cats = [{"id": cid, "name": name} for cid, name in COCO_CATEGORIES]
    for split in ("train2017", "val2017"):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, anns = [], []
        for image_id in (1, 2, 3):
            images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 64, "height": 48})
            if not (missing_image and image_id == 3):
                Image.fromarray(np.full((48, 64, 3), 50 * image_id, np.uint8)).save(
                    os.path.join(root, split, f"{image_id:012d}.jpg"))
            anns.append({"id": 10 * image_id + 1, "image_id": image_id, "category_id": 18, "bbox": [4, 4, 40, 30],
                         "iscrowd": 0, "area": 1200})
            anns.append({"id": 10 * image_id + 2, "image_id": image_id, "category_id": 1, "bbox": [0, 0, 10, 10],
                         "iscrowd": int(image_id == 2), "area": 100})
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)


def test_prepare_coco_checks_and_writes_the_exemplar_index(tmp_path):
    root = str(tmp_path / "coco")
    _coco_root(root)
    script = _script("prepare_coco")
    assert script.main(["--root", root, "--min-area", "64", "--decode", "2"]) == 0
    path = os.path.join(root, "annotations", "exemplars_val2017.json")
    index = CocoIndex(os.path.join(root, "annotations", "instances_val2017.json"), os.path.join(root, "val2017"))
    from_file = read_exemplar_file(path, index, index.categories)
    built_in = ExemplarPool.from_index(index, index.categories, 64)
    assert from_file.by_category == built_in.by_category  # the index reproduces the built-in pool
    assert [e.ann_id for e in built_in.by_category[1]] == [12, 32]  # the crowd instance is not an exemplar
    for image_id in (1, 2, 3):
        for run in range(3):
            assert from_file.eval_choice(18, image_id, run) == built_in.eval_choice(18, image_id, run)


def test_prepare_coco_reports_missing_images_and_wrong_categories(tmp_path, capsys):
    root = str(tmp_path / "coco")
    _coco_root(root, missing_image=True)
    assert _script("prepare_coco").main(["--root", root]) == 1
    assert "1 of 3 image files missing" in capsys.readouterr().out
    path = os.path.join(root, "annotations", "instances_val2017.json")
    with open(path) as f:
        data = json.load(f)
    data["categories"] = data["categories"][:79]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 90]
    with open(path, "w") as f:
        json.dump(data, f)
    assert _script("prepare_coco").main(["--root", root, "--splits", "val2017"]) == 1
    assert "80 COCO 2017 categories" in capsys.readouterr().out
