"""Haze: the atmospheric scattering model used to synthesise RESIDE::

    I(x) = J(x) t(x) + A (1 - t(x)),    t(x) = exp(-beta(x) d(x))

with J the clean image, A the global atmospheric light and d a depth map. Clean photos have no depth,
so d comes from a simple prior (:func:`depth_map`). For *homogeneous* haze beta is one number per
image; for *non-homogeneous* haze (the NH-HAZE setting: patches of dense haze beside clearer areas)
beta is modulated per pixel by a smooth random density field (:func:`density_field`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from clipdehaze.data.synth.primitives import check_ranges

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
        check_ranges(self, ("beta_range", "A_range", "depth_range", "nh_blobs", "nh_sigma", "nh_density_range"))


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
