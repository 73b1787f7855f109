"""No entry point writes anything before its inputs are checked: each tool, given good inputs
except the one it checks last (a checkpoint, a data folder, an image, a box, an override, a config
file), exits with code 2 and one line, and the folder it works in, its outputs and inputs included,
is exactly as it was (names, sizes and modification times)."""
import json
import os
import shutil
import subprocess
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")

# Every case in one process (one torch import), with the work folder as the current folder.
DRIVER = """
import contextlib, io, json, os, runpy, sys
sys.path.insert(0, {root!r})
from detector_tools import benchmark, demo, evaluate, export, infer, kshot_table, serve_load, train

def script(name):
    return lambda argv: runpy.run_path(os.path.join({root!r}, "datasets", name + ".py"))["main"](argv)

tools = {{"train": train.main, "evaluate": evaluate.main, "infer": infer.main, "export": export.main,
          "demo": demo.main, "kshot_table": kshot_table.main, "benchmark": benchmark.main,
          "serve_load": serve_load.main, "prepare_voc": script("prepare_voc"), "prepare_coco": script("prepare_coco")}}

def snapshot():
    return sorted((os.path.relpath(os.path.join(d, n)), os.stat(os.path.join(d, n)).st_size,
                   os.stat(os.path.join(d, n)).st_mtime_ns) for d, dirs, files in os.walk(".") for n in dirs + files)

out = {{}}
for name, (tool, argv) in json.loads(sys.argv[1]).items():
    before, err = snapshot(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = tools[tool](argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            import traceback
            traceback.print_exc(file=err)
            code = "exception"
    after = snapshot()
    out[name] = {{"code": code, "stderr": err.getvalue(), "changed": sorted(set(before) ^ set(after))}}
print(json.dumps(out))
"""


def test_no_entry_point_writes_before_its_inputs_are_checked(bench, reference, tmp_path):
    work = tmp_path / "work"
    run = shutil.copytree(reference, work / "run")
    ckpt = str(run / "checkpoint_00000008.pth")
    (work / "corrupt.pth").write_bytes(open(ckpt, "rb").read()[:5000])
    (work / "corrupt_run").mkdir()
    shutil.copy(work / "corrupt.pth", work / "corrupt_run" / "checkpoint_00000002.pth")
    (work / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (work / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    Image.new("RGB", (64, 64), (120, 80, 40)).save(work / "q.png")
    missing = str(tmp_path / "no_such_folder")
    tiny = ["--config", TINY, "--no-progress", f"data.root={bench}", "train.max_iters=4"]
    image = ["--query", "q.png", "--support", "q.png"]
    outputs = ["--output", "out/results.json", "--visualize", "out/vis"]
    cases = {
        "train: a data folder that is a file": ("train", tiny + ["data.root=q.png", "--output-dir", "out/a"]),
        "train: a bad model override": ("train", tiny + ["model.d_model=-32", "--output-dir", "out/b"]),
        "train: a corrupt init checkpoint": ("train", tiny + ["train.init_checkpoint=corrupt.pth", "--output-dir", "out/c"]),
        "train: a binary config file": ("train", ["--config", "binary.yaml", "--output-dir", "out/d"]),
        "train: --resume, no readable checkpoint": ("train", ["--resume", "--output-dir", "corrupt_run"]),
        "train: --resume, a change that breaks the weights": ("train", ["--resume", "--output-dir", "run",
                                                                         "model.d_model=64"]),
        "train: --overwrite, a bad override": ("train", tiny + ["--output-dir", "run", "--overwrite", "train.lr=nan"]),
        "evaluate: a corrupt checkpoint": ("evaluate", ["--checkpoint", "corrupt.pth", "--output-dir", "out/e"]),
        "evaluate: a data folder that is a file": ("evaluate", ["--checkpoint", ckpt, "data.root=q.png"]),
        "evaluate: a missing real-photo folder": ("evaluate", ["--checkpoint", ckpt, "--realphoto", missing,
                                                               "--output-dir", "out/f", "--visualize", "out/g"]),
        "evaluate: the oracle on a data folder that is a file": ("evaluate", ["--class-agnostic-oracle", "--config",
                                                                              TINY, "data.root=q.png"]),
        "infer: a corrupt checkpoint": ("infer", ["--checkpoint", "corrupt.pth", *image, *outputs]),
        "infer: a broken exemplar image": ("infer", ["--checkpoint", ckpt, "--query", "q.png", "--support",
                                                     "broken.png", *outputs]),
        "infer: a box outside the exemplar image": ("infer", ["--checkpoint", ckpt, *image, "--support-box",
                                                              "100,100,10,10", *outputs]),
        "export: a corrupt checkpoint": ("export", ["--checkpoint", "corrupt.pth", "--output", "out/model.onnx"]),
        "kshot table: a corrupt checkpoint": ("kshot_table", ["--checkpoint", "corrupt.pth", "--output-dir", "out/k"]),
        "demo: a bad override": ("demo", ["--output-dir", "out/demo", "model.d_model=-32"]),
        "benchmark: an unknown suite": ("benchmark", ["--suite", "bogus", "--json", "out/bench.json"]),
        "serve_load: --json at a folder": ("serve_load", ["--checkpoint", ckpt, "--json", "run", "--plot", "out/s.png"]),
        "prepare_voc: a missing devkit": ("prepare_voc", ["--devkit", missing, "--out", "out/voc"]),
    }
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=ROOT))
    r = subprocess.run([sys.executable, str(driver), json.dumps(cases)], capture_output=True, text=True, timeout=600,
                       cwd=work, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(results) == set(cases)
    wrong = {name: got for name, got in results.items()
             if got["code"] != 2 or len(got["stderr"].strip().splitlines()) != 1 or got["changed"]}
    assert not wrong, json.dumps(wrong, indent=1)[-6000:]
    assert not (work / "out").exists() and not (work / "outputs").exists()
