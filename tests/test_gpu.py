"""On a CUDA GPU (``cuda`` marker; skipped without one, run by ``make gpu-check``): the compiled Triton scan against
the PyTorch scan at SS2D sizes, a bf16-mixed training run of every ``*_t`` generator, evaluation on CPU = on GPU,
the CLIP prior and its embedding cache on the GPU, and DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from clipdehaze.models import create_generator
from clipdehaze.models.ssm import selective_scan, selective_scan_torch
from clipdehaze.train import train

pytestmark = pytest.mark.cuda

T_VARIANTS = ["dehazeformer_t", "mixdehazenet_t", "mixcldehazenet_t", "cliphaze_t", "sar_weather_t"]


def _data(root) -> list[str]:
    return ["data=paired", f"data.root={root}", "data.crop_size=64", "data.batch_size=2", "data.num_workers=0",
            "data.name=tiny"]


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_scan_matches_the_torch_scan_at_ss2d_sizes(d_state, dtype):
    """b 2, 4 directions x 96 channels (B/C grouped per direction), L = 64² + 7, softplus(δ + bias), D."""
    from clipdehaze.gpu_check import _scan_inputs

    inputs = _scan_inputs(64 * 64 + 7, 384, d_state, "grouped", z=False, groups=4, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(2, 384, 64 * 64 + 7, generator=g, device="cuda", dtype=torch.float64)
    results = []
    for fn, compute in ((selective_scan_torch, torch.float64),
                        (lambda **kw: selective_scan(**kw, backend="triton"), dtype)):
        leaves = {k: v.to(compute, copy=True).requires_grad_() for k, v in inputs.items() if v is not None}
        out = fn(**leaves, delta_softplus=True)
        (out.double() * w).sum().backward()
        results.append({"out": out.detach(), **{k: v.grad for k, v in leaves.items()}})
    ref, got = results
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    errors = {k: _relative_error(got[k], ref[k]) for k in ref}
    assert max(errors.values()) < tolerance, errors


def test_auto_backend_runs_triton_on_cuda_without_mamba_ssm(monkeypatch):
    scan = sys.modules["clipdehaze.models.ssm.selective_scan"]
    monkeypatch.setattr(scan, "_mamba_kernel", lambda: (None, ImportError("no mamba-ssm")))
    module, _ = scan._triton_scan()
    calls = []
    monkeypatch.setattr(module, "selective_scan_triton", lambda *a: calls.append(a) or a[0])
    x = torch.randn(1, 4, 9, device="cuda")
    selective_scan(x, x, -torch.ones(4, 2, device="cuda"), torch.randn(1, 2, 9, device="cuda"),
                   torch.randn(1, 2, 9, device="cuda"))
    assert len(calls) == 1


def test_auto_backend_keeps_deterministic_runs_off_the_atomics(monkeypatch):
    scan = sys.modules["clipdehaze.models.ssm.selective_scan"]
    monkeypatch.setattr(scan, "_mamba_kernel", lambda: (None, ImportError("no mamba-ssm")))
    module, _ = scan._triton_scan()
    monkeypatch.setattr(module, "selective_scan_triton", lambda *a: pytest.fail("Triton scan in a deterministic run"))
    x = torch.randn(1, 4, 9, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        out = selective_scan(x, x, -torch.ones(4, 2, device="cuda"), torch.randn(1, 2, 9, device="cuda"),
                             torch.randn(1, 2, 9, device="cuda"))
    finally:
        torch.use_deterministic_algorithms(False)
    assert out.shape == x.shape


@pytest.mark.parametrize("name", T_VARIANTS)
def test_every_t_generator_trains_under_bf16_mixed_on_the_gpu(name, compose_cfg, tiny_paired_root):
    overrides = [f"model={name}", "trainer=gpu", "trainer.precision=bf16-mixed", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false", *_data(tiny_paired_root)]
    if getattr(create_generator(name), "clip_inputs", ()):
        overrides.append("clip=tiny_random")
    summary = train(compose_cfg("train", overrides))
    assert summary["global_step"] == 3
    assert math.isfinite(summary["metrics"]["train/loss"])


def test_eval_on_the_gpu_equals_eval_on_the_cpu(compose_cfg, tiny_paired_root, tmp_path):
    from clipdehaze.evaluate import evaluate

    torch.manual_seed(0)
    weights = tmp_path / "dehazeformer_t.pth"
    torch.save(create_generator("dehazeformer_t").state_dict(), weights)
    metrics = {}
    for trainer in ("cpu", "gpu"):
        cfg = compose_cfg("eval", ["model=dehazeformer_t", f"weights_path={weights}", f"trainer={trainer}",
                                   *_data(tiny_paired_root)], out=tmp_path / trainer)
        metrics[trainer] = evaluate(cfg)["metrics"]
    for key in ("test/psnr_tiny", "test/ssim_tiny"):
        # TF32 convolutions on the GPU: equal to a few thousandths of a dB, not bitwise.
        assert metrics["gpu"][key] == pytest.approx(metrics["cpu"][key], abs=0.01 if "psnr" in key else 1e-4), key


def test_clip_prior_and_its_cache_run_on_the_gpu(compose_cfg, tiny_paired_root, monkeypatch, tmp_path):
    from clipdehaze.models.clip.cache import ClipCache

    devices = set()
    compute = ClipCache.compute
    monkeypatch.setattr(ClipCache, "compute", lambda self, image: devices.add(self.prior.device.type)
                        or compute(self, image))
    monkeypatch.setenv("CLIPDEHAZE_CACHE", str(tmp_path / "cache"))
    cfg = compose_cfg("train", ["model=cliphaze_test", "clip=tiny_random", "trainer=gpu", "debug=fast_dev_run",
                                *_data(tiny_paired_root)])
    train(cfg)
    assert devices == {"cuda"}


def test_ddp_on_the_gpus(tiny_paired_root, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "clipdehaze.train", "model=cliphaze_t", "clip=tiny_random", "trainer=ddp",
           "trainer.precision=bf16-mixed", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
           "trainer.limit_val_batches=1", "callbacks.rich_progress_bar=null", *_data(tiny_paired_root)]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (metrics,) = (tmp_path / "outputs" / "train" / "runs").glob("*/metrics.json")
    assert math.isfinite(json.loads(metrics.read_text())["metrics"]["train/loss"])
