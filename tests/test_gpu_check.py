"""benchmarks/gpu_check.sh and the checks it runs, on the CPU (no GPU is needed to test them).

The verdicts of the two agreement checks must be able to fail: a kernel that drops the RSA bias
gradient, and a describer whose device values differ from the CPU's, are reported as failures.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import describer_gpu_check  # noqa: E402
import rsa_grad_check  # noqa: E402
from rsfiqa.model import attention  # noqa: E402

torch.set_num_threads(1)


def test_rsa_gradients_through_sdpa_match_the_explicit_softmax_under_bf16():
    lines, ok = rsa_grad_check.check(torch.device("cpu"), bf16=True, batch=2, tolerance=5e-2,
                                     backends=("default", "MATH"))
    assert ok and sum(line.startswith("OK") for line in lines) == 2


def test_a_kernel_that_drops_the_mask_gradient_is_reported(monkeypatch):
    sdpa = attention.F.scaled_dot_product_attention

    def mask_without_gradient(q, k, v, attn_mask=None, **kwargs):
        return sdpa(q, k, v, attn_mask=None if attn_mask is None else attn_mask.detach(), **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", mask_without_gradient)
    lines, ok = rsa_grad_check.check(torch.device("cpu"), bf16=False, batch=2, tolerance=1e-4, backends=("default",))
    assert not ok and lines[-1].startswith("MISMATCH default")


def test_describer_comparison_fails_on_a_different_value_or_source():
    good = [[{"content": "a", "levels": {}, "parsed_scores": None,
              "scores": dict.fromkeys(describer_gpu_check.DIMENSIONS, 3.0),
              "level_expectations": dict.fromkeys(describer_gpu_check.DIMENSIONS, 2.5),
              "score_source": dict.fromkeys(describer_gpu_check.DIMENSIONS, "qalign")}]]
    assert describer_gpu_check.compare(good, good, 1e-2)[1]
    shifted = copy.deepcopy(good)
    shifted[0][0]["scores"]["blur"] = 3.05
    lines, ok = describer_gpu_check.compare(shifted, good, 1e-2)
    assert not ok and "5.00e-02" in lines[-2]
    parsed = copy.deepcopy(good)
    parsed[0][0]["score_source"]["blur"] = "parsed"
    assert not describer_gpu_check.compare(parsed, good, 1e-2)[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """DRY_RUN=1: every step of the GPU script with tiny settings on the CPU; none may fail."""
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    log = (tmp_path / "gpu_bench.txt").read_text()
    assert run.returncode == 0 and "!!! step failed" not in log, log[-3000:]
    for marker in ("result: all available backends match", "result: OK", "ratio full, frozen text",
                   "ratio L=5 full warm / bare, batch 1", "ratio full / bare, batch 1, eager",
                   "|score - eager score| = 0.00e+00"):
        assert marker in log, marker
    assert log.count("### ") == 9  # environment, 7 steps, done
