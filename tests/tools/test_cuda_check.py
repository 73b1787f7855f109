"""tools/cuda_check.py and detector.benchmark.cuda_check: the kernel comparison it reports, and a
clear exit where there is no GPU."""
import os
import subprocess
import sys

import pytest
import torch

from detector.benchmark import cuda_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_kernel_agreement_is_small_in_float32_on_the_cpu():
    result = cuda_check.kernel_agreement(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
    assert result["out_rel_err"] < 1e-5
    assert result["grad_rel_err"] < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_exits_with_a_clear_message_without_a_gpu():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "cuda_check.py")], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert "no CUDA device" in r.stderr and "Traceback" not in r.stderr


def test_the_folding_check_runs_on_any_device_and_passes_on_the_cpu():
    result = cuda_check.folding_on_cuda(torch.device("cpu"))
    assert result["fell_back_with_warning"] is False and result["max_rel_diff"] < 1e-4
