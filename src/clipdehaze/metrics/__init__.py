"""Image-quality metrics under explicit, documented evaluation protocols (DehazeFormer, BasicSR)."""

from clipdehaze.metrics.image_metrics import ImageQualityMetrics
from clipdehaze.metrics.protocols import (
    PROTOCOLS,
    MetricProtocol,
    compute_psnr,
    compute_ssim,
    dehazeformer_down_ratio,
    describe_protocol,
    get_protocol,
    list_protocols,
    rgb_to_y_bt601,
)

__all__ = [
    "PROTOCOLS",
    "ImageQualityMetrics",
    "MetricProtocol",
    "compute_psnr",
    "compute_ssim",
    "dehazeformer_down_ratio",
    "describe_protocol",
    "get_protocol",
    "list_protocols",
    "rgb_to_y_bt601",
]
