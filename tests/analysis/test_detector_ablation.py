"""tools/analysis/detector_ablation.py: the run plan, and a one-command table on the tiny benchmark."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tools.analysis.detector_ablation import main, plan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_plan_runs_double_cross_once_per_seed_whatever_the_layouts():
    runs = plan(["indirect", "double_cross"], ["pad", "resize"], [0, 1])
    names = [r["name"] for r in runs]
    assert names == ["indirect_pad_seed0", "indirect_pad_seed1", "indirect_resize_seed0", "indirect_resize_seed1",
                     "double_cross_seed0", "double_cross_seed1"]


def test_one_command_trains_every_variant_and_tabulates_it(tmp_path, capsys):
    from detector.data import build_synthetic

    bench = tmp_path / "synthetic_tiny"
    build_synthetic(str(bench), "tiny", workers=1)
    out = tmp_path / "ablation"
    argv = ["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--out", str(out), "--parallel", "2",
            f"data.root={bench}", "train.max_iters=4", "eval.runs=1"]
    assert main(argv) == 0
    result = json.load(open(out / "ablation.json"))
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"indirect", "misaligned", "double_cross"}
    for variant, row in rows.items():
        run_dir = out / (f"{variant}_seed0" if variant == "double_cross" else f"{variant}_pad_seed0")
        metrics = json.load(open(run_dir / "metrics.json"))
        # The table reports what each run's evaluation wrote, not something of its own.
        assert row["unseen_ap50"] == metrics["unseen_ap50"] and row["seen_ap"] == metrics["seen_ap"]
        assert row["iterations"] == 4 and row["step_ms"] > 0
        assert json.load(open(run_dir / "metrics.json"))["runs"] == 1
    # The bias MLPs are indirect's only extra parameters over misaligned; double_cross adds an encoder.
    assert rows["indirect"]["params_trainable"] > rows["misaligned"]["params_trainable"]
    assert rows["double_cross"]["params_trainable"] > rows["misaligned"]["params_trainable"]
    table = (out / "ablation.md").read_text()
    assert table.count("\n") == 5 and "| indirect | pad |" in table and "| double_cross | - |" in table
    assert (out / "ablation.png").stat().st_size > 10_000
    # A rerun reuses the finished runs instead of training them again.
    before = os.path.getmtime(out / "indirect_pad_seed0" / "metrics.json")
    assert main(argv) == 0
    assert os.path.getmtime(out / "indirect_pad_seed0" / "metrics.json") == before
    assert "finished earlier" in capsys.readouterr().out
