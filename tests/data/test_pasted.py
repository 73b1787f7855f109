"""The pasted-patch set (stage 1 on real photos): determinism, content, split, refusals, and that
its photos never include the real-photo benchmark's."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from detector.config import load_config
from detector.data import CocoIndex, build_datasets, build_pasted, generate_pasted
from detector.data import pasted as pasted_mod
from detector.data.photo_packages import UNLABELLED_PHOTOS, find_package_file
from detector.data.splits import pasted_split
from detector.errors import InputError

BENCHMARK_FILES = ("OSBS_029.png", "OSBS_029.tif", "SOAP_061.png", "2019_YELL_2_541000_4977000_image_crop.png",
                   "2019_YELL_2_528000_4978000_image_crop2.png")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six textured 'photos' written as PNG files (paths)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(6):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(base).resize((160, 120), Image.BILINEAR))
        path = str(folder / f"photo{i}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _load(root, split):
    with open(os.path.join(root, "annotations", f"{split}.json")) as f:
        return json.load(f)


def test_generation_is_deterministic(tmp_path, photos):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate_pasted(a, "tiny", seed=1, photo_paths=photos, verbose=False)
    generate_pasted(b, "tiny", seed=1, photo_paths=photos, verbose=False)
    generate_pasted(c, "tiny", seed=2, photo_paths=photos, verbose=False)
    assert _load(a, "train") == _load(b, "train")
    with open(os.path.join(a, "images", "train", "000003.jpg"), "rb") as f1, \
            open(os.path.join(b, "images", "train", "000003.jpg"), "rb") as f2:
        assert f1.read() == f2.read()
    assert _load(a, "train")["annotations"] != _load(c, "train")["annotations"]


def test_content_patches_recur_in_two_images_and_split(tmp_path, photos):
    root = generate_pasted(str(tmp_path / "p"), "tiny", seed=0, photo_paths=photos, verbose=False)
    train, val = _load(root, "train"), _load(root, "val")
    assert train["categories"] == val["categories"]  # one category list, as the split needs
    size = pasted_mod.SIZES["tiny"].image_size
    for data in (train, val):
        per_cat = {}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= size + 1e-6 and y + h <= size + 1e-6 and w > 1 and h > 1
            per_cat.setdefault(a["category_id"], set()).add(a["image_id"])
        assert max(len(v) for v in per_cat.values()) == 2  # each patch in (at most) two images
        assert sum(len(v) == 2 for v in per_cat.values()) >= len(per_cat) // 2
    counts = {}
    for a in train["annotations"]:
        counts[(a["image_id"], a["category_id"])] = counts.get((a["image_id"], a["category_id"]), 0) + 1
    assert max(counts.values()) >= 2  # look-alikes: several copies of one patch in one image
    names = {c["id"]: c["name"] for c in train["categories"]}
    split = pasted_split(names)
    assert {a["category_id"] for a in train["annotations"]} <= set(split.seen_ids)
    assert {a["category_id"] for a in val["annotations"]} <= set(split.unseen_ids)
    with open(os.path.join(root, "meta.json")) as f:
        meta = json.load(f)
    assert not set(meta["photos"]["train"]) & set(meta["photos"]["val"])  # val patches from unseen photos


def test_copies_are_changed_not_identical():
    rng = np.random.default_rng(0)
    photo = np.random.default_rng(1).integers(0, 256, (200, 200, 3)).astype(np.uint8)
    patch = pasted_mod.make_patch(rng, {"p": photo}, ["p"], 256)
    (a, ma), (b, _) = pasted_mod._copy(rng, patch), pasted_mod._copy(rng, patch)
    assert a.shape[:2] == ma.shape and ma.max() <= 1.0 and ma.max() > 0.5
    assert a.shape == b.shape and not np.allclose(a, b)  # each copy is another window, recoloured


def test_build_refuses_another_set(tmp_path, photos):
    root = generate_pasted(str(tmp_path / "p"), "tiny", seed=0, photo_paths=photos, verbose=False)
    assert build_pasted(root, "tiny", 0) == root  # same size and seed: reused
    with pytest.raises(InputError, match="holds a pasted-patch set"):
        build_pasted(root, "small", 0)


def test_no_photos_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(pasted_mod, "find_package_file", lambda *a: None)
    with pytest.raises(InputError, match="make setup"):
        pasted_mod.load_photos()


def test_training_items_target_every_copy_of_the_exemplar_patch(tmp_path, photos):
    root = generate_pasted(str(tmp_path / "p"), "tiny", seed=0, photo_paths=photos, verbose=False)
    cfg = load_config("configs/pretrain_photos.yaml", [f"data.root={root}", "data.pasted_size=tiny",
                                                         "data.query_min_size=[128,128]", "data.query_max_size=128",
                                                         "data.eval_size=128", "data.min_exemplar_area=64"])
    train, val, info = build_datasets(cfg)
    assert info["name"] == "pasted patches" and info["unseen_ids"]
    index = CocoIndex(os.path.join(root, "annotations", "train.json"))
    item = train[0]
    t = item["target"]
    image_id, category_id = int(t["image_id"]), int(t["category_id"])
    wanted = [a for a in index.by_image[image_id] if a.category_id == category_id]
    assert len(t["boxes"]) == len(wanted) >= 1  # every copy of the patch is a target, the others are not
    assert len(val.items) > 0


def test_unlabelled_photos_exclude_the_real_photo_benchmark():
    names = {os.path.basename(rel) for _, rel in UNLABELLED_PHOTOS}
    assert not names & set(BENCHMARK_FILES)
    tiles = [find_package_file("deepforest", f"data/{n}") for n in BENCHMARK_FILES[:1] + BENCHMARK_FILES[2:]]
    if any(t is None for t in tiles):
        pytest.skip("deepforest's tiles are not installed (make setup installs requirements-photos.txt)")
    from detector.data.image_io import read_image

    def thumb(path):  # 32x32 grey thumbnail: equal for the same photo whatever its size or format
        return np.asarray(Image.fromarray(read_image(path)).convert("L").resize((32, 32), Image.BILINEAR), np.float32)

    benchmark = [thumb(t) for t in tiles]
    for package, rel in UNLABELLED_PHOTOS:
        path = find_package_file(package, rel)
        if path is not None:
            assert min(np.abs(thumb(path) - b).mean() for b in benchmark) > 5.0, rel  # grey levels 0-255


def test_package_photos_are_found_when_installed():
    found = [find_package_file(p, r) for p, r in UNLABELLED_PHOTOS]
    if not any(found):
        pytest.skip("the photo packages are not installed (make setup installs requirements-photos.txt)")
    photos = pasted_mod.load_photos()
    assert len(photos) == sum(f is not None for f in found) >= 20
    assert all(im.ndim == 3 and im.shape[2] == 3 and max(im.shape[:2]) <= pasted_mod.MAX_PHOTO_SIDE for im in photos.values())


def test_replay_mixes_the_stage1_set_into_training(tmp_path, photos, tiny_root):
    """data.replay_share: that share of the items comes from the replay config's training set,
    fixed per epoch; 0 leaves the training set as it was."""
    from detector.data import MixedDataset

    root = generate_pasted(str(tmp_path / "p"), "tiny", seed=0, photo_paths=photos, verbose=False)
    sizes = ["data.query_min_size=[128,128]", "data.query_max_size=128", "data.eval_size=128"]
    replay = tmp_path / "replay.yaml"
    replay.write_text(f"_base_: {os.path.abspath('configs/pretrain_photos.yaml')}\n"
                      f"data:\n  root: {root}\n  pasted_size: tiny\n  min_exemplar_area: 64.0\n"
                      "  query_min_size: [128, 128]\n  query_max_size: 128\n  eval_size: 128\n")
    base = ["data.dataset=synthetic", f"data.root={tiny_root}", "data.synthetic_size=tiny"] + sizes
    plain, _, _ = build_datasets(load_config("configs/synthetic.yaml", base))
    mixed, _, _ = build_datasets(load_config("configs/synthetic.yaml", base + [f"data.replay_config={replay}",
                                                                                "data.replay_share=0.5"]))
    assert isinstance(mixed, MixedDataset) and len(mixed) == len(plain)
    sources = [mixed.source(i) for i in range(len(mixed))]
    assert 0.2 < sum(s == "secondary" for s, _ in sources) / len(sources) < 0.8
    i = next(k for k, (s, _) in enumerate(sources) if s == "primary")
    assert int(mixed[i]["target"]["image_id"]) == int(plain[i]["target"]["image_id"])
    j, (_, k) = next((n, src) for n, src in enumerate(sources) if src[0] == "secondary")
    assert int(mixed[j]["target"]["category_id"]) == int(mixed.secondary[k]["target"]["category_id"])
    mixed.set_epoch(1)
    assert [mixed.source(n) for n in range(len(mixed))] != sources  # a new mix per epoch
    mixed.set_epoch(0)
    assert [mixed.source(n) for n in range(len(mixed))] == sources  # and the same again for the same epoch
    with pytest.raises(Exception, match="replay_config"):
        load_config("configs/synthetic.yaml", ["data.replay_share=0.3"])


def test_a_folder_of_other_data_is_never_deleted(tmp_path, monkeypatch):
    """data.root pointing at a folder of other files: refused, the files stay; make_pasted --force
    deletes only a pasted-patch set."""
    import subprocess
    import sys

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a pasted-patch set"):
        build_pasted(str(other), "tiny", 0)
    r = subprocess.run([sys.executable, "datasets/make_pasted.py", "--size", "tiny", "--out", str(other), "--force"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--force deletes only a pasted-patch set" in r.stderr
    assert (other / "notes.txt").read_text() == "keep me"


def test_crowd_centres_are_one_compact_group_of_touching_neighbours():
    rng = np.random.default_rng(0)
    spacing, count = 30.0, 25
    centres = pasted_mod.crowd_centres(rng, 256, spacing, count)
    assert centres.shape == (count, 2)
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.eye(count) * 1e9
    nearest = d.min(1)
    assert nearest.min() >= 0.6 * spacing and nearest.max() <= 1.4 * spacing  # a packed grid, no strays
    spread = np.sqrt(((centres - centres.mean(0)) ** 2).sum(1)).max()
    assert spread < 0.7 * spacing * np.sqrt(count)  # compact: a disc of about count cells, not the whole image


def test_a_crowd_is_many_touching_copies_boxed_by_their_visible_pixels():
    rng = np.random.default_rng(3)
    photo = np.random.default_rng(4).integers(0, 256, (300, 300, 3)).astype(np.uint8)
    patch = pasted_mod.make_patch(rng, {"p": photo}, ["p"], 256)
    canvas = np.zeros((256, 256, 3), np.float32)
    taken = []
    boxes = pasted_mod.paste_crowd(rng, canvas, patch, 24, taken)
    assert 12 <= len(boxes) <= 24 and taken == boxes  # at most a few copies hidden by their neighbours
    b = np.stack(boxes)
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 256).all() and (b[:, 2:] > b[:, :2]).all()
    centres = (b[:, :2] + b[:, 2:]) / 2
    sides = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.eye(len(b)) * 1e9
    assert np.median(d.min(1) / sides) < 1.3  # neighbours about one object apart: they touch
    covered = canvas.sum(-1) > 0
    assert covered.mean() < pasted_mod.CROWD_FILL + 0.1


def test_crowd_images_hold_a_crowd_of_their_first_patch(monkeypatch):
    monkeypatch.setattr(pasted_mod, "CROWDED_SHARE", 1.0)
    photo = np.random.default_rng(1).integers(0, 256, (300, 300, 3)).astype(np.uint8)
    photos = {"p": photo, "q": photo[::-1].copy()}
    patches = {g: pasted_mod.make_patch(np.random.default_rng([9, g]), photos, ["p", "q"], 256) for g in (0, 1)}
    image, anns = pasted_mod.render_image(np.random.default_rng(5), photos, ["p", "q"], 256, patches, "crowd")
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    first = [a for a in anns if a["patch"] == 0]
    assert len(first) >= pasted_mod.CROWD_COUNT[0] // 2
    assert len(first) > len([a for a in anns if a["patch"] == 1])
    _, counting = pasted_mod.render_image(np.random.default_rng(5), photos, ["p", "q"], 256, patches)
    assert len([a for a in counting if a["patch"] == 0]) <= pasted_mod.COUNTING_COUNT[1] - 1  # the default: counting


def test_crowd_scenes_are_a_set_of_their_own(tmp_path, photos):
    """The scenes are part of a set's identity: a counting set is not reused for crowds nor the
    reverse; a set written before the option (no "scenes" in meta.json) counts as counting."""
    counting = generate_pasted(str(tmp_path / "c"), "tiny", seed=0, photo_paths=photos, verbose=False)
    crowd = generate_pasted(str(tmp_path / "k"), "tiny", seed=0, photo_paths=photos, verbose=False, scenes="crowd")
    assert _load(counting, "train")["annotations"] != _load(crowd, "train")["annotations"]
    assert build_pasted(crowd, "tiny", 0, scenes="crowd") == crowd
    with pytest.raises(InputError, match="holds a pasted-patch set"):
        build_pasted(crowd, "tiny", 0)
    with pytest.raises(InputError, match="holds a pasted-patch set"):
        build_pasted(counting, "tiny", 0, scenes="crowd")
    meta_path = os.path.join(counting, "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    del meta["scenes"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    assert build_pasted(counting, "tiny", 0) == counting
    with pytest.raises(InputError, match="scenes must be one of"):
        generate_pasted(str(tmp_path / "x"), "tiny", seed=0, photo_paths=photos, verbose=False, scenes="dense")
