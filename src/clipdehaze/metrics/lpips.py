"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018),
AlexNet variant, through torchmetrics (its linear heads ship with torchmetrics; the AlexNet backbone's ImageNet
weights come from torchvision's download cache). Optional: without the backbone weights the metric is unavailable
and asking for it stops at once naming the file, instead of downloading (nothing downloads at run time here).

Protocol: output clamped to [0, 1] and target mapped to [-1, 1] (``normalize=True``), per image; lower is better.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from clipdehaze.metrics.registry import register_metric


def backbone_weights() -> Path:
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name


def unavailable() -> str | None:
    path = backbone_weights()
    if path.is_file():
        return None
    return (f"LPIPS needs torchvision's ImageNet AlexNet weights at {path} (not downloaded offline): copy "
            f"{path.name} there (or set TORCH_HOME), or run `python -c \"import torchvision; "
            "torchvision.models.alexnet(weights='IMAGENET1K_V1')\"` once online")


@lru_cache(maxsize=1)
def _model():
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True, reduction="mean").eval()


@register_metric("lpips", reference=True, higher_is_better=False, label="LPIPS", digits=4, available=unavailable,
                 describe="LPIPS (Zhang et al. 2018, AlexNet, torchmetrics; lower is better)")
@torch.no_grad()
def lpips(output: Tensor, target: Tensor) -> Tensor:
    model = _model().to(output.device)
    return torch.stack([model(o[None].clamp(0, 1).float(), t[None].clamp(0, 1).float()).double()
                        for o, t in zip(output, target)]).cpu()
