"""Image-quality metrics under explicit, documented evaluation protocols (DehazeFormer, BasicSR), one registered
metric per file (:mod:`clipdehaze.metrics.registry`)."""

from clipdehaze.metrics.image_metrics import ImageQualityMetrics
from clipdehaze.metrics.protocols import (
    PROTOCOLS,
    MetricProtocol,
    compute_metric,
    compute_psnr,
    compute_ssim,
    dehazeformer_down_ratio,
    describe_protocol,
    get_protocol,
    list_protocols,
    rgb_to_y_bt601,
)
from clipdehaze.metrics.registry import (
    MetricSpec,
    get_metric,
    list_metrics,
    metric_display,
    nan_reason,
    register_metric,
)

#: What images without ground truth are scored with unless ``metrics=`` says otherwise (``metrics=no_reference``).
NO_REFERENCE_METRICS = ("niqe", "brisque", "dark_channel")

__all__ = [
    "NO_REFERENCE_METRICS",
    "PROTOCOLS",
    "ImageQualityMetrics",
    "MetricProtocol",
    "MetricSpec",
    "compute_metric",
    "compute_psnr",
    "compute_ssim",
    "dehazeformer_down_ratio",
    "describe_protocol",
    "get_metric",
    "get_protocol",
    "list_metrics",
    "list_protocols",
    "metric_display",
    "nan_reason",
    "register_metric",
    "rgb_to_y_bt601",
]
