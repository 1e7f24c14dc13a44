"""PSNR / SSIM evaluation protocols, reproduced from the evaluation code the papers' numbers come from.

Dehazing papers report PSNR/SSIM under two incompatible protocols, and the difference (float vs uint8,
RGB vs Y, pooled vs full-resolution SSIM) can be as large as the gaps between methods, so every number
this package prints names its protocol (:func:`describe_protocol`).

``dehazeformer``
    ``test.py`` of IDKiro/DehazeFormer (Song et al., "Vision Transformers for Single Image Dehazing",
    TIP 2023), the protocol of DehazeFormer and of the code bases derived from it:

    * the network output is clamped (upstream: to [-1, 1] before mapping to [0, 1], i.e. to [0, 1] here);
      the target is used as loaded;
    * PSNR = 10·log10(1 / MSE) per image on float RGB in [0, 1];
    * SSIM = ``pytorch_msssim.ssim(..., data_range=1, size_average=False)`` (VainF/pytorch-msssim: separable
      Gaussian window 11, σ 1.5, K = (0.01, 0.03), 'valid' convolution without padding, mean over
      pixels then channels) after both images are average-pooled with ``F.adaptive_avg_pool2d`` to
      ``(int(H / r), int(W / r))``, ``r = max(1, round(min(H, W) / 256))`` (Python ``round``: half to even,
      so min side 384 -> r 2, 640 -> r 2). pytorch_msssim skips the Gaussian along a dimension shorter than
      the window (with a warning) instead of failing; that is reproduced here, silently;
    * averages are over images (each image weighs the same whatever its size);
    * evaluated in float64 here (upstream: float32), which moves values by far less than the printed digits.

``basicsr``
    ``basicsr/metrics/psnr_ssim.py`` of XPixelGroup/BasicSR (``calculate_psnr`` / ``calculate_ssim`` on the
    uint8 images ``tensor2img`` writes), the protocol of BasicSR-derived restoration codebases:

    * both images are clamped to [0, 1] and quantised to ``round(x * 255)`` (float32 arithmetic, as
      ``tensor2img`` does, then uint8 levels);
    * ``crop_border`` pixels are removed on each side;
    * with ``test_y_channel`` the BT.601 luma of ``bgr2ycbcr(..., y_only=True)`` is used, unrounded:
      Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B = level / 255 (BasicSR evaluates it in float32;
      float64 here, a difference far below the printed precision);
    * PSNR = 10·log10(255² / MSE) in float64; ``inf`` for identical images, as BasicSR returns;
    * SSIM = BasicSR ``_ssim`` per channel, then the channel mean: 11×11 Gaussian σ 1.5 (the outer product of
      ``cv2.getGaussianKernel(11, 1.5)``; applied here as two 1-D passes, identical up to float64 rounding),
      'valid' window (``filter2D(...)[5:-5, 5:-5]``), C1 = (0.01·255)², C2 = (0.03·255)², float64. BasicSR
      returns NaN for an image smaller than the window; this raises instead.

All functions take float images (B, C, H, W) in [0, 1] and return float64 per-image values of shape (B,). The metric
functions themselves are registered per protocol in ``psnr.py`` and ``ssim.py`` (:mod:`clipdehaze.metrics.registry`);
this module holds the protocols' shared steps (pooling, quantisation, luma, the SSIM kernel) and their definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clipdehaze.metrics.registry import get_metric

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# BT.601 studio-swing luma weights for RGB in [0, 1] (BasicSR rgb2ycbcr / bgr2ycbcr, y_only=True).
_BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
_BT601_Y_OFFSET = 16.0


def _check_pair(output: Tensor, target: Tensor) -> None:
    if output.ndim != 4 or output.shape != target.shape:
        raise ValueError(f"expected two (B, C, H, W) images of one shape, got {tuple(output.shape)} "
                         f"and {tuple(target.shape)}")


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, *, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian, ``exp(-(i - (size-1)/2)² / 2σ²)`` — the kernel of both
    ``pytorch_msssim._fspecial_gauss_1d`` and ``cv2.getGaussianKernel`` (odd ``size``, σ > 0)."""
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _gaussian_filter_valid(x: Tensor, win: Tensor, skip_short_dims: bool) -> Tensor:
    """Depthwise separable Gaussian along H then W with no padding ('valid' output).

    ``skip_short_dims`` reproduces pytorch_msssim, which leaves a dimension shorter than the window unfiltered;
    otherwise such a dimension is an error (BasicSR would average an empty map).
    """
    channels, k = x.shape[1], win.numel()
    out = x
    for dim in (2, 3):
        if out.shape[dim] < k:
            if skip_short_dims:
                continue
            raise ValueError(f"image of size {tuple(x.shape[-2:])} is smaller than the {k}x{k} SSIM window")
        shape = [channels, 1, 1, 1]
        shape[dim] = k
        out = F.conv2d(out, win.reshape(1, 1, -1).expand(channels, 1, k).reshape(shape), groups=channels)
    return out


def _ssim(x: Tensor, y: Tensor, data_range: float, skip_short_dims: bool) -> Tensor:
    """Per-image SSIM (Wang et al., TIP 2004), Gaussian-weighted, averaged over pixels and channels."""
    c = x.shape[1]
    win = gaussian_window_1d(dtype=x.dtype, device=x.device)
    # One grouped convolution for the five local moments instead of five separate passes.
    moments = _gaussian_filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), win, skip_short_dims)
    mu1, mu2, e11, e22, e12 = moments.split(c, dim=1)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu1_mu2 = mu1 * mu2
    mu1_sq, mu2_sq = mu1.square(), mu2.square()
    cs_map = (2 * (e12 - mu1_mu2) + c2) / ((e11 - mu1_sq) + (e22 - mu2_sq) + c2)
    ssim_map = (2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1) * cs_map
    return ssim_map.flatten(2).mean(-1).mean(-1)


# --------------------------------------------------------------------------------------------- dehazeformer
def dehazeformer_down_ratio(height: int, width: int) -> int:
    """SSIM pooling ratio of DehazeFormer's test.py: ``max(1, round(min(H, W) / 256))`` (Python round)."""
    return max(1, round(min(height, width) / 256))


def _describe_dehazeformer() -> str:
    return ("DehazeFormer protocol: per-image PSNR on float RGB [0,1] (output clamped); SSIM (Gaussian 11, "
            "σ 1.5, valid window) after avg-pool by r = max(1, round(min(H,W)/256)); mean over images")


# --------------------------------------------------------------------------------------------- basicsr
def rgb_to_y_bt601(levels: Tensor) -> Tensor:
    """BT.601 luma on the [0, 255] scale (BasicSR ``bgr2ycbcr(y_only=True)``), unrounded.

    Args:
        levels: (B, 3, H, W) RGB on the [0, 255] scale.
    Returns:
        (B, 1, H, W): ``16 + (65.481 R + 128.553 G + 24.966 B)`` with R, G, B = levels / 255.
    """
    if levels.shape[1] != 3:
        raise ValueError(f"the Y channel needs RGB input, got {levels.shape[1]} channels")
    weights = torch.tensor(_BT601_Y_WEIGHTS, dtype=levels.dtype, device=levels.device).view(1, 3, 1, 1)
    return (levels / 255 * weights).sum(1, keepdim=True) + _BT601_Y_OFFSET


def _basicsr_prepare(img: Tensor, crop_border: int, test_y_channel: bool) -> Tensor:
    # tensor2img: clamp, scale and round in float32, then uint8 levels.
    levels = (img.detach().float().clamp(0, 1) * 255.0).round().double()
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        height, width = levels.shape[-2:]
        if 2 * crop_border >= min(height, width):
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {height}x{width} image")
        levels = levels[..., crop_border:-crop_border, crop_border:-crop_border]
    return rgb_to_y_bt601(levels) if test_y_channel else levels


def _describe_basicsr(crop_border: int = 0, test_y_channel: bool = False) -> str:
    channel = "Y channel (BT.601)" if test_y_channel else "RGB"
    return (f"BasicSR protocol: uint8 round(x·255), {channel}, crop border {crop_border}; PSNR 10·log10(255²/MSE) "
            "in float64; SSIM (Gaussian 11, σ 1.5, valid window, per channel then mean); mean over images")


# --------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class MetricProtocol:
    """One evaluation protocol: the metrics it computes (names in :mod:`clipdehaze.metrics.registry`, each with its
    implementation for this protocol), the options those implementations accept, and the line that says how."""

    name: str
    source: str
    metrics: tuple[str, ...]
    describe: Callable[..., str]
    options: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults merged with ``opts``; unknown options are an error so a config typo cannot pass silently."""
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise TypeError(f"protocol {self.name!r} got unknown options {unknown}; valid options: {valid}")
        resolved = {**self.options, **opts}
        for key, default in self.options.items():
            value = resolved[key]
            # bool is an int subclass, and bool("false") is True: demand the exact type instead of coercing.
            if type(value) is not type(default):
                raise TypeError(f"protocol {self.name!r} option {key!r} must be {type(default).__name__}, "
                                f"got {value!r}")
        return resolved


PROTOCOLS: Mapping[str, MetricProtocol] = MappingProxyType({
    "dehazeformer": MetricProtocol(
        name="dehazeformer",
        source="IDKiro/DehazeFormer test.py + VainF/pytorch-msssim ssim()",
        metrics=("psnr", "ssim"),
        describe=_describe_dehazeformer,
    ),
    "basicsr": MetricProtocol(
        name="basicsr",
        source="XPixelGroup/BasicSR basicsr/metrics/psnr_ssim.py (calculate_psnr, calculate_ssim)",
        metrics=("psnr", "ssim"),
        describe=_describe_basicsr,
        options={"crop_border": 0, "test_y_channel": False},
    ),
})


def list_protocols() -> list[str]:
    """Names of the available protocols."""
    return sorted(PROTOCOLS)


def get_protocol(name: str) -> MetricProtocol:
    """The protocol registered as ``name``."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown metric protocol {name!r}; available: {', '.join(list_protocols())}") from None


def describe_protocol(name: str, **opts: Any) -> str:
    """One line that says how the numbers were computed, for printing beside every table."""
    protocol = get_protocol(name)
    return protocol.describe(**protocol.resolve(opts))


def compute_metric(name: str, output: Tensor, target: Tensor | None = None, protocol: str | None = "dehazeformer",
                   **opts: Any) -> Tensor:
    """Per-image values of the registered metric ``name`` under ``protocol`` (its options checked by the protocol);
    float images (B, C, H, W) in [0, 1] -> float64 (B,). A no-reference metric ignores ``target``."""
    options = get_protocol(protocol).resolve(opts) if protocol is not None else {}
    if protocol is None and opts:
        raise TypeError(f"options {sorted(opts)} need a protocol")
    spec = get_metric(name, protocol)
    kwargs = {k: v for k, v in options.items() if k in spec.options}
    if not spec.reference:
        return spec.fn(output, **kwargs)
    if target is None:
        raise ValueError(f"metric {name!r} compares with the ground truth, and none was given")
    _check_pair(output, target)
    return spec.fn(output, target, **kwargs)


def compute_psnr(output: Tensor, target: Tensor, protocol: str = "dehazeformer", **opts: Any) -> Tensor:
    """Per-image PSNR (dB) under ``protocol``; float images (B, C, H, W) in [0, 1] -> float64 (B,)."""
    return compute_metric("psnr", output, target, protocol, **opts)


def compute_ssim(output: Tensor, target: Tensor, protocol: str = "dehazeformer", **opts: Any) -> Tensor:
    """Per-image SSIM under ``protocol``; float images (B, C, H, W) in [0, 1] -> float64 (B,)."""
    return compute_metric("ssim", output, target, protocol, **opts)
