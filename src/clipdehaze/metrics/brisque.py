"""BRISQUE, the Blind/Referenceless Image Spatial Quality Evaluator (Mittal, Moorthy and Bovik, "No-Reference Image
Quality Assessment in the Spatial Domain", IEEE TIP 2012), as the LIVE MATLAB release computes it
(``brisquescore.m``: ``brisque_feature.m``, then LIBSVM ``svm-scale -r allrange`` and ``svm-predict -b 1 ...
allmodel``).

Protocol: the uint8 image (``round(255 x)``), MATLAB ``rgb2gray``; at two scales (the second after MATLAB
``imresize(·, 0.5)``) the MSCN coefficients (7×7 Gaussian, σ 7/6, zero border) give a GGD fit (shape, variance)
and AGGD fits of the products with 4 neighbours (wrapped around the image): 36 features, written with ``%f``
(6 decimals) as the release writes them for LIBSVM, scaled by ``allrange`` (linearly, [min, max] -> [-1, 1], not clipped) (``svm-scale`` writes
``%g``: 6 significant digits) and scored by the ε-SVR ``allmodel`` (RBF kernel): the release's standard model,
trained on the whole LIVE IQA database. Typically 0 (best) to 100 (worst); lower is better. A constant image (its
fits divide 0 by 0, as MATLAB's do) or one too small for them scores NaN, with the reason (:func:`explain_nan`).

``data/brisque_allmodel`` and ``data/brisque_allrange`` are the release's ``allmodel`` and ``allrange`` (see
``data/NOTICE.md``). The PyPI ``brisque`` 0.2.0 wheel ships a different, retrained model (774 vs 770 support
vectors, other ranges): it does not reproduce the release's numbers.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clipdehaze.metrics._nss import aggd, flat_reason, gamma, ggd, gray_levels, imresize, mscn
from clipdehaze.metrics.registry import register_metric

DATA = Path(__file__).with_name("data")
# MATLAB circshift shifts of brisque_feature.m (row, column).
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


@lru_cache(maxsize=1)
def svr_model() -> tuple[np.ndarray, np.ndarray, float, float]:
    """``allmodel`` (LIBSVM text format) -> (support vectors (n, 36), coefficients (n,), γ, ρ)."""
    path = DATA / "brisque_allmodel"
    header, vectors, coefs = {}, [], []
    with open(path) as f:
        for line in f:
            if line.strip() == "SV":
                break
            key, _, value = line.partition(" ")
            header[key] = value.strip()
        for line in f:
            coef, *entries = line.split()
            row = np.zeros(36)
            for entry in entries:
                index, value = entry.split(":")
                row[int(index) - 1] = float(value)
            coefs.append(float(coef))
            vectors.append(row)
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf" \
            or len(vectors) != int(header.get("total_sv", -1)):
        raise ValueError(f"{path}: not the release's ε-SVR RBF model")
    return np.stack(vectors), np.array(coefs), float(header["gamma"]), float(header["rho"])


@lru_cache(maxsize=1)
def feature_ranges() -> tuple[float, float, np.ndarray, np.ndarray]:
    """``allrange`` (``svm-scale`` range file) -> (lower, upper, feature minima, feature maxima)."""
    lines = (DATA / "brisque_allrange").read_text().split("\n")
    lower, upper = map(float, lines[1].split())
    rows = np.array([[float(v) for v in line.split()[1:]] for line in lines[2:] if line.strip()])
    return lower, upper, rows[:, 0], rows[:, 1]


def brisque_features(image: np.ndarray) -> np.ndarray:
    """``brisque_feature.m`` of one float64 gray image on the [0, 255] scale -> (36,)."""
    feats = []
    for _ in range(2):
        structdis, _sigma = mscn(image, border="zero")
        alpha, std = ggd(structdis.ravel())
        feats += [alpha, std**2]
        for shift in _SHIFTS:
            pair = (structdis * np.roll(structdis, shift, axis=(0, 1))).ravel()[None]
            alpha, left, right = (float(v[0]) for v in aggd(pair))
            const = np.sqrt(gamma(1 / alpha)) / np.sqrt(gamma(3 / alpha))
            feats += [alpha, (right - left) * gamma(2 / alpha) / gamma(1 / alpha) * const, left**2, right**2]
        image = imresize(image, 0.5)
    return np.array(feats, dtype=np.float64)


def _significant(values: np.ndarray, digits: int = 6) -> np.ndarray:
    """C's ``%g``: ``digits`` significant digits."""
    return np.array([float(f"{v:.{digits}g}") for v in values])


def brisque_gray(image: np.ndarray) -> float:
    feats = np.round(brisque_features(image), 6)   # fprintf('%d:%f ', ...)
    if not np.isfinite(feats).all():
        return float("nan")
    lower, upper, lo, hi = feature_ranges()
    scaled = _significant(lower + (upper - lower) * (feats - lo) / (hi - lo))
    vectors, coefs, gamma_rbf, rho = svr_model()
    kernel = np.exp(-gamma_rbf * ((vectors - scaled) ** 2).sum(1))
    return float(coefs @ kernel - rho)


def explain_nan(output: Tensor) -> str:
    """Why BRISQUE is NaN on ``output`` (1, C, H, W): a constant image, else an image too small or too flat for
    its fits."""
    image = gray_levels(output[:1])[0]
    h, w = image.shape
    return flat_reason(image) or (
        f"the image is too small or too flat ({w}x{h}, WxH; BRISQUE's fits need positive and negative normalised "
        "contrast and neighbour products at both scales)")


@register_metric("brisque", reference=False, higher_is_better=False, label="BRISQUE", digits=2,
                 describe="BRISQUE (Mittal et al. 2012; LIVE MATLAB release brisquescore.m: uint8 -> rgb2gray, "
                          "2 scales, standard LIVE allmodel/allrange ε-SVR; lower is better)", explain=explain_nan)
def brisque(output: Tensor) -> Tensor:
    return torch.tensor([brisque_gray(img) for img in gray_levels(output)], dtype=torch.float64)
