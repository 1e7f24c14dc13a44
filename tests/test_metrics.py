"""Metric protocols against hand-computed values and a direct (non-separable, float64) SSIM reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipdehaze.metrics import (
    ImageQualityMetrics,
    compute_psnr,
    compute_ssim,
    dehazeformer_down_ratio,
    describe_protocol,
    list_protocols,
    rgb_to_y_bt601,
)


def reference_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, filter_h: bool = True) -> torch.Tensor:
    """Textbook SSIM: the 2-D Gaussian window (outer product; 1-D along W when H is skipped) applied by summing
    shifted copies, 'valid' positions only, float64, product form of Wang et al. 2004. Per image, channel mean."""
    x, y = x.double(), y.double()
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-coords**2 / (2 * 1.5**2))
    g = g / g.sum()
    one = torch.ones(1, dtype=torch.float64)
    window = torch.outer(g if filter_h else one, g)
    kh, kw = window.shape
    h, w = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
    sums = {k: 0.0 for k in ("x", "y", "xx", "yy", "xy")}
    for i in range(kh):
        for j in range(kw):
            a, b, wt = x[..., i:i + h, j:j + w], y[..., i:i + h, j:j + w], window[i, j]
            for k, v in (("x", a), ("y", b), ("xx", a * a), ("yy", b * b), ("xy", a * b)):
                sums[k] = sums[k] + wt * v
    mx, my = sums["x"], sums["y"]
    vx, vy, cov = sums["xx"] - mx**2, sums["yy"] - my**2, sums["xy"] - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(2).mean(-1).mean(-1)


def test_protocols_listed_and_described():
    assert list_protocols() == ["basicsr", "dehazeformer"]
    assert describe_protocol("dehazeformer").startswith("DehazeFormer protocol: per-image PSNR on float RGB")
    text = describe_protocol("basicsr", crop_border=4, test_y_channel=True)
    assert "Y channel" in text and "crop border 4" in text
    assert "RGB, crop border 0" in describe_protocol("basicsr")


def test_unknown_protocol_and_options_fail_loudly():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(KeyError, match="unknown metric protocol"):
        compute_psnr(x, x, protocol="matlab")
    with pytest.raises(TypeError, match="unknown options"):
        compute_psnr(x, x, protocol="dehazeformer", crop_border=4)
    with pytest.raises(TypeError, match="must be bool"):
        compute_psnr(x, x, protocol="basicsr", test_y_channel="false")
    with pytest.raises(ValueError, match="same shape|one shape"):
        compute_psnr(x, x[..., :8], protocol="dehazeformer")


# ------------------------------------------------------------------------------------------ dehazeformer
def test_dehazeformer_psnr_constant_offset():
    target = torch.full((2, 3, 20, 30), 0.5)
    # 0.125 is exact in binary: MSE = 1/64 -> 10 log10(64) dB exactly.
    assert torch.allclose(compute_psnr(target + 0.125, target), torch.full((2,), 10 * math.log10(64),
                                                                            dtype=torch.float64), atol=1e-12)
    # 0.6 - 0.5 in float32 is 0.1 to 2e-8: 20 dB to 1e-5.
    assert torch.allclose(compute_psnr(torch.full_like(target, 0.6), target),
                          torch.full((2,), 20.0, dtype=torch.float64), atol=1e-5)


def test_dehazeformer_clamps_output_only():
    target = torch.full((1, 3, 16, 16), 0.875)
    # Output 1.5 clamps to 1: an error of 0.125 -> 10 log10(64) dB, not the unclamped 0.625.
    assert compute_psnr(torch.full_like(target, 1.5), target).item() == pytest.approx(10 * math.log10(64))
    assert compute_psnr(target.clone(), target).item() == math.inf


@pytest.mark.parametrize("size, ratio", [
    ((256, 256), 1), ((100, 120), 1), ((413, 550), 2), ((460, 620), 2), ((1000, 1500), 4),
    ((384, 500), 2),  # 1.5 -> 2 (half to even rounds up here)
    ((640, 700), 2),  # 2.5 -> 2 (half to even rounds down: Python round, as upstream)
    ((500, 384), 2),
])
def test_dehazeformer_down_ratio(size, ratio):
    assert dehazeformer_down_ratio(*size) == ratio


def test_dehazeformer_ssim_matches_direct_reference():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 40, 57, generator=g)  # r = 1: no pooling
    output = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(compute_ssim(output, target), reference_ssim(output, target, data_range=1.0), atol=1e-10)


def test_dehazeformer_ssim_pools_before_ssim():
    g = torch.Generator().manual_seed(5)
    target = torch.rand(1, 3, 413, 550, generator=g)  # r = 2 -> adaptive pooling to (206, 275)
    output = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    pooled = [F.adaptive_avg_pool2d(t.double(), (206, 275)) for t in (output, target)]
    # The pooled pair has r = 1, and the unpooled SSIM is checked against the reference above.
    assert torch.allclose(compute_ssim(output, target), compute_ssim(*pooled), atol=1e-12)


def test_ssim_constant_images_closed_form():
    # Flat images have zero variance: SSIM = (2ab + C1) / (a² + b² + C1).
    a, b = 0.5, 0.625
    c1 = 0.01**2
    out, tgt = torch.full((1, 3, 24, 24), a), torch.full((1, 3, 24, 24), b)
    assert compute_ssim(out, tgt).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)
    assert compute_ssim(tgt, tgt).item() == pytest.approx(1.0, abs=1e-12)
    # BasicSR on levels: 0.5 -> round(127.5) = 128 (half to even), 0.625 -> round(159.375) = 159.
    a8, b8, c1_8 = 128.0, 159.0, (0.01 * 255) ** 2
    assert compute_ssim(out, tgt, protocol="basicsr").item() == pytest.approx(
        (2 * a8 * b8 + c1_8) / (a8 * a8 + b8 * b8 + c1_8), abs=1e-12)


def test_dehazeformer_ssim_skips_filter_along_short_side_like_pytorch_msssim():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(1, 3, 6, 40, generator=g)
    output = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    expected = reference_ssim(output, target, data_range=1.0, filter_h=False)
    assert torch.allclose(compute_ssim(output, target), expected, atol=1e-10)


# ------------------------------------------------------------------------------------------ basicsr
def test_basicsr_identical_images():
    x = torch.randint(0, 255, (2, 3, 24, 24), generator=torch.Generator().manual_seed(2)) / 255
    assert torch.isinf(compute_psnr(x, x, protocol="basicsr")).all()
    assert torch.allclose(compute_ssim(x, x, protocol="basicsr"), torch.ones(2, dtype=torch.float64))
    # On the uint8 grid, an error under half a grey level vanishes in the quantisation.
    assert torch.isinf(compute_psnr(x + 0.4 / 255, x, protocol="basicsr")).all()


def test_basicsr_psnr_on_uint8_levels():
    target = torch.full((1, 3, 16, 16), 0.5)  # level round(127.5) = 128
    output = torch.full_like(target, 0.6)  # level 153
    assert compute_psnr(output, target, protocol="basicsr").item() == pytest.approx(20 * math.log10(255 / 25))


def test_y_channel_of_known_pixels():
    levels = torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 64, 32]],
                          dtype=torch.float64).T.reshape(1, 3, 1, 6)
    expected = [235.0, 16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966,
                16 + (65.481 * 128 + 128.553 * 64 + 24.966 * 32) / 255]
    assert rgb_to_y_bt601(levels).flatten().tolist() == pytest.approx(expected, abs=1e-9)


def test_basicsr_y_channel_psnr():
    # Pure red vs black: only Y differs, by 65.481 levels on every pixel.
    red = torch.zeros(1, 3, 16, 16)
    red[:, 0] = 1
    black = torch.zeros_like(red)
    got = compute_psnr(red, black, protocol="basicsr", test_y_channel=True).item()
    assert got == pytest.approx(10 * math.log10(255**2 / 65.481**2))
    # In RGB one channel of three differs by 255: MSE = 255²/3.
    assert compute_psnr(red, black, protocol="basicsr").item() == pytest.approx(10 * math.log10(3))


def test_basicsr_crop_border():
    g = torch.Generator().manual_seed(3)
    target = torch.rand(1, 3, 32, 32, generator=g)
    output = target.clone()
    output[..., :2, :] = 1 - output[..., :2, :]  # damage only a 2-pixel top border
    assert math.isfinite(compute_psnr(output, target, protocol="basicsr").item())
    assert compute_psnr(output, target, protocol="basicsr", crop_border=2).item() == math.inf
    # Cropping inside the protocol equals cropping by hand.
    output = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    crop = (..., slice(4, -4), slice(4, -4))
    for fn in (compute_psnr, compute_ssim):
        assert torch.allclose(fn(output, target, protocol="basicsr", crop_border=4),
                              fn(output[crop].contiguous(), target[crop].contiguous(), protocol="basicsr"))
    with pytest.raises(ValueError, match="leaves nothing"):
        compute_psnr(output, target, protocol="basicsr", crop_border=16)


def test_basicsr_ssim_matches_direct_reference_on_levels():
    g = torch.Generator().manual_seed(4)
    target = torch.rand(2, 3, 40, 33, generator=g)
    output = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    levels = [(t.float().clamp(0, 1) * 255).round().double() for t in (output, target)]
    assert torch.allclose(compute_ssim(output, target, protocol="basicsr"),
                          reference_ssim(*levels, data_range=255.0), atol=1e-10)
    ys = [rgb_to_y_bt601(lv) for lv in levels]
    assert torch.allclose(compute_ssim(output, target, protocol="basicsr", test_y_channel=True),
                          reference_ssim(*ys, data_range=255.0), atol=1e-10)


def test_basicsr_ssim_rejects_images_smaller_than_window():
    x = torch.rand(1, 3, 8, 40)
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        compute_ssim(x, x, protocol="basicsr")


# ------------------------------------------------------------------------------------------ torchmetrics
def _image(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    target = torch.rand(1, 3, 24, 24, generator=g)
    return (target + 0.02 * (i + 1) * torch.randn(target.shape, generator=g)).clamp(0, 1), target


def test_metric_deduplicates_repeated_indices():
    pairs = [_image(i) for i in range(4)]
    metric = ImageQualityMetrics("dehazeformer")
    for idx in ([0, 1], [2, 3], [3, 0]):  # the last batch repeats 3 and 0, as DistributedSampler padding does
        out = torch.cat([pairs[i][0] for i in idx])
        tgt = torch.cat([pairs[i][1] for i in idx])
        metric.update(out, tgt, torch.tensor(idx))
    psnr = torch.cat([compute_psnr(*p) for p in pairs])
    ssim = torch.cat([compute_ssim(*p) for p in pairs])
    result = metric.compute()
    assert set(result) == {"psnr", "ssim"}
    assert result["psnr"].item() == pytest.approx(psnr.mean().item(), abs=1e-12)
    assert result["ssim"].item() == pytest.approx(ssim.mean().item(), abs=1e-12)
    rows = metric.per_image()
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["psnr"] for r in rows] == pytest.approx(psnr.tolist(), abs=1e-12)


def test_metric_keeps_first_value_of_a_repeated_index():
    metric = ImageQualityMetrics("basicsr", metrics=["psnr"], crop_border=1)
    target = torch.full((1, 3, 16, 16), 0.5)
    metric.update(target + 0.1, target, [7])
    metric.update(target + 0.3, target, [7])
    rows = metric.per_image()
    assert len(rows) == 1 and set(rows[0]) == {"index", "psnr"}
    assert rows[0]["psnr"] == pytest.approx(compute_psnr(target + 0.1, target, "basicsr").item())
    assert metric.compute()["psnr"].item() == pytest.approx(rows[0]["psnr"])
    assert metric.describe() == describe_protocol("basicsr", crop_border=1)


def test_metric_validates_configuration():
    with pytest.raises(ValueError, match="subset"):
        ImageQualityMetrics("dehazeformer", metrics=["lpips"])
    with pytest.raises(TypeError, match="must be int"):
        ImageQualityMetrics("basicsr", crop_border=True)
    with pytest.raises(ValueError, match="indices"):
        ImageQualityMetrics().update(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), [0])


def _ddp_worker(rank: int, world_size: int, init_file: str) -> None:
    # The parent already used OpenMP, which is not fork-safe: a forked child that starts a parallel region
    # hangs. One thread keeps the child out of it.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset_size = 5
        sampler = torch.utils.data.DistributedSampler(range(dataset_size), num_replicas=world_size, rank=rank,
                                                      shuffle=False)
        indices = list(sampler)  # rank 0: [0, 2, 4]; rank 1: [1, 3, 0] (0 repeated as padding)
        metric = ImageQualityMetrics("dehazeformer")
        for i in indices:
            metric.update(*_image(i), [i])
        result = metric.compute()
        rows = metric.per_image()
        pairs = [_image(i) for i in range(dataset_size)]
        expected = torch.cat([compute_psnr(*p) for p in pairs])
        assert [r["index"] for r in rows] == list(range(dataset_size))
        assert abs(result["psnr"].item() - expected.mean().item()) < 1e-12
        # The naive mean over the 6 gathered samples differs: padding would have been counted.
        assert abs(result["psnr"].item() - torch.cat([expected, expected[:1]]).mean().item()) > 1e-6
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metric_under_ddp_with_padded_sampler(tmp_path):
    # fork, not spawn: re-importing torch in fresh interpreters costs ~20 s on a small CI machine.
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "dist_init")), nprocs=2, join=True,
                       start_method="fork")
