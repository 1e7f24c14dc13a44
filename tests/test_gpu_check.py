"""``make gpu-check`` on a machine without a GPU: its CPU part (the Triton kernels compiled for sm_90, the interpreter
against the PyTorch scan), one line saying there is no GPU, exit 0; and its Markdown report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clipdehaze
from clipdehaze.gpu_check import markdown

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, make gpu-check is the GPU check itself")
def test_make_gpu_check_without_a_gpu_runs_the_cpu_part_and_exits_0(tmp_path):
    if not Path(clipdehaze.__file__).resolve().is_relative_to(REPO / "src"):
        pytest.skip("the clipdehaze under test is not this checkout's, so make gpu-check would install it")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "gpu-check")}
    out = subprocess.run(["make", "gpu-check", f"VENV={sys.prefix}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "installing" not in out.stdout
    assert out.stdout.count("no CUDA GPU on this machine") == 1
    report = json.loads((tmp_path / "gpu-check" / "gpu-check.json").read_text())
    assert report["environment"]["cuda_available"] is False
    assert {(r["kernel"], r["dtype"]) for r in report["compile"]} == {
        (k, d) for k in ("forward", "backward") for d in ("fp32", "bf16")}
    assert all(r["arch"] == "sm_90" and r["registers"] > 0 and r["spill_stack_bytes"] == 0 for r in report["compile"])
    errors = [e for r in report["interpreter"] for e in r["max_rel_error"].values()]
    assert len(errors) > 20 and max(errors) < 1e-4
    assert "models" not in report and "cuda_tests" not in report
    assert (tmp_path / "gpu-check" / "gpu-check.md").read_text() == markdown(report)


def test_markdown_report_of_a_gpu_run():
    report = {
        "environment": {"date": "2026-12-01", "gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0"},
        "compile": [{"kernel": "forward", "case": "d_state 1, group 24", "dtype": "fp32", "tile": [8, 1, 128],
                     "warps": 4, "registers": 139, "spill_stack_bytes": 0}],
        "interpreter": [{"case": "bc=grouped, n=1", "max_rel_error": {"out": 2e-7, "du": 1e-7}}],
        "cuda_tests": {"summary": "13 passed in 95.2s", "seconds": 96.0, "failures": []},
        "scan": [{"batch": 16, "channels": 96, "d_state": 1, "length": 65536, "triton_s": 0.004, "torch_s": 0.2,
                  "torch_over_triton": 50.0}],
        "models": [{"model": "cliphaze_t (triton scan)", "params_m": 1.28, "train_images_per_s": 210.4,
                    "train_peak_gib": 9.1, "infer_256_s": 0.0061, "infer_1024_s": 0.052, "infer_1024_peak_gib": 2.2},
                   {"model": "sar_weather_s", "error": "OutOfMemoryError: ..."}],
        "goals": [{"model": "cliphaze_t", "reference": "dehazeformer_s", "what": "inference 1024", "model_s": 0.052,
                   "reference_s": 0.065, "ratio": 0.8, "goal": 0.8, "met": True}],
        "skipped": ["cliphaze_s (torch)"],
    }
    text = markdown(report)
    assert text.startswith("# gpu-check (2026-12-01, NVIDIA H200; torch 2.11.0, triton 3.6.0)")
    assert "| forward | d_state 1, group 24 | fp32 | (8, 1, 128) | 4 | 139 | 0 |" in text
    assert "| bc=grouped, n=1 | 2.0e-07 | 1.0e-07 |" in text
    assert "## CUDA-marked tests: 13 passed in 95.2s (96.0 s)" in text
    assert "| 16 | 96 | 1 | 65536 | 0.0040 | 0.2000 | 50.0x |" in text
    assert "| cliphaze_t (triton scan) | 1.28 | 210.4 | 9.10 | 0.0061 | 0.052 | 2.20 |" in text
    assert "| sar_weather_s | error: OutOfMemoryError: ... | | | | | |" in text
    assert "| cliphaze_t | dehazeformer_s | inference 1024 | 0.0520 | 0.0650 | 0.80x | <= 0.8x | yes |" in text
    assert text.rstrip().endswith("Skipped (time budget): cliphaze_s (torch)")


def test_goal_ratios_from_the_gpu_timings():
    """The bench's goals from a GPU run's rows: CLIPHaze with the Triton scan (the PyTorch-scan row is not used),
    goals whose models were not both timed left out, ratios as computed by hand."""
    from clipdehaze.gpu_check import goal_ratios

    def row(name, backend=None, train=1.0, i256=0.1, i1024=1.0):
        return {"name": name, "scan_backend": backend, "train_step_s": train, "infer_256_s": i256,
                "infer_1024_s": i1024}

    rows = goal_ratios([row("cliphaze_t", "triton", train=0.6, i256=0.07, i1024=0.9),
                        row("cliphaze_t", "torch", train=9.0, i256=9.0, i1024=9.0),
                        row("dehazeformer_s", i256=0.1, i1024=1.0), row("dehazeformer_t", train=0.5),
                        {"name": "dehazeformer_b", "error": "OutOfMemoryError"}])
    got = {(r["reference"], r["what"]): (round(r["ratio"], 6), r["met"]) for r in rows}
    assert got == {("dehazeformer_s", "inference 256"): (0.7, True), ("dehazeformer_s", "inference 1024"): (0.9, False),
                   ("dehazeformer_t", "train step"): (1.2, True)}
