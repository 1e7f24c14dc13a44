"""Natural-scene-statistics steps shared by NIQE and BRISQUE, as the LIVE MATLAB releases compute them.

Written from the definitions in the LIVE releases (niqe_release: ``computequality.m``, ``computefeature.m``,
``estimateaggdparam.m``; BRISQUE_release: ``brisque_feature.m``, ``estimateggdparam.m``) and MATLAB's documented
``rgb2gray`` and ``imresize``; every step runs in float64 like MATLAB's ``double``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, special
from torch import Tensor

# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]) (NTSC luma).
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
# The MATLAB releases' shape-parameter grid, 0.2:0.001:10.
_GAM = 0.2 + 0.001 * np.arange(9801)
_GAMMA_1, _GAMMA_2, _GAMMA_3 = special.gamma(1 / _GAM), special.gamma(2 / _GAM), special.gamma(3 / _GAM)
#: r(γ) of the asymmetric generalized Gaussian (estimateaggdparam.m).
R_AGGD = _GAMMA_2**2 / (_GAMMA_1 * _GAMMA_3)
#: ρ(γ) of the generalized Gaussian (estimateggdparam.m).
R_GGD = _GAMMA_1 * _GAMMA_3 / _GAMMA_2**2


def gray_levels(images: Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) float RGB in [0, 1] -> per image the float64 (H, W) array the releases work on: the uint8
    image a PNG would hold (``round(255 x)``), then MATLAB ``rgb2gray`` on uint8 (rounded back to uint8), then
    ``double``. A one-channel image is taken as gray levels as they are."""
    levels = (images.detach().float().clamp(0, 1) * 255).round().cpu().double().numpy()
    if levels.shape[1] == 1:
        return [img[0] for img in levels]
    if levels.shape[1] != 3:
        raise ValueError(f"expected RGB or gray images, got {levels.shape[1]} channels")
    # MATLAB rounds half away from zero on uint8 conversion; np.round rounds half to even.
    return [np.floor(np.tensordot(_RGB2GRAY, img, axes=1) + 0.5).clip(0, 255) for img in levels]


def gaussian_window() -> np.ndarray:
    """``fspecial('gaussian', 7, 7/6)`` normalised to sum 1, as both releases build it."""
    x = np.arange(7) - 3.0
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (7 / 6) ** 2))
    return g / g.sum()


def mscn(image: np.ndarray, border: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean-subtracted contrast-normalised coefficients ``(I - μ) / (σ + 1)`` and σ, the local statistics taken
    with :func:`gaussian_window`: ``border="replicate"`` is NIQE's ``imfilter(..., 'replicate')``, ``"zero"``
    BRISQUE's ``filter2(..., 'same')``.

    ``I - μ`` is summed as ``Σ w_k (I(x) - I(x + k))``, equal in exact arithmetic, so it is exactly 0 on flat
    regions. Written as ``I - Σ w_k I(x + k)`` it is rounding noise there (the weights do not sum to exactly 1 in
    floating point), and the AGGD fits count every such value as negative or positive: on an image with large flat
    areas the score then depends on the noise's sign (TID2013 I19 of pyiqa's calibration set: 31 % of the pixels,
    NIQE 9.13 with the noise, 8.67 without, MATLAB's release 8.64).
    """
    pad = {"replicate": "edge", "zero": "constant"}[border]
    window = gaussian_window()
    height, width = image.shape
    padded = np.pad(image, 3, mode=pad)
    centred = np.zeros_like(image)
    for i in range(7):
        for j in range(7):
            centred += window[i, j] * (image - padded[i:i + height, j:j + width])
    mu = image - centred
    mean_sq = ndimage.correlate(image * image, window, mode={"edge": "nearest", "constant": "constant"}[pad], cval=0.0)
    sigma = np.sqrt(np.abs(mean_sq - mu * mu))
    return centred / (sigma + 1), sigma


def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return ((1.5 * a**3 - 2.5 * a**2 + 1) * (a <= 1)
            + (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def _resize_weights(in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB imresize's ``contributions`` for the bicubic kernel with antialiasing (scale < 1 widens it)."""
    out_len = math.ceil(in_len * scale)
    kernel_scale = min(scale, 1.0)
    width = 4.0 / kernel_scale
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    index = left[:, None] + np.arange(taps)[None, :]
    weights = kernel_scale * _cubic(kernel_scale * (u[:, None] - index))
    weights /= weights.sum(1, keepdims=True)
    # Out-of-range taps read the mirrored image (MATLAB's symmetric index wrap).
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    index = mirror[np.mod(index - 1, 2 * in_len).astype(np.int64)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], index[:, keep]


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` (bicubic, antialiasing on) of a double image: rows first, then columns
    (MATLAB's order for equal scales); no rounding or clamping, as for a double input."""
    out = image
    for axis in (0, 1):
        weights, index = _resize_weights(out.shape[axis], scale)
        moved = np.moveaxis(out, axis, 0)
        out = np.moveaxis(np.einsum("ot,ot...->o...", weights, moved[index]), 0, axis)
    return out


def aggd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``estimateaggdparam.m`` along the last axis: (shape α, left std, right std) per row. Rows without negative
    (or positive) values give NaN stds and α = 0.2, as MATLAB's ``min`` over an all-NaN vector picks the first."""
    neg, pos = values < 0, values > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((values**2 * neg).sum(-1) / neg.sum(-1))
        right = np.sqrt((values**2 * pos).sum(-1) / pos.sum(-1))
        gammahat = left / right
        rhat = np.abs(values).mean(-1) ** 2 / (values**2).mean(-1)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    alpha = _GAM[np.argmin((R_AGGD[None, :] - rhatnorm[..., None]) ** 2, axis=-1)]
    return alpha, left, right


def ggd(values: np.ndarray) -> tuple[float, float]:
    """``estimateggdparam.m``: (shape α, std) of a zero-mean generalized Gaussian fitted to ``values``. All-zero
    values (a constant image) give ρ = 0/0 = NaN and α = 0.2, as MATLAB's ``min`` over NaNs picks the first."""
    sigma_sq = float(np.mean(values**2))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.float64(sigma_sq) / np.float64(np.mean(np.abs(values))) ** 2
    return float(_GAM[np.argmin(np.abs(rho - R_GGD))]), math.sqrt(sigma_sq)


def flat_reason(image: np.ndarray) -> str | None:
    """Why a gray image (the releases' ``double(rgb2gray(...))``) gives NIQE and BRISQUE no statistics, when it is
    constant; None otherwise."""
    if image.size and image.min() == image.max():
        return f"the image is constant (every gray level {image.flat[0]:g}; natural-scene statistics need texture)"
    return None


def gamma(x: np.ndarray | float) -> np.ndarray:
    return special.gamma(x)
