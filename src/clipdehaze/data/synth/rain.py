"""Rain streaks as in the Rain100L/H recipe: sparse random drops motion-blurred by a line kernel at a common
slant, in several layers of different density, length and brightness, screen-blended onto the photo, plus a light
veil (distant rain reads as mist)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from clipdehaze.data.synth.primitives import add_veil, check_ranges, line_kernel


@dataclass(frozen=True)
class RainConfig:
    """Distribution of rain-streak parameters; one draw per image (lengths are fractions of the short side).

    Attributes:
        layers: number of streak layers, drawn from this inclusive range (near rain and far rain).
        density_range: fraction of pixels seeding a streak, per layer.
        length_range: streak length, per layer.
        angle_range: common slant in degrees from vertical; each layer deviates by up to ``angle_jitter``.
        intensity_range: streak brightness (before the screen blend), per layer.
        width_sigma: Gaussian blur of the streaks in px (their width and anti-aliasing).
        veil_range, light_range: ``1 - t`` and airlight of the mist veil.
    """

    layers: tuple[int, int] = (1, 3)
    density_range: tuple[float, float] = (0.002, 0.012)
    length_range: tuple[float, float] = (0.04, 0.15)
    angle_range: tuple[float, float] = (-30.0, 30.0)
    angle_jitter: float = 6.0
    intensity_range: tuple[float, float] = (0.4, 0.9)
    width_sigma: tuple[float, float] = (0.4, 1.0)
    veil_range: tuple[float, float] = (0.0, 0.15)
    light_range: tuple[float, float] = (0.7, 0.95)

    def __post_init__(self):
        check_ranges(self, ("layers", "density_range", "length_range", "angle_range", "intensity_range",
                             "width_sigma", "veil_range", "light_range"))
        if self.layers[0] < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")


def add_rain(clean: np.ndarray, rng: np.random.Generator, config: RainConfig = RainConfig()) -> tuple[np.ndarray, dict]:
    """Rain streaks on a clean HWC float RGB image in [0, 1]; returns ``(rainy, params)``.

    Each layer: Bernoulli(density) drops of random brightness, convolved with a line kernel (motion blur),
    blurred by ``width_sigma``, scaled by the layer intensity and screen-blended (``1 - (1 - I)(1 - S)``, light
    adds to the scene as real streaks do and never exceeds 1); then the mist veil.
    """
    c = config
    h, w = clean.shape[:2]
    side = min(h, w)
    angle = float(rng.uniform(*c.angle_range))
    out = clean.astype(np.float32)
    layers = []
    for _ in range(int(rng.integers(c.layers[0], c.layers[1] + 1))):
        density = float(rng.uniform(*c.density_range))
        length = float(rng.uniform(*c.length_range)) * side
        layer_angle = angle + float(rng.uniform(-c.angle_jitter, c.angle_jitter))
        intensity = float(rng.uniform(*c.intensity_range))
        drops = (rng.random((h, w)) < density) * rng.uniform(0.5, 1.0, (h, w))
        streaks = signal.fftconvolve(drops, line_kernel(length, layer_angle), mode="same")
        streaks = ndimage.gaussian_filter(streaks, float(rng.uniform(*c.width_sigma)))
        s_layer = np.clip(streaks * intensity, 0.0, 1.0).astype(np.float32)[..., None]
        out = 1.0 - (1.0 - out) * (1.0 - s_layer)
        layers.append({"density": round(density, 6), "length_px": round(length, 2), "angle": round(layer_angle, 2),
                       "intensity": round(intensity, 4)})
    out, veil = add_veil(out, rng, c.veil_range, c.light_range)
    return np.clip(out, 0.0, 1.0).astype(np.float32), {"layers": layers, "veil": round(veil, 6)}
