"""Raindrops on the lens as in the RainDrop dataset: elliptical blobs showing an inverted, minified and defocused
view of the scene around them (a water drop is a small lens out of the camera's focus), with a darker rim and a
specular highlight."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from clipdehaze.data.synth.primitives import check_ranges


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
        check_ranges(self, ("drops_range", "radius_range", "aspect_range", "defocus_range", "view_range",
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
