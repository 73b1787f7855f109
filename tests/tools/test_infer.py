"""tools/infer.py and the OneShotDetector API: the results.json contract and clear errors on bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detector import OneShotDetector
from detector.config import load_config, to_dict
from detector.inference import CheckpointError, InputError
from detector.models import build_model
from detector.utils.checkpoint import checkpoint_state, save_checkpoint, weights_digest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random-weight tiny checkpoint and a few images of different sizes."""
    d = tmp_path_factory.mktemp("infer")
    torch.manual_seed(0)
    cfg = load_config(TINY, ["eval.max_detections=6"])
    model, _, _ = build_model(cfg)
    ckpt = save_checkpoint(str(d / "tiny.pth"), checkpoint_state(model, to_dict(cfg), iteration=0))
    rng = np.random.default_rng(0)
    queries = d / "queries"
    queries.mkdir()
    for name, (h, w) in {"a.png": (60, 80), "b.jpg": (90, 50)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(queries / name)
    (queries / "notes.txt").write_text("not an image")
    support = d / "support.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(support)
    return {"dir": d, "ckpt": ckpt, "queries": queries, "support": support}


def run_infer(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "infer.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_cli_writes_one_entry_per_query_image_and_pictures(files):
    out = files["dir"] / "results.json"
    vis = files["dir"] / "vis"
    r = run_infer("--checkpoint", files["ckpt"], "--query", str(files["queries"]), "--support", str(files["support"]),
                  "--support-box", "5,5,30,20", "--output", str(out), "--visualize", str(vis),
                  "--score-threshold", "0", "--rescale", "fit")
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())
    assert [os.path.basename(e["image"]) for e in results] == ["a.png", "b.jpg"]
    assert [(e["width"], e["height"]) for e in results] == [(80, 60), (50, 90)]
    for e in results:
        assert len(e["detections"]) == 6  # threshold 0 keeps eval.max_detections
        for det in e["detections"]:
            x, y, w, h = det["bbox"]
            assert 0 <= x and 0 <= y and w >= 0 and h >= 0
            assert x + w <= e["width"] + 1e-3 and y + h <= e["height"] + 1e-3
            assert 0.0 <= det["score"] <= 1.0
        scores = [d["score"] for d in e["detections"]]
        assert scores == sorted(scores, reverse=True)
    assert sorted(os.listdir(vis)) == ["a.png", "b.png"]
    assert Image.open(vis / "a.png").size[0] > 80  # exemplar panel beside the query


def test_api_matches_cli_and_accepts_arrays(files):
    det = OneShotDetector.from_checkpoint(files["ckpt"], device="cpu")
    path = str(files["queries"] / "a.png")
    from_path = det.predict(path, str(files["support"]), support_box=(5, 5, 30, 20), score_threshold=0.0)
    array = np.asarray(Image.open(path).convert("RGB"))
    from_array = det.predict(array, Image.open(files["support"]), support_box=(5, 5, 30, 20), score_threshold=0.0)
    assert from_path["image"] == path and from_array["image"] is None
    assert (from_path["width"], from_path["height"]) == (80, 60)
    assert from_path["detections"] == from_array["detections"]
    # Batched = one at a time.
    batch = det.predict_batch([path, str(files["queries"] / "b.jpg")], str(files["support"]), (5, 5, 30, 20), 0.0)
    assert batch[0]["detections"] == from_path["detections"]


@pytest.mark.parametrize("box, message", [
    ((100, 100, 10, 10), "outside the support image"),
    ((5, 5, 0, 10), "zero area"),
    ((-50, 5, 20, 10), "outside the support image"),
])
def test_bad_support_boxes(files, box, message):
    det = OneShotDetector.from_checkpoint(files["ckpt"])
    with pytest.raises(InputError, match=message):
        det.predict(str(files["queries"] / "a.png"), str(files["support"]), support_box=box)


def test_bad_images_and_checkpoints_get_clear_errors(files, tmp_path):
    det = OneShotDetector.from_checkpoint(files["ckpt"])
    with pytest.raises(InputError, match=r"notes\.txt: not a recognised image format"):
        det.predict(str(files["queries"] / "notes.txt"), str(files["support"]))
    with pytest.raises(InputError, match="not found"):
        det.predict(str(tmp_path / "missing.png"), str(files["support"]))
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        OneShotDetector.from_checkpoint(str(tmp_path / "resnet.pth"))
    # Same format, different architecture: the stored config rebuilds another shape.
    state = torch.load(files["ckpt"], weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("decoder.layers.1.")}
    state["weights_sha256"] = weights_digest(state["model"])  # consistent, so the shapes are what is refused
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        OneShotDetector.from_checkpoint(str(tmp_path / "partial.pth"))


@pytest.mark.parametrize("extra, message", [
    (["--support-box", "500,500,10,10"], "outside the support image"),
    (["--support-box", "1,2,3"], "x,y,w,h"),
    (["--query", "/nonexistent/q.png"], "not found"),
])
def test_cli_bad_inputs_exit_with_a_message_not_a_traceback(files, extra, message):
    args = ["--checkpoint", files["ckpt"], "--query", str(files["queries"] / "a.png"), "--support",
            str(files["support"]), "--output", str(files["dir"] / "bad.json")]
    for i in range(0, len(extra), 2):
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += extra[i:i + 2]
    r = run_infer(*args)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


def test_cli_rejects_a_foreign_checkpoint(files, tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pth")
    r = run_infer("--checkpoint", str(tmp_path / "foreign.pth"), "--query", str(files["queries"] / "a.png"),
                  "--support", str(files["support"]), "--output", str(tmp_path / "r.json"))
    assert r.returncode == 2 and "not a checkpoint of this project" in r.stderr and "Traceback" not in r.stderr


def call_infer(*argv):
    import detector_tools.infer as infer_tool

    try:
        return infer_tool.main(list(argv))
    except SystemExit as e:  # argparse
        return e.code


def test_a_corrupt_image_in_a_folder_is_skipped_and_listed(files, tmp_path, capsys):
    queries = tmp_path / "queries"
    shutil.copytree(files["queries"], queries)
    (queries / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out" / "results.json"
    rc = call_infer("--checkpoint", files["ckpt"], "--query", str(queries), "--support", str(files["support"]),
                    "--output", str(out), "--score-threshold", "0", "--visualize", str(tmp_path / "vis"))
    stdout, stderr = capsys.readouterr()
    assert rc == 3  # done, with images skipped
    assert stderr.count("\n") == 1 and stderr.startswith("warning: skipped query image: ") and "broken.png" in stderr
    results = json.loads(out.read_text())
    assert [os.path.basename(e["image"]) for e in results] == ["a.png", "b.jpg", "broken.png"]
    assert "not a recognised image format" in results[2]["error"] and "detections" not in results[2]
    assert all("error" not in e and len(e["detections"]) == 6 for e in results[:2])
    assert sorted(os.listdir(tmp_path / "vis")) == ["a.png", "b.png"] and "1 skipped" in stdout


@pytest.mark.parametrize("case, needles", [
    ("huge", ["huge.png: 20000x20000 pixels (400.0 megapixels) is over the limit of 64 megapixels"]),
    ("limit", ["support image: ", "support.png: 50x40 pixels (0.002 megapixels) is over the limit of 0.001 megapixels"]),
    ("output_folder", ["--output", "is a folder; give a file name"]),
    ("visualize_file", ["--visualize", "support.png: is a file, not a folder"]),
    ("cuda", ["--device cuda: no CUDA GPU is available"]),
    ("batch0", ["argument --batch-size: must be >= 1, got 0"]),
    ("threshold", ["argument --score-threshold: must be in [0, 1], got 30"]),
    ("corrupt_single", ["broken.png: not a recognised image format"]),
    ("all_corrupt", ["none of its 1 images can be used"]),
    ("bad_support", ["support image: ", "notes.txt: not a recognised image format"]),
    ("truncated_ckpt", ["trunc.pth: not a readable checkpoint"]),
    ("empty_folder", ["no images (.png"]),
])
def test_infer_mistakes_are_one_line_and_write_nothing(files, tmp_path, capsys, fake_png, case, needles):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    a_png = str(files["queries"] / "a.png")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "trunc.pth").write_bytes(open(files["ckpt"], "rb").read()[:4000])
    query, extra = {
        "huge": (fake_png(tmp_path / "huge.png", 20000, 20000), []), "limit": (a_png, ["--max-megapixels", "0.001"]),
        "output_folder": (a_png, ["--output", str(tmp_path / "empty")]),
        "visualize_file": (a_png, ["--visualize", str(files["support"])]), "cuda": (a_png, ["--device", "cuda"]),
        "batch0": (a_png, ["--batch-size", "0"]), "threshold": (a_png, ["--score-threshold", "30"]),
        "corrupt_single": (str(tmp_path / "bad" / "broken.png"), []), "all_corrupt": (str(tmp_path / "bad"), []),
        "bad_support": (a_png, ["--support", str(files["queries"] / "notes.txt")]),
        "truncated_ckpt": (a_png, ["--checkpoint", str(tmp_path / "trunc.pth")]),
        "empty_folder": (str(tmp_path / "empty"), []),
    }[case]
    out = tmp_path / "out" / "results.json"
    rc = call_infer("--checkpoint", files["ckpt"], "--query", query, "--support", str(files["support"]),
                    "--output", str(out), *extra)
    _, stderr = capsys.readouterr()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path / "empty") == []


def test_several_exemplars_api_and_cli(files, tmp_path, capsys):
    """k-shot: a list of one is the one-shot call; the API and the CLI (repeated --support /
    --support-box, or several boxes of one support image) agree; counts that do not pair up are refused."""
    det = OneShotDetector.from_checkpoint(files["ckpt"])
    query, support = str(files["queries"] / "a.png"), str(files["support"])
    other = str(files["queries"] / "b.jpg")
    one = det.predict(query, support, support_box=(5, 5, 30, 20), score_threshold=0.0)
    assert det.predict(query, [support], [(5, 5, 30, 20)], score_threshold=0.0) == one
    two = det.predict(query, [support, other], support_boxes=[(5, 5, 30, 20), None], score_threshold=0.0)
    assert two["detections"] != one["detections"]
    boxes = [(5, 5, 30, 20), (0, 10, 40, 25)]
    from_one_image = det.predict(query, support, boxes, score_threshold=0.0)
    assert from_one_image == det.predict(query, [support, support], boxes, score_threshold=0.0)
    out = tmp_path / "k.json"
    rc = call_infer("--checkpoint", files["ckpt"], "--query", query, "--support", support, "--support-box", "5,5,30,20",
                    "--support", other, "--output", str(out), "--score-threshold", "0")
    assert rc == 2 and "2 --support but 1 --support-box" in capsys.readouterr().err and not out.exists()
    rc = call_infer("--checkpoint", files["ckpt"], "--query", query, "--support", support, "--support-box", "5,5,30,20",
                    "--support-box", "0,10,40,25", "--output", str(out), "--score-threshold", "0",
                    "--visualize", str(tmp_path / "vis"))
    assert rc == 0 and json.loads(out.read_text())[0]["detections"] == from_one_image["detections"]
    assert (tmp_path / "vis" / "a.png").exists()
    with pytest.raises(InputError, match="2 support images but 3 support boxes"):
        det.predict(query, [support, other], [None, None, None])
    with pytest.raises(InputError, match="no support image"):
        det.predict(query, [])


def test_cli_real_photo_options_match_the_api(files, tmp_path, capsys):
    """--rescale/--size/--object-size/--tile-overlap/--max-detections are predict's keyword options."""
    query = str(files["queries"] / "a.png")
    options = {"rescale": "exemplar", "object_size": 40.0, "size": 32, "tile_overlap": 0.5, "max_detections": 9}
    expected = OneShotDetector.from_checkpoint(files["ckpt"]).predict(query, query, support_box=(5, 5, 30, 20),
                                                                      score_threshold=0.0, **options)
    out = tmp_path / "r.json"
    rc = call_infer("--checkpoint", files["ckpt"], "--query", query, "--support", query, "--support-box", "5,5,30,20",
                    "--rescale", "exemplar", "--object-size", "40", "--size", "32", "--tile-overlap", "0.5",
                    "--max-detections", "9", "--score-threshold", "0", "--output", str(out),
                    "--visualize", str(tmp_path / "vis"))
    assert rc == 0, capsys.readouterr().err
    (result,) = json.loads(out.read_text())
    assert result == expected and result["scale"] == round(40 / np.sqrt(600), 6) and result["tiles"] > 1
    assert len(result["detections"]) == 9 and (tmp_path / "vis" / "a.png").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--size", "16"], "argument --size: must be 0 (data.eval_size) or >= 32, got 16"),
    (["--size", "big"], "argument --size: expected an integer (pixels), got 'big'"),
    (["--rescale", "zoom"], "argument --rescale: invalid choice: 'zoom'"),
    (["--tile-overlap", "1"], "argument --tile-overlap: must be below 1"),
    (["--object-size", "-3"], "argument --object-size: must be a finite number >= 0"),
    (["--max-detections", "0"], "argument --max-detections: must be >= 1, got 0"),
    (["--rescale", "exemplar", "--object-size", "0", "--support-box", "5,5,30,20"], "set infer.object_size (--object-size"),
    (["--rescale", "exemplar", "--object-size", "40"], "rescale=exemplar needs an exemplar box (--support-box"),
])
def test_cli_bad_real_photo_options_exit_2_with_one_line(files, tmp_path, capsys, extra, needle):
    out = tmp_path / "out" / "results.json"
    rc = call_infer("--checkpoint", files["ckpt"], "--query", str(files["queries"] / "a.png"), "--support",
                    str(files["support"]), "--output", str(out), *extra)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_folder_image_too_large_once_rescaled_is_skipped_not_the_run(files, tmp_path, capsys):
    """Mode exemplar scales every query by the exemplar: an image over the pixel limit once scaled
    is listed with its error (exit 3), the others are found."""
    queries = tmp_path / "queries"
    queries.mkdir()
    rng = np.random.default_rng(1)
    for name, (h, w) in {"big.png": (120, 200), "small.png": (60, 100)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(queries / name)
    out = tmp_path / "results.json"
    # Box side 10, object size 24.5: scale 2.45 -> 490x294 (0.144 MP) and 245x147 (0.036 MP); limit 0.05 MP.
    rc = call_infer("--checkpoint", files["ckpt"], "--query", str(queries), "--support", str(files["support"]),
                    "--support-box", "10,10,10,10", "--rescale", "exemplar", "--max-megapixels", "0.05",
                    "--output", str(out), "--score-threshold", "0")
    stdout, stderr = capsys.readouterr()
    assert rc == 3 and "1 skipped" in stdout
    results = json.loads(out.read_text())
    assert [os.path.basename(e["image"]) for e in results] == ["big.png", "small.png"]
    assert "over the limit" in results[0]["error"] and "detections" not in results[0]
    assert results[1]["scale"] == pytest.approx(2.45) and results[1]["detections"]
    assert stderr.startswith("warning: skipped ") and "big.png" in stderr


def test_the_default_rescale_is_the_benchmark_s_exemplar_rescale_when_there_is_a_box(files):
    """``auto``: with a box (and the tiny config's object size 24.5) the query is scaled by the
    exemplar, as the real-photo benchmark does; without one, it is fitted."""
    out = files["dir"] / "auto.json"
    query = str(files["queries"] / "a.png")
    r = run_infer("--checkpoint", files["ckpt"], "--query", query, "--support", str(files["support"]),
                  "--support-box", "5,5,30,20", "--output", str(out))
    assert r.returncode == 0, r.stderr
    (entry,) = json.loads(out.read_text())
    assert entry["scale"] == pytest.approx(24.5 / (30 * 20) ** 0.5)
    r = run_infer("--checkpoint", files["ckpt"], "--query", query, "--support", str(files["support"]),
                  "--output", str(files["dir"] / "fit.json"))
    assert r.returncode == 0, r.stderr
    (entry,) = json.loads((files["dir"] / "fit.json").read_text())
    assert entry["scale"] == pytest.approx(64 / 80) and entry["tiles"] == 1  # fit: longer side 80 -> 64


def test_no_output_lands_on_an_input(files, tmp_path):
    """``--output`` naming a query image, or ``--visualize`` naming the query folder, is refused in
    one line before any work, and the images are left as they were."""
    a_png = files["queries"] / "a.png"
    before = {p.name: p.read_bytes() for p in files["queries"].iterdir()}
    common = ["--checkpoint", files["ckpt"], "--support", str(files["support"])]
    r = run_infer(*common, "--query", str(a_png), "--output", str(a_png))
    assert r.returncode == 2 and "is one of the input images" in r.stderr and "Traceback" not in r.stderr
    r = run_infer(*common, "--query", str(files["queries"]), "--output", str(tmp_path / "r.json"),
                  "--visualize", str(files["queries"]))
    assert r.returncode == 2 and "holds input images" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in files["queries"].iterdir()} == before
    assert not (tmp_path / "r.json").exists()


def test_queries_that_share_a_name_get_a_picture_each(files, tmp_path):
    folder = tmp_path / "same_stem"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a.png", "a.jpg", "c.png"):
        Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(folder / name)
    r = run_infer("--checkpoint", files["ckpt"], "--query", str(folder), "--support", str(files["support"]),
                  "--output", str(tmp_path / "r.json"), "--visualize", str(tmp_path / "vis"))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "vis")) == ["a.jpg.png", "a.png.png", "c.png"]
