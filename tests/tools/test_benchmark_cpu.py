"""The CPU suites of tools/benchmark.py: the one timing helper, the losing kernel candidate still
computes the same attention as the reference, and a worker process runs from any directory."""
import json
import os
import subprocess
import sys

import pytest
import torch

from detector.benchmark.candidates import chunked_attention
from detector.benchmark.cpu_suite import launch, merge
from detector.benchmark.timing import measure
from detector.models.indirect_attention import indirect_attention_reference
from detector.models.relative_bias import FactoredBias

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_measure_times_every_timed_run_and_reports_memory_on_the_cpu():
    calls = []
    out = measure(lambda: calls.append(torch.ones(256, 256).sum()), torch.device("cpu"), warmup=2, iters=3)
    assert len(calls) == 5 and len(out["times_s"]) == 3
    assert out["min_s"] <= out["median_s"] and out["min_s"] == min(out["times_s"])
    assert out["peak_mb"] > 0 and 0 <= out["rise_mb"] <= out["peak_mb"]


def test_chunked_attention_equals_the_reference_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    b, h, nq, side, dh = 2, 2, 10, 4, 8

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    q, k, v = leaf(b, h, nq, dh), leaf(b, h, side * side, dh), leaf(b, h, side * side, dh)
    by, bx = leaf(b, h, nq, side), leaf(b, h, nq, side)
    mask = torch.zeros(b, side, side, dtype=torch.bool)
    mask[1, :, 3:] = True
    mask = mask.flatten(1)
    grads = []
    for fn in (indirect_attention_reference, lambda *a: chunked_attention(*a, block=3)):
        out = fn(q, k, v, FactoredBias(by, bx), mask)
        grads.append((out,) + torch.autograd.grad(out.square().sum(), (q, k, v, by, bx)))
    for ref, chunked in zip(*grads):
        torch.testing.assert_close(chunked, ref)


def test_a_worker_runs_from_another_directory_and_its_runs_merge(tmp_path):
    spec = {"kind": "matmul", "device": "cpu", "threads": 1, "warmup": 0, "iters": 2, "n": 64}
    old = os.getcwd()
    os.chdir(tmp_path)  # the worker must not depend on being started from the checkout
    try:
        results = [launch(spec, timeout=300) for _ in range(2)]
    finally:
        os.chdir(old)
    assert all("error" not in r for r in results), results
    assert all(r["gflops"] > 0 and r["dtype"] == "float32" and len(r["times_s"]) == 2 for r in results)
    merged = merge(results, ("kind",))
    assert len(merged) == 1 and merged[0]["processes"] == 2 and len(merged[0]["times_s"]) == 4
    assert merged[0]["peak_mb"] == max(r["peak_mb"] for r in results)
    failed = launch({**spec, "kind": "nonsense"}, timeout=300)
    assert "KeyError" in failed["error"] or "nonsense" in failed["error"]


def test_a_bad_suite_is_one_line_and_exit_code_2():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--suite", "decoder,warp"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--suite: warp" in proc.stderr


def test_the_cross_suite_times_each_cross_step_of_a_config_side_by_side(tmp_path):
    out = tmp_path / "cross.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--suite", "cross",
                           "--configs", os.path.join(ROOT, "configs", "tiny.yaml"), "--threads", "1", "--warmup", "0",
                           "--iters", "2", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tiny.yaml |")]
    assert [row.split("|")[2].strip() for row in rows] == ["indirect", "misaligned", "double_cross"]
    assert rows[0].split("|")[4].strip() == "1.00"  # each ratio is to the same config's indirect step
    results = [r for r in json.loads(out.read_text()) if r["kind"] == "cross"]
    assert len(results) == 3 and all("error" not in r and len(r["times_s"]) == 2 and r["batch"] == 2 for r in results)
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--suite", "cross",
                          "--configs", str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "config file not found" in bad.stderr


def test_the_cross_suite_times_double_cross_without_a_configs_light_fusion_step(tmp_path):
    """A config with ``model.fusion_layers`` times its indirect step with the fusion step and the
    double-cross step with double cross's own fusion encoder (the config's would be refused)."""
    from detector.benchmark.workers import _cross_step

    config = tmp_path / "fusion.yaml"
    config.write_text(f"_base_: {os.path.join(ROOT, 'configs', 'tiny.yaml')}\nmodel:\n  fusion_layers: 1\n")
    from detector.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="fusion_layers"):  # what the suite must not run into
        load_config(str(config), ["model.attention=double_cross"])
    for attention in ("indirect", "double_cross"):
        step, batch = _cross_step({"config": str(config), "attention": attention}, torch.device("cpu"))
        step()
        assert batch >= 1
