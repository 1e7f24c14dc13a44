"""The SAR weather net's training loss: pixel reconstruction plus the weight of the generator's CLIP-SRD term.

The distillation term itself is computed by the generator
(:meth:`clipdehaze.models.generators.sar_weather.SARWeatherNet.auxiliary_losses`), because it needs the
generator's encoder features; the LightningModule adds it multiplied by ``aux_weights["srd"]``. Keeping the weight
here makes it loss config (``loss=sar_weather loss.srd_weight=...``) like every other loss weight.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

RECONSTRUCTIONS = ("l1", "smooth_l1")


class SARWeatherLoss(nn.Module):
    """``recon(output, target)``; the generator's ``srd`` term is weighted by ``srd_weight``.

    Args:
        recon: ``"l1"`` (mean absolute error) or ``"smooth_l1"`` (Huber with ``beta``, TransWeather's pixel loss).
        srd_weight: weight of the CLIP-SRD term (0 switches it off and no CLIP is built for it).
        beta: the smooth-L1 threshold (PyTorch's default 1.0, as TransWeather uses it).

    ``last_terms`` holds the last unweighted reconstruction value (logged as ``train/loss_recon``).
    """

    def __init__(self, recon: str = "l1", srd_weight: float = 0.1, beta: float = 1.0) -> None:
        super().__init__()
        if recon not in RECONSTRUCTIONS:
            raise ValueError(f"recon must be one of {RECONSTRUCTIONS}, got {recon!r}")
        if srd_weight < 0:
            raise ValueError(f"srd_weight must be >= 0, got {srd_weight}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.recon = recon
        self.beta = float(beta)
        self.aux_weights = {"srd": float(srd_weight)}
        self.last_terms: dict[str, Tensor] = {}

    @property
    def needs_clip(self) -> bool:
        """SRD distils from the frozen CLIP, so the LightningModule must build it even for a CWP-free model."""
        return self.aux_weights["srd"] > 0

    def forward(self, output: Tensor, target: Tensor, hazy: Tensor | None = None) -> Tensor:
        if self.recon == "l1":
            loss = (output - target).abs().mean()
        else:
            loss = F.smooth_l1_loss(output, target, beta=self.beta)
        self.last_terms = {"recon": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"recon={self.recon!r}, srd_weight={self.aux_weights['srd']}" + (
            f", beta={self.beta}" if self.recon == "smooth_l1" else "")
