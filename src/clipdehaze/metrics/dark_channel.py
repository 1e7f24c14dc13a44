"""Mean dark channel of the output: a haze indicator, not a quality score.

He, Sun and Tang ("Single Image Haze Removal Using Dark Channel Prior", CVPR 2009) observed that in haze-free
outdoor photos most 15×15 patches hold a pixel that is dark in some colour channel, so the dark channel
``min_{patch} min_{r,g,b} J`` is near 0, while haze (airlight) lifts it: ``dark(I) ≈ A (1 - t)``. The mean dark
channel of a restored image therefore estimates how much haze is left (0: none; with airlight A ≈ 1 it is about
the mean haze opacity ``1 - t``). It rewards anything that darkens a colour channel (over-saturation, a colour
cast, crushed shadows) as much as real haze removal, and it is meaningless on scenes dominated by sky or bright
white objects: read it beside NIQE/BRISQUE and the images, never alone.

Protocol: output clamped to [0, 1], float RGB; per pixel the minimum over R, G, B, then the minimum over the 15×15
patch around it (only the pixels inside the image); mean over pixels. Lower = less haze left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clipdehaze.metrics.registry import register_metric

PATCH = 15


def dark_channel(images: Tensor, patch: int = PATCH) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) dark channel; the patch minimum sees only pixels inside the image."""
    darkest = images.detach().clamp(0, 1).double().amin(1, keepdim=True)
    pad = patch // 2
    # Padding with +inf leaves the border pixels' minimum over the in-image part of their patch.
    padded = F.pad(darkest, (pad, pad, pad, pad), value=float("inf"))
    return -F.max_pool2d(-padded, kernel_size=patch, stride=1)


@register_metric("dark_channel", reference=False, higher_is_better=False, label="dark channel", digits=4,
                 describe="dark channel: mean of He et al.'s 15×15 dark channel of the output (haze left; a prior "
                          "statistic, not a quality score; lower = less haze)")
def mean_dark_channel(output: Tensor) -> Tensor:
    return dark_channel(output).flatten(1).mean(1)
