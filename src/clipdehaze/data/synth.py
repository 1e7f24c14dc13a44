"""Synthetic degraded/clean pairs, and the small default dataset built from scikit-image's photos.

Haze follows the atmospheric scattering model used to synthesise RESIDE::

    I(x) = J(x) t(x) + A (1 - t(x)),    t(x) = exp(-beta(x) d(x))

with J the clean image, A the global atmospheric light and d a depth map. Clean photos have no depth,
so d comes from a simple prior (:func:`depth_map`). For *homogeneous* haze beta is one number per
image; for *non-homogeneous* haze (the NH-HAZE setting: patches of dense haze beside clearer areas)
beta is modulated per pixel by a smooth random density field (:func:`density_field`).

Everything random is drawn from ``numpy.random.Generator`` instances derived from the seed and the
source/split names, so a seed reproduces the files byte for byte regardless of processing order.

Adverse weather (the All-Weather setting of TransWeather / WeatherDiffusion) is synthesised in image space,
each kind at seeded random strengths (ranges in its config class):

* ``rain`` (:func:`add_rain`): rain streaks as in the Rain100L/H recipe -- sparse random drops motion-blurred
  by a line kernel at a common slant, in several layers of different density, length and brightness,
  screen-blended onto the photo, plus a light veil (distant rain reads as mist);
* ``snow`` (:func:`add_snow`): flakes in several size layers (small ones many, large ones few), each a blurred
  disc, slightly motion-blurred along the fall direction, alpha-composited in white, plus a slight veil;
* ``raindrop`` (:func:`add_raindrop`): drops on the lens as in the RainDrop dataset -- elliptical blobs showing an
  inverted, minified and defocused view of the scene around them (a water drop is a small lens out of the
  camera's focus), with a darker rim and a specular highlight;
* ``allweather``: one of haze/rain/snow/raindrop per image (uniformly), so a dataset mixes all four.

Degradation kinds live in :data:`DEGRADATIONS` (kind -> function, config class, input and target folder
names); a new kind is one function plus one entry. Haze keeps RESIDE/DehazeFormer's ``hazy/`` + ``GT/``; the
weather kinds use TransWeather's All-Weather folder names ``input/`` + ``gt/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, signal

from clipdehaze.data.io import load_image, save_image

__all__ = [
    "DEFAULT_RECIPES",
    "DEFAULT_SPLITS",
    "DEGRADATIONS",
    "DEPTH_PRIORS",
    "SYNTH_VERSION",
    "WEATHER_KINDS",
    "AllWeatherConfig",
    "Degradation",
    "HazeConfig",
    "RainConfig",
    "RaindropConfig",
    "SnowConfig",
    "SplitRecipe",
    "add_allweather",
    "add_haze",
    "add_rain",
    "add_raindrop",
    "add_snow",
    "apply_scattering",
    "default_cache_dir",
    "default_dataset_dir",
    "default_sources",
    "density_field",
    "depth_map",
    "ensure_default_dataset",
    "is_dataset_complete",
    "synthesize_dataset",
]

#: Part of the default dataset's directory name and of every meta.json: bump it whenever the recipe
#: or the generator changes output, so caches built by older code are not silently reused.
SYNTH_VERSION = "v1"

DEPTH_PRIORS = ("vertical", "radial", "constant", "luminance")

# Colour attenuation prior (Zhu, Mai & Shao, "A Fast Single Image Haze Removal Algorithm Using Color
# Attenuation Prior", TIP 2015): scene depth grows linearly with brightness (HSV value) and falls with
# saturation, d = t0 + t1*v + t2*s, with the coefficients the paper fitted on synthetic data.
_CAP_THETA = (0.121779, 0.959710, -0.780245)


@dataclass(frozen=True)
class HazeConfig:
    """Distribution of haze parameters; one draw per generated image.

    Attributes:
        beta_range: scattering coefficient beta ~ U(range). The default is RESIDE ITS's [0.6, 1.8].
        A_range: atmospheric light A ~ U(range) (RESIDE ITS: [0.7, 1.0]).
        A_color: tint — each channel of A is scaled by an independent U(1 - A_color, 1 + A_color)
            (then clipped to 1); 0 gives grey haze as in RESIDE.
        depth_priors: priors to choose from uniformly per image (see :func:`depth_map`).
        depth_range: the normalised depth prior is mapped linearly onto this range.
        nonhomogeneous: fraction of images whose beta varies per pixel.
        nh_blobs: number of Gaussian blobs in the density field, drawn from this inclusive range.
        nh_sigma: blob standard deviation as a fraction of the shorter image side.
        nh_density_range: the density field in [0, 1] is mapped onto this multiplier of beta, so the
            clearest patches get ``lo * beta`` and the densest ``hi * beta``.
    """

    beta_range: tuple[float, float] = (0.6, 1.8)
    A_range: tuple[float, float] = (0.7, 1.0)
    A_color: float = 0.0
    depth_priors: tuple[str, ...] = ("vertical", "radial", "luminance")
    depth_range: tuple[float, float] = (0.2, 1.0)
    nonhomogeneous: float = 0.5
    nh_blobs: tuple[int, int] = (3, 6)
    nh_sigma: tuple[float, float] = (0.15, 0.4)
    nh_density_range: tuple[float, float] = (0.2, 1.6)

    def __post_init__(self):
        unknown = [p for p in self.depth_priors if p not in DEPTH_PRIORS]
        if unknown or not self.depth_priors:
            raise ValueError(f"depth_priors must be a non-empty subset of {DEPTH_PRIORS}, got {self.depth_priors}")
        if not 0.0 <= self.nonhomogeneous <= 1.0:
            raise ValueError(f"nonhomogeneous is a fraction in [0, 1], got {self.nonhomogeneous}")
        for name in ("beta_range", "A_range", "depth_range", "nh_blobs", "nh_sigma", "nh_density_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")


def depth_map(image: np.ndarray, prior: str, depth_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A plausible (H, W) float32 depth for a clean HWC RGB image in [0, 1], scaled to ``depth_range``.

    Priors (normalised depth n in [0, 1], then ``lo + (hi - lo) * n``):

    * ``vertical`` — linear ramp, far (n=1) at the top row, near at the bottom: ground below, sky and
      horizon above, as in most outdoor photos.
    * ``radial`` — far at the image centre, near at the corners: a road or corridor receding to a
      central vanishing point.
    * ``constant`` — n = 1 everywhere (everything at ``hi``): uniform fog.
    * ``luminance`` — colour attenuation prior: brighter, less saturated pixels are farther (distant
      scenery looks washed out; sky is brightest and greyest). The per-pixel estimate is
      min-filtered and blurred so that depth follows regions, not texture, then min-max normalised.
    """
    h, w = image.shape[:2]
    if prior == "vertical":
        n = np.repeat(np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None], w, axis=1)
    elif prior == "radial":
        y, x = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32),
                           indexing="ij")
        n = 1.0 - np.sqrt(x * x + y * y) / np.sqrt(2.0, dtype=np.float32)
    elif prior == "constant":
        n = np.ones((h, w), np.float32)
    elif prior == "luminance":
        v = image.max(axis=2)
        s = np.where(v > 0, (v - image.min(axis=2)) / np.maximum(v, 1e-6), 0.0)
        t0, t1, t2 = _CAP_THETA
        raw = (t0 + t1 * v + t2 * s).astype(np.float32)
        side = min(h, w)
        raw = ndimage.minimum_filter(raw, size=max(3, side // 32), mode="nearest")
        raw = ndimage.gaussian_filter(raw, sigma=max(1.0, side / 32), mode="nearest")
        span = float(raw.max() - raw.min())
        n = (raw - raw.min()) / span if span > 1e-6 else np.ones_like(raw)
    else:
        raise ValueError(f"unknown depth prior {prior!r}; choose from {DEPTH_PRIORS}")
    lo, hi = depth_range
    return (lo + (hi - lo) * n).astype(np.float32)


def density_field(shape: tuple[int, int], rng: np.random.Generator, n_blobs: tuple[int, int] = (3, 6),
                  sigma: tuple[float, float] = (0.15, 0.4)) -> np.ndarray:
    """A smooth random (H, W) float32 field min-max normalised to [0, 1]: a sum of Gaussian blobs.

    Blob centres are uniform over the image, standard deviations ``U(sigma) * min(H, W)``, amplitudes
    U(0.3, 1). Wide blobs keep the field low-frequency, like the drifting patches of NH-HAZE.
    """
    h, w = shape
    side = min(h, w)
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    field = np.zeros((h, w), np.float64)
    for _ in range(int(rng.integers(n_blobs[0], n_blobs[1] + 1))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s = rng.uniform(*sigma) * side
        amp = rng.uniform(0.3, 1.0)
        # Separable: the 2-D Gaussian is the outer product of two 1-D ones.
        field += amp * np.outer(np.exp(-0.5 * ((ys - cy) / s) ** 2), np.exp(-0.5 * ((xs - cx) / s) ** 2))
    span = field.max() - field.min()
    field = (field - field.min()) / span if span > 0 else np.zeros_like(field)
    return field.astype(np.float32)


def apply_scattering(clean: np.ndarray, transmission: np.ndarray, airlight: np.ndarray | float) -> np.ndarray:
    """``I = J t + A (1 - t)`` for HWC ``clean``, (H, W) ``transmission`` and a scalar or (3,) ``airlight``."""
    t = transmission[..., None].astype(np.float32)
    a = np.asarray(airlight, np.float32)
    return (clean * t + a * (1.0 - t)).astype(np.float32)


def add_haze(clean: np.ndarray, rng: np.random.Generator, config: HazeConfig = HazeConfig()) -> tuple[np.ndarray, dict]:
    """Hazy version of a clean HWC float RGB image in [0, 1]; returns ``(hazy, params)``.

    ``params`` records what was drawn (beta, A, depth prior, whether non-homogeneous) plus the
    resulting transmission range, all JSON-serialisable, for meta.json.
    """
    c = config
    beta = float(rng.uniform(*c.beta_range))
    a = float(rng.uniform(*c.A_range))
    tint = rng.uniform(1.0 - c.A_color, 1.0 + c.A_color, size=3) if c.A_color > 0 else np.ones(3)
    airlight = np.minimum(a * tint, 1.0).astype(np.float32)
    prior = c.depth_priors[int(rng.integers(len(c.depth_priors)))]
    nonhomogeneous = bool(rng.uniform() < c.nonhomogeneous)

    depth = depth_map(clean, prior, c.depth_range)
    if nonhomogeneous:
        lo, hi = c.nh_density_range
        beta_map = beta * (lo + (hi - lo) * density_field(depth.shape, rng, c.nh_blobs, c.nh_sigma))
    else:
        beta_map = np.float32(beta)
    t = np.exp(-beta_map * depth).astype(np.float32)
    hazy = np.clip(apply_scattering(clean, t, airlight), 0.0, 1.0)
    params = {
        "beta": round(beta, 6),
        "A": [round(float(x), 6) for x in airlight],
        "depth_prior": prior,
        "nonhomogeneous": nonhomogeneous,
        "t_min": round(float(t.min()), 6),
        "t_mean": round(float(t.mean()), 6),
    }
    return hazy, params


def _check_ranges(config: Any, names: Sequence[str]) -> None:
    for name in names:
        lo, hi = getattr(config, name)
        if lo > hi:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")


def _veil(img: np.ndarray, rng: np.random.Generator, veil_range: tuple[float, float],
          light_range: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Uniform veil ``I t + A (1 - t)`` with ``1 - t ~ U(veil_range)`` and grey ``A ~ U(light_range)``."""
    veil = float(rng.uniform(*veil_range))
    light = float(rng.uniform(*light_range))
    return img * (1.0 - veil) + light * veil, veil


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Binary motion-blur kernel: a 1-px line of ``length`` px, ``angle_deg`` clockwise from vertical."""
    n = max(1, int(round(length)))
    k = n if n % 2 else n + 1
    c = (k - 1) / 2
    t = np.linspace(-(n - 1) / 2, (n - 1) / 2, 2 * n)
    a = np.deg2rad(angle_deg)
    kernel = np.zeros((k, k), np.float32)
    kernel[np.round(c + t * np.cos(a)).astype(int), np.round(c + t * np.sin(a)).astype(int)] = 1.0
    return kernel


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
        _check_ranges(self, ("layers", "density_range", "length_range", "angle_range", "intensity_range",
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
        streaks = signal.fftconvolve(drops, _line_kernel(length, layer_angle), mode="same")
        streaks = ndimage.gaussian_filter(streaks, float(rng.uniform(*c.width_sigma)))
        s_layer = np.clip(streaks * intensity, 0.0, 1.0).astype(np.float32)[..., None]
        out = 1.0 - (1.0 - out) * (1.0 - s_layer)
        layers.append({"density": round(density, 6), "length_px": round(length, 2), "angle": round(layer_angle, 2),
                       "intensity": round(intensity, 4)})
    out, veil = _veil(out, rng, c.veil_range, c.light_range)
    return np.clip(out, 0.0, 1.0).astype(np.float32), {"layers": layers, "veil": round(veil, 6)}


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
        _check_ranges(self, ("layers", "radius_range", "density_range", "opacity_range", "fall_angle_range",
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
            kernel = _line_kernel(blur, fall)
            alpha = signal.fftconvolve(alpha, kernel / kernel.sum(), mode="same")
        alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)[..., None]
        white = float(rng.uniform(0.9, 1.0))
        out = out * (1.0 - alpha) + white * alpha
        layers.append({"radius_px": round(r, 3), "flakes": n, "fall_blur_px": round(blur, 3)})
    out, veil = _veil(out, rng, c.veil_range, c.light_range)
    return np.clip(out, 0.0, 1.0).astype(np.float32), {"layers": layers, "fall_angle": round(fall, 2),
                                                      "veil": round(veil, 6)}


@dataclass(frozen=True)
class RaindropConfig:
    """Distribution of raindrop parameters; one draw per image (sizes are fractions of the short side).

    Attributes:
        drops_range: drops per 256x256 px of image area, drawn from this inclusive range.
        radius_range: drop radius; ``aspect_range`` stretches it vertically (drops run down the glass).
        defocus_range: Gaussian blur of the scene seen through the drops (drops are far out of focus).
        view_range: the drop shows an inverted view of the scene within this many drop radii (>1: minified).
        rim_range: darkening of the rim, ``1 - rim * d^4`` at normalised radius d.
        highlight_range: brightness of the specular highlight.
    """

    drops_range: tuple[int, int] = (8, 30)
    radius_range: tuple[float, float] = (0.02, 0.07)
    aspect_range: tuple[float, float] = (0.8, 1.4)
    defocus_range: tuple[float, float] = (0.006, 0.02)
    view_range: tuple[float, float] = (1.5, 3.0)
    rim_range: tuple[float, float] = (0.2, 0.5)
    highlight_range: tuple[float, float] = (0.15, 0.5)

    def __post_init__(self):
        _check_ranges(self, ("drops_range", "radius_range", "aspect_range", "defocus_range", "view_range",
                             "rim_range", "highlight_range"))


def add_raindrop(clean: np.ndarray, rng: np.random.Generator,
                 config: RaindropConfig = RaindropConfig()) -> tuple[np.ndarray, dict]:
    """Raindrops on the lens over a clean HWC float RGB image in [0, 1]; returns ``(degraded, params)``.

    Inside each elliptical drop the pixel shows the defocused scene at the point mirrored through the drop's
    centre and scaled by ``view`` (a drop is a small inverting lens with a wide field of view), darkened towards
    the rim; the drop edge is soft (the outer 15 % of the radius blends), and a Gaussian highlight sits up-left.
    """
    c = config
    h, w = clean.shape[:2]
    side = min(h, w)
    defocus = float(rng.uniform(*c.defocus_range)) * side
    seen = ndimage.gaussian_filter(clean, (defocus, defocus, 0), mode="nearest")
    n = max(1, round(int(rng.integers(c.drops_range[0], c.drops_range[1] + 1)) * h * w / 256 ** 2))
    out = clean.astype(np.float32).copy()
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        rx = float(rng.uniform(*c.radius_range)) * side
        ry = rx * float(rng.uniform(*c.aspect_range))
        view = float(rng.uniform(*c.view_range))
        rim = float(rng.uniform(*c.rim_range))
        highlight = float(rng.uniform(*c.highlight_range))
        y0, y1 = max(0, int(cy - ry)), min(h, int(np.ceil(cy + ry)) + 1)
        x0, x1 = max(0, int(cx - rx)), min(w, int(np.ceil(cx + rx)) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = (yy - cy) / ry, (xx - cx) / rx
        d = np.sqrt(dy * dy + dx * dx)
        alpha = np.clip((1.0 - d) / 0.15, 0.0, 1.0)[..., None]
        coords = [cy - (yy - cy) * view, cx - (xx - cx) * view]
        view_rgb = np.stack([ndimage.map_coordinates(seen[..., ch], coords, order=1, mode="nearest")
                             for ch in range(3)], axis=-1)
        view_rgb *= (1.0 - rim * np.minimum(d, 1.0) ** 4)[..., None]
        spot = highlight * np.exp(-((dy + 0.4) ** 2 + (dx + 0.3) ** 2) / (2 * 0.15 ** 2))[..., None]
        patch = out[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = patch * (1.0 - alpha) + (view_rgb + spot) * alpha
    return np.clip(out, 0.0, 1.0).astype(np.float32), {"drops": n, "defocus_px": round(defocus, 3)}


#: The kinds an all-weather dataset mixes.
WEATHER_KINDS = ("haze", "rain", "snow", "raindrop")


@dataclass(frozen=True)
class AllWeatherConfig:
    """A mixture: each image gets one kind from ``kinds`` (uniformly), drawn with that kind's config."""

    kinds: tuple[str, ...] = WEATHER_KINDS
    haze: HazeConfig = HazeConfig()
    rain: RainConfig = RainConfig()
    snow: SnowConfig = SnowConfig()
    raindrop: RaindropConfig = RaindropConfig()

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in WEATHER_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {WEATHER_KINDS}, got {self.kinds}")


_SINGLE_WEATHER: dict[str, Callable[[np.ndarray, np.random.Generator, Any], tuple[np.ndarray, dict]]] = {
    "haze": add_haze, "rain": add_rain, "snow": add_snow, "raindrop": add_raindrop}


def add_allweather(clean: np.ndarray, rng: np.random.Generator,
                   config: AllWeatherConfig = AllWeatherConfig()) -> tuple[np.ndarray, dict]:
    """One weather kind per image; ``params["weather"]`` names it, the rest are that kind's parameters."""
    kind = config.kinds[int(rng.integers(len(config.kinds)))]
    degraded, params = _SINGLE_WEATHER[kind](clean, rng, getattr(config, kind))
    return degraded, {"weather": kind, **params}


@dataclass(frozen=True)
class Degradation:
    """One synthetic degradation kind: ``apply(clean, rng, config) -> (degraded, params)``."""

    apply: Callable[[np.ndarray, np.random.Generator, Any], tuple[np.ndarray, dict]]
    config_type: type
    input_dir: str  # folder of the degraded images, as in the real datasets of that kind
    target_dir: str  # folder of the clean images


DEGRADATIONS: dict[str, Degradation] = {
    "haze": Degradation(apply=add_haze, config_type=HazeConfig, input_dir="hazy", target_dir="GT"),
    "rain": Degradation(apply=add_rain, config_type=RainConfig, input_dir="input", target_dir="gt"),
    "snow": Degradation(apply=add_snow, config_type=SnowConfig, input_dir="input", target_dir="gt"),
    "raindrop": Degradation(apply=add_raindrop, config_type=RaindropConfig, input_dir="input", target_dir="gt"),
    "allweather": Degradation(apply=add_allweather, config_type=AllWeatherConfig, input_dir="input",
                              target_dir="gt"),
}


# ----------------------------------------------------------------------------------------------
# Dataset writer


@dataclass(frozen=True)
class SplitRecipe:
    """How one split turns source photos into pairs.

    Attributes:
        crops: clean patches per source, each a random ``patch_size`` square taken after a random
            rescale by ``U(scale_range)`` (raised where needed so the patch fits); 0 uses the whole
            (resized) photo as the single clean image.
        patch_size: side of the patches when ``crops > 0``.
        scale_range: rescale factors for patches; < 1 lets a patch cover more of the scene.
        variants: degraded inputs per clean image (RESIDE ITS has 10 per GT).
        max_side: downscale each source first so its longer side is at most this (None: keep).
        multiple_of: centre-crop whole images so both sides are multiples of this, which lets
            generators with down-sampling stages run without padding.
    """

    crops: int = 0
    patch_size: int = 256
    scale_range: tuple[float, float] = (1.0, 1.0)
    variants: int = 1
    max_side: int | None = None
    multiple_of: int = 1


# Fast zlib level: generation time is dominated by PNG encoding, and level 1 is ~4x faster than
# the default for ~10% larger files.
_PNG_LEVEL = 1

ImageSource = str | os.PathLike | np.ndarray | torch.Tensor


def _safe_name(name: str) -> str:
    # '_' separates the image id from the variant index in RESIDE naming, so it cannot appear in ids.
    return "-".join(name.replace("_", "-").split())


def _named_sources(sources: Mapping[str, ImageSource] | Sequence[ImageSource]) -> dict[str, ImageSource]:
    if isinstance(sources, Mapping):
        items = list(sources.items())
    else:
        items = [(Path(s).stem if isinstance(s, (str, os.PathLike)) else f"img{i:04d}", s)
                 for i, s in enumerate(sources)]
    named: dict[str, ImageSource] = {}
    for name, src in items:
        key = _safe_name(str(name))
        if key in named:
            raise ValueError(f"two sources are both named {key!r} (after replacing '_' and spaces by '-')")
        named[key] = src
    return named


def _as_float_rgb(src: ImageSource) -> np.ndarray:
    """HWC float32 RGB in [0, 1] from a path, a uint8/float HWC or HW array, or a CHW tensor."""
    if isinstance(src, (str, os.PathLike)):
        return load_image(src).permute(1, 2, 0).numpy()
    if isinstance(src, torch.Tensor):
        src = src.detach().cpu().permute(1, 2, 0).numpy() if src.ndim == 3 else src.detach().cpu().numpy()
    arr = np.asarray(src)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"source arrays must be HxWx3 RGB or HxW grey, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if (h, w) == img.shape[:2]:
        return img
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return x[0].clamp(0, 1).permute(1, 2, 0).numpy()


def _quantize(img: np.ndarray) -> np.ndarray:
    # Degrade the 8-bit clean image that is written to disk, so the saved pair obeys the model exactly
    # up to the rounding of the degraded image.
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


def _clean_images(img: np.ndarray, recipe: SplitRecipe, rng: np.random.Generator):
    """Yield ``(id_suffix, clean, crop_info)`` for one source photo under ``recipe``.

    ``crop_info``: ``resized_to`` [H, W] of the photo after ``max_side``, and ``box`` [top, left,
    height, width] of the window taken from it (patches resize that window to ``patch_size``).
    """
    h, w = img.shape[:2]
    if recipe.max_side and max(h, w) > recipe.max_side:
        f = recipe.max_side / max(h, w)
        h, w = max(1, round(h * f)), max(1, round(w * f))
        img = _resize(img, h, w)
    if recipe.crops == 0:
        m = recipe.multiple_of
        ch, cw = h - h % m, w - w % m
        if ch == 0 or cw == 0:
            raise ValueError(f"image of {w}x{h} is smaller than multiple_of={m}")
        top, left = (h - ch) // 2, (w - cw) // 2
        yield "", img[top:top + ch, left:left + cw], {"resized_to": [h, w], "box": [top, left, ch, cw]}
        return
    p = recipe.patch_size
    if min(h, w) < p:
        raise ValueError(f"image of {w}x{h} is smaller than patch_size={p}")
    for i in range(recipe.crops):
        # A patch at scale s covers a (p / s)-pixel window of the photo; resizing only that window is
        # the same as rescaling the whole photo and then cropping, at a fraction of the cost.
        scale = max(float(rng.uniform(*recipe.scale_range)), p / min(h, w))
        win = min(round(p / scale), h, w)
        top, left = int(rng.integers(h - win + 1)), int(rng.integers(w - win + 1))
        patch = _resize(img[top:top + win, left:left + win], p, p)
        yield f"-c{i:03d}", patch, {"resized_to": [h, w], "box": [top, left, win, win]}


def _rng(seed: int, *names: str) -> np.random.Generator:
    # crc32, unlike hash(), is stable across processes, so the stream of each source depends only on
    # (seed, split, name) and not on the order in which sources are processed.
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _recipe_meta(kind: str, seed: int, config: Any, recipes: Mapping[str, SplitRecipe],
                 plan: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Everything that determines a dataset's content, plus its hash (``fingerprint``)."""
    meta: dict[str, Any] = {
        "format": "clipdehaze-synthetic",
        "version": SYNTH_VERSION,
        "kind": kind,
        "seed": seed,
        "config": dataclasses.asdict(config),
        "recipes": {s: dataclasses.asdict(r) for s, r in recipes.items()},
        "splits": {s: list(m) for s, m in plan.items()},
    }
    blob = json.dumps(meta, sort_keys=True).encode()
    meta["fingerprint"] = hashlib.sha256(blob).hexdigest()[:16]
    return meta


def _plan_splits(names: list[str], splits: Mapping[str, Sequence[str]] | None, test_fraction: float,
                 seed: int) -> dict[str, list[str]]:
    if splits is None:
        if len(names) < 2:
            raise ValueError("need at least two source images to make disjoint train and test splits")
        order = [names[i] for i in _rng(seed, "split").permutation(len(names))]
        n_test = min(len(names) - 1, max(1, round(test_fraction * len(names))))
        return {"train": sorted(order[n_test:]), "test": sorted(order[:n_test])}
    plan = {split: [_safe_name(n) for n in members] for split, members in splits.items()}
    seen: dict[str, str] = {}
    for split, members in plan.items():
        for n in members:
            if n not in names:
                raise ValueError(f"split {split!r} names source {n!r}, which is not among the sources {sorted(names)}")
            if n in seen:
                raise ValueError(f"source {n!r} is in both split {seen[n]!r} and split {split!r}; "
                                 "splits must be disjoint")
            seen[n] = split
    return plan


def synthesize_dataset(
    sources: Mapping[str, ImageSource] | Sequence[ImageSource],
    out_root: str | os.PathLike,
    *,
    splits: Mapping[str, Sequence[str]] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    kind: str = "haze",
    config: Any = None,
    recipe: SplitRecipe | Mapping[str, SplitRecipe] = SplitRecipe(),
    overwrite: bool = False,
) -> Path:
    """Write a paired dataset ``<out_root>/<split>/{<input_dir>,<target_dir>}/`` from clean source photos.

    The folders are the kind's (:data:`DEGRADATIONS`: ``hazy``/``GT`` for haze, ``input``/``gt`` for the
    weather kinds). Files use RESIDE's naming, which :func:`clipdehaze.data.datasets.match_pairs` pairs:
    ``GT/<id>.png`` with ``hazy/<id>_<k>.png`` for k < ``variants``; ``<id>`` is the source name
    (``_`` replaced by ``-``) plus ``-c<i>`` for patches. ``meta.json`` records the seed, version,
    configuration and every image's parameters.

    Args:
        sources: paths or arrays (HxWx3 uint8/float, or CHW tensors); a mapping gives them names,
            otherwise names are file stems or ``img0000``...
        splits: split -> source names. Sources in several splits are an error (test leakage).
            None: a seeded random split into ``train`` and ``test`` with ``test_fraction`` of the
            sources (at least one each).
        kind: key of :data:`DEGRADATIONS`; ``config`` is its config object (default: defaults).
        recipe: one :class:`SplitRecipe` for every split, or one per split name.
        overwrite: replace an existing ``out_root``, which must be empty or a dataset this function wrote holding
            nothing its ``meta.json`` does not list (anything else raises FileExistsError naming the files);
            without it an existing ``out_root`` raises FileExistsError. Source files inside ``out_root`` are
            refused either way (a ValueError), since replacing it would delete them.

    The dataset is built in a temporary sibling directory and renamed into place after meta.json is
    written, so an interrupted run never leaves a folder that looks complete.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation kind {kind!r}; available: {sorted(DEGRADATIONS)}")
    degradation = DEGRADATIONS[kind]
    config = config if config is not None else degradation.config_type()
    out_root = Path(out_root)
    if out_root.exists() or out_root.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out_root} already exists; pass overwrite=True to replace it")
        _check_replaceable(out_root)
    named = _named_sources(sources)
    inside = [s for s in named.values() if isinstance(s, (str, os.PathLike)) and _is_within(Path(s), out_root)]
    if inside:
        raise ValueError(f"source {inside[0]} lies inside the output folder {out_root}; write the dataset elsewhere "
                         "so the sources are never replaced")
    plan = _plan_splits(sorted(named), splits, test_fraction, seed)
    recipes = {s: (recipe[s] if isinstance(recipe, Mapping) else recipe) for s in plan}
    meta = _recipe_meta(kind, seed, config, recipes, plan)

    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_root.parent / f".{out_root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        pairs: dict[str, list[dict]] = {}
        for split, members in plan.items():
            pairs[split] = []
            in_dir, gt_dir = tmp / split / degradation.input_dir, tmp / split / degradation.target_dir
            for name in members:
                rng = _rng(seed, split, name)
                for suffix, clean, crop in _clean_images(_as_float_rgb(named[name]), recipes[split], rng):
                    clean = _quantize(clean)
                    gid = name + suffix
                    save_image(clean.transpose(2, 0, 1), gt_dir / f"{gid}.png", compress_level=_PNG_LEVEL)
                    for k in range(recipes[split].variants):
                        degraded, params = degradation.apply(clean, rng, config)
                        save_image(degraded.transpose(2, 0, 1), in_dir / f"{gid}_{k}.png",
                                   compress_level=_PNG_LEVEL)
                        pairs[split].append({"input": f"{degradation.input_dir}/{gid}_{k}.png",
                                             "target": f"{degradation.target_dir}/{gid}.png", "source": name,
                                             **crop, **params})
        meta["counts"] = {s: {"pairs": len(p), "targets": len({r["target"] for r in p})} for s, p in pairs.items()}
        meta["pairs"] = pairs
        # meta.json last: its presence is what marks the dataset as complete.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _move_into_place(tmp, out_root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_root


def _is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it, after resolving symlinks and ``..``."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_replaceable(out_root: Path) -> None:
    """Overwriting may remove only what this module wrote: an empty folder, or a dataset whose ``meta.json``
    lists every file in it. Anything else (a file, the user's photos, notes next to a dataset) is refused."""
    if not out_root.is_dir() or out_root.is_symlink():
        raise FileExistsError(f"{out_root} exists and is not a folder that a synthetic dataset was written to; "
                              "refusing to replace it: choose another output folder")
    if not any(out_root.iterdir()):
        return
    try:
        meta = json.loads((out_root / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != "clipdehaze-synthetic":
        raise FileExistsError(f"{out_root} is not a synthetic dataset written by clipdehaze (no meta.json of ours in "
                              "it), so overwriting it would delete files this tool did not write; choose another "
                              "output folder, or empty this one yourself")
    own = {Path("meta.json")} | {Path(split) / rec[key] for split, recs in meta.get("pairs", {}).items()
                                 for rec in recs for key in ("input", "target")}
    foreign = sorted(str(p) for p in out_root.rglob("*")
                     if (p.is_file() or p.is_symlink()) and p.relative_to(out_root) not in own)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise FileExistsError(f"{out_root} holds files its meta.json does not list ({shown}); overwriting would "
                              "delete them: move them out or choose another output folder")


def _move_into_place(tmp: Path, out_root: Path, overwrite: bool) -> None:
    old = None
    if overwrite and out_root.exists():
        _check_replaceable(out_root)  # again: files may have been added while the dataset was generated
        old = out_root.parent / f".{out_root.name}.old-{uuid.uuid4().hex[:8]}"
        out_root.rename(old)
    try:
        # rename() of a directory fails if the destination appeared meanwhile (another process
        # finished first); never merge two half-datasets.
        tmp.rename(out_root)
    except OSError as e:
        raise FileExistsError(f"{out_root} appeared while it was being generated") from e
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def is_dataset_complete(root: str | os.PathLike, fingerprint: str | None = None) -> bool:
    """True if ``root/meta.json`` exists (and matches ``fingerprint``) and every listed file is present."""
    meta_path = Path(root) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return False
    root = Path(root)
    return all((root / split / rec[key]).is_file()
               for split, recs in meta.get("pairs", {}).items() for rec in recs for key in ("input", "target"))


# ----------------------------------------------------------------------------------------------
# Default dataset from the photos bundled inside scikit-image (no download).

#: Natural RGB photos that ship inside the scikit-image wheel. Others in ``skimage.data`` are
#: greyscale, microscopy/astronomy, or fetched with pooch on first use (lily, kidney, ...).
#: Train and test use disjoint photos; the test pair has outdoor sky (rocket) and fur (chelsea).
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "coffee", "motorcycle-left"),
    "test": ("chelsea", "rocket"),
}

#: Train: 24 random 256-px patches per photo with two haze draws each (144 pairs). Test: three haze
#: draws per photo, resized to 400 px on the long side and cropped to multiples of 16 (256x400).
DEFAULT_RECIPES: dict[str, SplitRecipe] = {
    "train": SplitRecipe(crops=24, patch_size=256, scale_range=(0.5, 1.0), variants=2),
    "test": SplitRecipe(crops=0, variants=3, max_side=400, multiple_of=16),
}


def default_sources() -> dict[str, np.ndarray]:
    """The default photos as HxWx3 uint8 arrays, keyed by name (all bundled with scikit-image)."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "motorcycle-left": data.stereo_motorcycle()[0],
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
    }


def default_cache_dir() -> Path:
    """``$CLIPDEHAZE_CACHE/datasets``, else ``$XDG_CACHE_HOME/clipdehaze/datasets`` (``~/.cache`` by default)."""
    if os.environ.get("CLIPDEHAZE_CACHE"):
        return Path(os.environ["CLIPDEHAZE_CACHE"]).expanduser() / "datasets"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "clipdehaze" / "datasets"


def default_dataset_dir(cache_dir: str | os.PathLike | None = None, seed: int = 0, kind: str = "haze") -> Path:
    """Where :func:`ensure_default_dataset` keeps the ``kind`` dataset for ``seed`` (the name carries the version)."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / f"synthetic_{kind}_{SYNTH_VERSION}_seed{seed}"


def ensure_default_dataset(cache_dir: str | os.PathLike | None = None, seed: int = 0, *,
                           root: str | os.PathLike | None = None, kind: str = "haze") -> Path:
    """Path of the default synthetic dataset of ``kind``, generating it on first use (a few seconds).

    It lives in ``root`` if given, else in :func:`default_dataset_dir` (``cache_dir`` or
    :func:`default_cache_dir`, directory name carrying the kind, :data:`SYNTH_VERSION` and the seed). Layout
    ``{train,test}/{<input_dir>,<target_dir>}/`` (``hazy``/``GT`` as in DehazeFormer for haze, ``input``/``gt``
    as in TransWeather's All-Weather for the weather kinds), with RESIDE naming; 144 train pairs (256-px
    patches) and 6 test pairs (256x400). ``kind="allweather"`` is the embedded all-weather default: each image
    gets one of haze, rain, snow or raindrop.

    A complete dataset whose meta.json matches this recipe and seed is reused; an incomplete or stale dataset
    written here is replaced, and a folder holding anything else is refused (FileExistsError naming the files). Safe against concurrent callers (several ranks or test workers): whoever
    finishes second discards its copy and uses the first one's.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation kind {kind!r}; available: {sorted(DEGRADATIONS)}")
    root = Path(root) if root is not None else default_dataset_dir(cache_dir, seed, kind)
    config = DEGRADATIONS[kind].config_type()
    fingerprint = _recipe_meta(kind, seed, config, DEFAULT_RECIPES, DEFAULT_SPLITS)["fingerprint"]
    if is_dataset_complete(root, fingerprint):
        return root
    try:
        synthesize_dataset(default_sources(), root, splits=DEFAULT_SPLITS, seed=seed, kind=kind,
                           recipe=DEFAULT_RECIPES, overwrite=root.exists())
    except FileExistsError:
        if not is_dataset_complete(root, fingerprint):
            raise
    return root
