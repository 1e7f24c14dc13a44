"""Snow: flakes in several size layers (small ones many, large ones few), each a blurred disc, slightly
motion-blurred along the fall direction, alpha-composited in white, plus a slight veil."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from clipdehaze.data.synth.primitives import add_veil, check_ranges, line_kernel


@dataclass(frozen=True)
class SnowConfig:
    """Distribution of snow parameters; one draw per image (radii are fractions of the short side).

    Attributes:
        layers: number of flake-size layers, drawn from this inclusive range.
        radius_range: smallest and largest flake radius; layer radii are spread geometrically between them.
        density_range: flakes per pixel of the smallest layer; a layer of radius r has ``r_min / r`` as many.
        opacity_range: per-flake peak opacity.
        fall_angle_range: fall direction in degrees from vertical; flakes are motion-blurred along it.
        fall_blur_range: motion-blur length in flake radii.
        veil_range, light_range: ``1 - t`` and airlight of the snow veil.
    """

    layers: tuple[int, int] = (2, 3)
    radius_range: tuple[float, float] = (0.002, 0.015)
    density_range: tuple[float, float] = (0.002, 0.008)
    opacity_range: tuple[float, float] = (0.6, 1.0)
    fall_angle_range: tuple[float, float] = (-25.0, 25.0)
    fall_blur_range: tuple[float, float] = (0.0, 3.0)
    veil_range: tuple[float, float] = (0.0, 0.25)
    light_range: tuple[float, float] = (0.8, 1.0)

    def __post_init__(self):
        check_ranges(self, ("layers", "radius_range", "density_range", "opacity_range", "fall_angle_range",
                             "fall_blur_range", "veil_range", "light_range"))
        if self.layers[0] < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")


def add_snow(clean: np.ndarray, rng: np.random.Generator, config: SnowConfig = SnowConfig()) -> tuple[np.ndarray, dict]:
    """Snow on a clean HWC float RGB image in [0, 1]; returns ``(snowy, params)``.

    Each layer: flakes at uniform positions, rendered as Gaussian discs of the layer's radius with their peak at
    the flake's opacity, motion-blurred along the fall direction, alpha-composited in near-white; then the veil.
    """
    c = config
    h, w = clean.shape[:2]
    side = min(h, w)
    n_layers = int(rng.integers(c.layers[0], c.layers[1] + 1))
    lo, hi = c.radius_range
    radii = np.geomspace(lo, hi, n_layers) if n_layers > 1 else np.array([rng.uniform(lo, hi)])
    density = float(rng.uniform(*c.density_range))
    fall = float(rng.uniform(*c.fall_angle_range))
    out = clean.astype(np.float32)
    layers = []
    for r_frac in radii * rng.uniform(0.8, 1.25, len(radii)):
        r = max(float(r_frac) * side, 0.5)
        n = int(rng.poisson(density * h * w * lo / max(float(r_frac), lo)))
        flakes = np.zeros((h, w), np.float64)
        np.add.at(flakes, (rng.integers(0, h, n), rng.integers(0, w, n)), rng.uniform(*c.opacity_range, n))
        # A Gaussian of std r has peak 1 / (2 pi r^2): rescale so an isolated flake peaks at its opacity.
        alpha = ndimage.gaussian_filter(flakes, r) * (2 * np.pi * r * r)
        blur = float(rng.uniform(*c.fall_blur_range)) * r
        if blur >= 2:
            kernel = line_kernel(blur, fall)
            alpha = signal.fftconvolve(alpha, kernel / kernel.sum(), mode="same")
        alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)[..., None]
        white = float(rng.uniform(0.9, 1.0))
        out = out * (1.0 - alpha) + white * alpha
        layers.append({"radius_px": round(r, 3), "flakes": n, "fall_blur_px": round(blur, 3)})
    out, veil = add_veil(out, rng, c.veil_range, c.light_range)
    return np.clip(out, 0.0, 1.0).astype(np.float32), {"layers": layers, "fall_angle": round(fall, 2),
                                                      "veil": round(veil, 6)}
