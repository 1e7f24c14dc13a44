"""Dark Channel Prior dehazing, the classical parameter-free baseline.

Paper: K. He, J. Sun, X. Tang, "Single Image Haze Removal Using Dark Channel Prior", CVPR 2009 / TPAMI 2011.
Transmission refinement: K. He, J. Sun, X. Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013 (the
guided filter replaces the original soft matting, as the guided-filter paper proposes), through
``kornia.filters.guided_blur``. No upstream code is used; this is a re-implementation from the papers.

Haze model: I = J·t + A·(1 − t). Steps, per image of the batch:

1. dark channel ``dark(I)(x) = min_{y in Ω(x)} min_c I_c(y)``, Ω a ``patch_size`` square (15 in the paper);
   pixels outside the image are ignored, not padded in;
2. atmospheric light A: among the ``top_percent`` (0.1 %) pixels with the brightest dark channel, the pixel
   with the highest intensity (R + G + B) in the hazy image, as the paper does (TPAMI §4.4). Many
   re-implementations average those pixels instead; the paper's single pixel keeps A an actual colour of the
   image, and it is exact when the haziest region is opaque sky;
3. transmission ``t = 1 − ω·dark(I / A)`` (ω = 0.95 keeps a little haze for depth perception);
4. t refined by the guided filter, guided by the grayscale hazy image (radius ``guided_radius``, capped to the
   image so the reflect padding of the box filter stays valid);
5. ``J = (I − A) / max(t, t0) + A`` (t0 = 0.1 bounds the noise amplification in dense haze).

The output is not clamped: evaluation protocols clamp, and training never touches this model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.filters import guided_blur
from torch import Tensor

from clipdehaze.models.contract import GeneratorBase
from clipdehaze.models.registry import register_generator

# Only guards I / A against a black image (A = 0); any real atmospheric light is orders of magnitude larger.
_MIN_ATMOSPHERIC_LIGHT = 1e-6


class DehazeEstimate(NamedTuple):
    """Everything DCP estimates for a batch: the dehazed image and the haze-model parameters."""

    dehazed: Tensor  # (B, 3, H, W), unclamped
    atmospheric_light: Tensor  # (B, 3, 1, 1)
    transmission: Tensor  # (B, 1, H, W), guided-filter refined, before the t0 floor


@register_generator("dcp")
class DarkChannelPrior(GeneratorBase):
    """He et al.'s dark channel prior dehazing with guided-filter transmission refinement (no parameters).

    Args:
        patch_size: odd side of the dark-channel min filter.
        omega: fraction of haze removed (0 < omega <= 1).
        t0: lower bound on the transmission in the recovery step.
        top_percent: fraction of brightest dark-channel pixels searched for the atmospheric light.
        guided_radius: guided-filter radius r (window 2r + 1).
        guided_eps: guided-filter regulariser, in squared intensity units of the [0, 1] guide.
    """

    def __init__(self, patch_size: int = 15, omega: float = 0.95, t0: float = 0.1, top_percent: float = 0.001,
                 guided_radius: int = 60, guided_eps: float = 1e-3) -> None:
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd integer, got {patch_size}")
        if not 0 < omega <= 1:
            raise ValueError(f"omega must be in (0, 1], got {omega}")
        if not 0 < t0 <= 1:
            raise ValueError(f"t0 must be in (0, 1], got {t0}")
        if not 0 < top_percent <= 1:
            raise ValueError(f"top_percent must be in (0, 1], got {top_percent}")
        if guided_radius < 0 or guided_eps <= 0:
            raise ValueError(f"need guided_radius >= 0 and guided_eps > 0, got {guided_radius}, {guided_eps}")
        self.patch_size = int(patch_size)
        self.omega = float(omega)
        self.t0 = float(t0)
        self.top_percent = float(top_percent)
        self.guided_radius = int(guided_radius)
        self.guided_eps = float(guided_eps)

    def dark_channel(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1, H, W): min over channels, then min over the patch around each pixel."""
        # max_pool2d pads with -inf, so the min of the negated image only ever sees in-image pixels.
        return -F.max_pool2d(-x.amin(dim=1, keepdim=True), self.patch_size, stride=1, padding=self.patch_size // 2)

    def atmospheric_light(self, x: Tensor, dark: Tensor) -> Tensor:
        """(B, 3, 1, 1): the most intense hazy pixel among the top ``top_percent`` of the dark channel."""
        b, c, h, w = x.shape
        count = max(1, int(h * w * self.top_percent))
        candidates = dark.flatten(1).topk(count, dim=1).indices  # (B, count)
        colours = x.flatten(2).gather(2, candidates.unsqueeze(1).expand(b, c, count))  # (B, C, count)
        brightest = colours.sum(dim=1).argmax(dim=1)  # (B,)
        return colours.gather(2, brightest.view(b, 1, 1).expand(b, c, 1)).view(b, c, 1, 1)

    def transmission(self, x: Tensor, light: Tensor) -> Tensor:
        """(B, 1, H, W) guided-filter-refined transmission ``1 − ω·dark(I / A)``."""
        raw = 1 - self.omega * self.dark_channel(x / light.clamp_min(_MIN_ATMOSPHERIC_LIGHT))
        radius = min(self.guided_radius, min(x.shape[-2:]) - 1)
        return guided_blur(rgb_to_grayscale(x), raw, 2 * radius + 1, self.guided_eps, border_type="reflect",
                           separable=True)

    def estimate(self, x: Tensor) -> DehazeEstimate:
        """Dehazed image, atmospheric light and refined transmission for a (B, 3, H, W) hazy batch in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) RGB batch, got {tuple(x.shape)}")
        light = self.atmospheric_light(x, self.dark_channel(x))
        t = self.transmission(x, light)
        dehazed = (x - light) / t.clamp_min(self.t0) + light
        return DehazeEstimate(dehazed, light, t)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) hazy RGB in [0, 1] -> (B, 3, H, W) dehazed RGB (unclamped)."""
        return self.estimate(x).dehazed

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, omega={self.omega}, t0={self.t0}, top_percent={self.top_percent}, "
                f"guided_radius={self.guided_radius}, guided_eps={self.guided_eps}")
