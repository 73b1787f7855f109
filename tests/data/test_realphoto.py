"""datasets/prepare_realphoto.py and detector.data.realphoto: the real-photo benchmark's files,
on fake deepforest tiles written here (tests/conftest.py FAKE_TILES), and on the real ones when
installed."""
import importlib.util
import json
import os

import pytest

from detector.data import photo_packages
from detector.data.realphoto import TILES, load_realphoto, median_exemplar, prepare_realphoto
from detector.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Exemplar (annotation id, COCO box) of each fake tile: the median of its sorted sides.
EXEMPLARS = {1: (3, [40.0, 30.0, 20.0, 20.0]), 2: (6, [29.0, 29.0, 16.0, 16.0]), 3: (8, [4.0, 4.0, 12.0, 12.0]),
             4: (13, [0.0, 0.0, 20.0, 20.0])}


def _script():
    path = os.path.join(REPO, "datasets", "prepare_realphoto.py")
    spec = importlib.util.spec_from_file_location("prepare_realphoto", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_prepare_writes_coco_boxes_labels_and_copies(fake_deepforest, tmp_path):
    out = str(tmp_path / "realphoto")
    assert _script().main(["--out", out, "--packages", fake_deepforest]) == 0
    coco = _read(os.path.join(out, "annotations.json"))
    assert [im["file_name"] for im in coco["images"]] == [f"{t}.png" for t in TILES]
    assert [(im["id"], im["width"], im["height"]) for im in coco["images"]] == [(1, 80, 60), (2, 64, 64), (3, 96, 72),
                                                                               (4, 120, 90)]
    assert coco["categories"] == [{"id": 1, "name": "tree", "supercategory": "tree"}]
    first = coco["annotations"][0]
    assert first["bbox"] == [10.0, 5.0, 30.0, 25.0]  # VOC (11, 6, 40, 30), 1-based inclusive
    assert first["area"] == 750.0 and first["iscrowd"] == 0 and first["category_id"] == 1 and first["label"] == "Tree"
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 15))
    assert [a["label"] for a in coco["annotations"] if a["image_id"] == 2] == ["Dead", "Alive", "Dead", "Alive"]
    assert sorted(os.listdir(os.path.join(out, "images"))) == sorted(f"{t}.png" for t in TILES)
    meta = _read(os.path.join(out, "meta.json"))
    assert meta["source"]["package"] == "deepforest" and meta["source"]["version"] == "2.1.0"
    assert list(meta["num_instances"].values()) == [3, 4, 5, 2]
    assert meta["num_pairs"] == {"same_image": 4, "other_image": 12}
    assert len(meta["files"]) == 8 and all(len(h) == 64 for h in meta["files"].values())


def test_pairs_use_the_median_exemplar_same_then_other_image(fake_deepforest, tmp_path):
    out = str(tmp_path / "realphoto")
    prepare_realphoto(out, [fake_deepforest])
    pairs = _read(os.path.join(out, "pairs.json"))["pairs"]
    assert [p["id"] for p in pairs] == list(range(1, 17))
    same, other = pairs[:4], pairs[4:]
    assert all(p["mode"] == "same_image" for p in same) and all(p["mode"] == "other_image" for p in other)
    assert [(p["query_image_id"], p["support_image_id"]) for p in same] == [(i, i) for i in range(1, 5)]
    assert [(p["query_image_id"], p["support_image_id"]) for p in other] == [
        (q, s) for q in range(1, 5) for s in range(1, 5) if s != q]
    for p in pairs:
        assert (p["support_annotation_id"], p["support_box"]) == EXEMPLARS[p["support_image_id"]]
    bench = load_realphoto(out)
    assert [len(bench.instances[i]) for i in range(1, 5)] == [3, 4, 5, 2]
    assert bench.image_path(2).endswith(os.path.join("images", "SOAP_061.png"))


def test_median_exemplar_is_index_len_over_2_ties_by_id():
    anns = [{"id": i, "bbox": [0, 0, s, s]} for i, s in [(1, 30), (2, 10), (3, 20), (4, 20)]]
    assert median_exemplar(anns)["id"] == 4  # sides 10, 20 (id 3), 20 (id 4), 30 -> index 2
    assert median_exemplar(anns[:3])["id"] == 3
    with pytest.raises(InputError):
        median_exemplar([])


def test_prepare_is_idempotent_and_refuses_other_content(fake_deepforest, tmp_path, capsys):
    out = str(tmp_path / "realphoto")
    first = prepare_realphoto(out, [fake_deepforest])
    stamp = os.path.getmtime(os.path.join(out, "pairs.json"))
    assert prepare_realphoto(out, [fake_deepforest]) == first
    assert os.path.getmtime(os.path.join(out, "pairs.json")) == stamp  # kept, not rewritten
    xml = os.path.join(fake_deepforest, "deepforest", "data", "SOAP_061.xml")
    with open(xml) as f:
        text = f.read()
    with open(xml, "w") as f:
        f.write(text.replace("<xmin>1</xmin>", "<xmin>2</xmin>", 1))
    assert _script().main(["--out", out, "--packages", fake_deepforest]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other source files" in err and "--force" in err
    assert _script().main(["--out", out, "--packages", fake_deepforest, "--force"]) == 0
    assert _read(os.path.join(out, "annotations.json"))["annotations"][3]["bbox"] == [1.0, 0.0, 7.0, 8.0]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for force in (False, True):  # --force never deletes a folder that is not a real-photo benchmark
        with pytest.raises(InputError, match="not a real-photo benchmark"):
            prepare_realphoto(str(other), [fake_deepforest], force=force)
    assert (other / "notes.txt").read_text() == "mine"


def test_missing_package_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec("deepforest") is not None:
        pytest.skip("deepforest is importable here: it cannot be missing")
    monkeypatch.setenv(photo_packages.ENV_VAR, str(tmp_path / "empty"))
    monkeypatch.setattr(photo_packages, "DEFAULT_DIR", str(tmp_path / "nowhere"))
    assert _script().main(["--out", str(tmp_path / "realphoto")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make setup" in err and "deepforest/data/OSBS_029.png" in err
    assert not os.path.exists(tmp_path / "realphoto")


def test_size_mismatch_and_broken_folder_are_named(fake_deepforest, tmp_path):
    xml = os.path.join(fake_deepforest, "deepforest", "data", "OSBS_029.xml")
    with open(xml) as f:
        text = f.read()
    with open(xml, "w") as f:
        f.write(text.replace("<width>80</width>", "<width>81</width>"))
    with pytest.raises(InputError, match=r"OSBS_029\.xml: says 81x60 pixels but .*OSBS_029\.png is 80x60"):
        prepare_realphoto(str(tmp_path / "realphoto"), [fake_deepforest])
    with pytest.raises(InputError, match="prepare_realphoto"):
        load_realphoto(str(tmp_path / "nothing"))


def test_real_deepforest_tiles(tmp_path):
    if photo_packages.find_package_file("deepforest", "data/OSBS_029.png") is None:
        pytest.skip("deepforest 2.1.0 is not installed as files (make setup, or set ONESHOT_PHOTO_PACKAGES)")
    meta = prepare_realphoto(str(tmp_path / "realphoto"))
    assert list(meta["num_instances"].values()) == [61, 37, 279, 574]
    bench = load_realphoto(str(tmp_path / "realphoto"))
    assert [(im["width"], im["height"]) for im in bench.images.values()] == [(400, 400), (400, 400), (1249, 1035),
                                                                            (2299, 2472)]
    assert {a["label"] for a in bench.instances[2]} == {"Alive", "Dead"}
    assert len(bench.pairs) == 16
