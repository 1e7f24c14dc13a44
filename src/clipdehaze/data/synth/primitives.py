"""Pieces of image formation that several weather kinds share: a uniform veil, a motion-blur line kernel, and the
range check of their config classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def check_ranges(config: Any, names: Sequence[str]) -> None:
    for name in names:
        lo, hi = getattr(config, name)
        if lo > hi:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")


def add_veil(img: np.ndarray, rng: np.random.Generator, veil_range: tuple[float, float],
             light_range: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Uniform veil ``I t + A (1 - t)`` with ``1 - t ~ U(veil_range)`` and grey ``A ~ U(light_range)``."""
    veil = float(rng.uniform(*veil_range))
    light = float(rng.uniform(*light_range))
    return img * (1.0 - veil) + light * veil, veil


def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Binary motion-blur kernel: a 1-px line of ``length`` px, ``angle_deg`` clockwise from vertical."""
    n = max(1, int(round(length)))
    k = n if n % 2 else n + 1
    c = (k - 1) / 2
    t = np.linspace(-(n - 1) / 2, (n - 1) / 2, 2 * n)
    a = np.deg2rad(angle_deg)
    kernel = np.zeros((k, k), np.float32)
    kernel[np.round(c + t * np.cos(a)).astype(int), np.round(c + t * np.sin(a)).astype(int)] = 1.0
    return kernel
