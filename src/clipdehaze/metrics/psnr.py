"""PSNR under each protocol of :mod:`clipdehaze.metrics.protocols` (whose docstring gives both definitions)."""

from __future__ import annotations

import torch
from torch import Tensor

from clipdehaze.metrics.protocols import _basicsr_prepare
from clipdehaze.metrics.registry import register_metric


@register_metric("psnr", reference=True, higher_is_better=True, label="PSNR (dB)", digits=2, protocol="dehazeformer")
def dehazeformer_psnr(output: Tensor, target: Tensor) -> Tensor:
    out = output.detach().clamp(0, 1).double()
    mse = (out - target.detach().double()).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


@register_metric("psnr", reference=True, higher_is_better=True, label="PSNR (dB)", digits=2, protocol="basicsr",
                 options=("crop_border", "test_y_channel"))
def basicsr_psnr(output: Tensor, target: Tensor, crop_border: int = 0, test_y_channel: bool = False) -> Tensor:
    out = _basicsr_prepare(output, crop_border, test_y_channel)
    tgt = _basicsr_prepare(target, crop_border, test_y_channel)
    mse = (out - tgt).square().flatten(1).mean(1)
    # 255² / 0 -> inf -> log10 -> inf: BasicSR's ``float('inf')`` for identical images.
    return 10 * torch.log10(255.0**2 / mse)
