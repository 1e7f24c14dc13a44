"""SSIM under each protocol of :mod:`clipdehaze.metrics.protocols` (whose docstring gives both definitions)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from clipdehaze.metrics.protocols import _basicsr_prepare, _ssim, dehazeformer_down_ratio
from clipdehaze.metrics.registry import register_metric


@register_metric("ssim", reference=True, higher_is_better=True, label="SSIM", digits=4, protocol="dehazeformer")
def dehazeformer_ssim(output: Tensor, target: Tensor) -> Tensor:
    height, width = output.shape[-2:]
    r = dehazeformer_down_ratio(height, width)
    size = (int(height / r), int(width / r))
    out = F.adaptive_avg_pool2d(output.detach().clamp(0, 1).double(), size)
    tgt = F.adaptive_avg_pool2d(target.detach().double(), size)
    return _ssim(out, tgt, data_range=1.0, skip_short_dims=True)


@register_metric("ssim", reference=True, higher_is_better=True, label="SSIM", digits=4, protocol="basicsr",
                 options=("crop_border", "test_y_channel"))
def basicsr_ssim(output: Tensor, target: Tensor, crop_border: int = 0, test_y_channel: bool = False) -> Tensor:
    out = _basicsr_prepare(output, crop_border, test_y_channel)
    tgt = _basicsr_prepare(target, crop_border, test_y_channel)
    return _ssim(out, tgt, data_range=255.0, skip_short_dims=False)
