"""Pixel reconstruction losses and the weighted sum that combines loss terms.

Every loss here has the signature ``forward(output, target, hazy=None) -> scalar`` so the LightningModule
calls any loss, or any mix of losses, the same way. ``hazy`` is the network input; only contrastive terms
(which push the output away from the hazy image) read it, the pixel terms ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor


class L1Loss(nn.Module):
    """Mean absolute error, the reconstruction loss of DehazeFormer, MixDehazeNet and most dehazing nets.

    ``scale`` multiplies it: DehazeFormer and MixDehazeNet take ``nn.L1Loss`` on images in [-1, 1], which is 2 x the
    L1 of the same images in [0, 1] (``loss=l1_upstream``, scale 2). Under Adam(W) the factor changes an update only
    through ``eps``, but the logged loss is then upstream's number, and a recorded upstream trajectory compares
    step for step (``clipdehaze-reproduce trajectory``).
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)

    def forward(self, output: Tensor, target: Tensor, hazy: Tensor | None = None) -> Tensor:
        return self.scale * (output - target).abs().mean()

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class CharbonnierLoss(nn.Module):
    """Charbonnier penalty ``mean(sqrt((x - y)² + eps²))``, a differentiable L1 (Charbonnier et al., ICIP 1994;
    as used with ``eps = 1e-3`` by LapSRN, Lai et al., CVPR 2017, and MPRNet, Zamir et al., CVPR 2021).

    Note that a perfect reconstruction scores ``eps``, not 0.
    """

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, output: Tensor, target: Tensor, hazy: Tensor | None = None) -> Tensor:
        return torch.sqrt((output - target).square() + self.eps**2).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class WeightedSumLoss(nn.Module):
    """``sum_k weights[k] * terms[k](output, target, hazy)``.

    The unweighted value of each term from the last call is kept in ``last_terms`` (detached), so the training
    loop can log ``train/loss_<name>`` without recomputing anything.

    Args:
        terms: name -> loss module with the ``(output, target, hazy=None)`` signature.
        weights: name -> weight; must name exactly the same terms, so a misspelt key fails at construction.
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedSumLoss needs at least one term")
        if set(terms) != set(weights):
            raise ValueError(f"terms {sorted(terms)} and weights {sorted(weights)} must name the same losses")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {name: float(weights[name]) for name in self.terms}
        self.last_terms: dict[str, Tensor] = {}

    @property
    def needs_clip(self) -> bool:
        """True when any term needs the frozen CLIP prior (the LightningModule builds it only then)."""
        return any(getattr(term, "needs_clip", False) for term in self.terms.values())

    def forward(self, output: Tensor, target: Tensor, hazy: Tensor | None = None) -> Tensor:
        values = {name: term(output, target, hazy) for name, term in self.terms.items()}
        self.last_terms = {name: v.detach() for name, v in values.items()}
        return sum(self.weights[name] * v for name, v in values.items())

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
