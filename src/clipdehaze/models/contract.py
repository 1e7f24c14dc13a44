"""The generator contract: everything the rest of the project knows about a generator.

The LightningModule, the CLIP cache, tiled prediction, the benchmarks and the tables talk to every generator
through :class:`Generator` and nothing else, so no module outside an architecture file names one architecture.
:class:`GeneratorBase` is an ``nn.Module`` with the contract's defaults (no CLIP input, no auxiliary term, any
input size); most architectures subclass it and override what differs.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch.nn as nn
from torch import Tensor

__all__ = ["Generator", "GeneratorBase", "clip_inputs_of", "contract_gaps"]


@runtime_checkable
class Generator(Protocol):
    """An image-restoration network as the project uses it.

    ``forward(x, **clip)``
        ``x``: (B, 3, H, W) float RGB in [0, 1] (the degraded image); the keyword arguments are exactly the names in
        :attr:`clip_inputs`. Returns (B, 3, H, W) float RGB, nominally [0, 1] and **not clamped** (evaluation
        protocols clamp; losses see the raw output). Any convention of the published code (DehazeFormer's [-1, 1])
        stays inside the generator.
    ``clip_inputs``
        Names of what the generator takes from the frozen CLIP prior: tensors computed from ``x``
        (``text_feature`` (B, 1, D), ``image_embedding`` (B, D), ``density_map`` (B, 1, H, W), ``dense_features``
        (B, D, h, w)) or ``image_encoder``, the prior's embedding function, for a generator that embeds an image
        of its own making; ``()`` for a CLIP-free network. May depend on constructor switches, so read it from the
        instance.
    ``auxiliary_terms``
        Names of the training-only loss terms :meth:`auxiliary_losses` returns, known without running it (``()``
        for none). Each term is weighted by the loss config's ``aux_weights[name]``; a term without a positive
        weight is not computed.
    ``auxiliary_losses(x, target, output, clip_prior)``
        ``{term: scalar tensor}`` for the training forward that produced ``output`` from ``x``; called only in
        training and only when one of :attr:`auxiliary_terms` has a positive weight. ``clip_prior`` is the frozen
        :class:`~clipdehaze.models.clip.FrozenCLIP` (None when nothing asked for one).
    ``min_size``
        The shortest image side (pixels) ``forward`` accepts; 1 when the generator pads any size itself.
    """

    clip_inputs: tuple[str, ...]
    auxiliary_terms: tuple[str, ...]
    min_size: int

    def forward(self, x: Tensor, **clip: Tensor) -> Tensor: ...

    def auxiliary_losses(self, x: Tensor, target: Tensor, output: Tensor, clip_prior: Any) -> dict[str, Tensor]: ...


_MEMBERS = (*Generator.__annotations__, "forward", "auxiliary_losses")


def contract_gaps(obj: object) -> list[str]:
    """The members of :class:`Generator` that ``obj`` lacks (empty: it keeps the contract)."""
    return [name for name in _MEMBERS if not hasattr(obj, name)]


class GeneratorBase(nn.Module):
    """``nn.Module`` with the contract's defaults: no CLIP input, no auxiliary loss term, any input size."""

    clip_inputs: tuple[str, ...] = ()
    auxiliary_terms: tuple[str, ...] = ()
    min_size: int = 1

    def auxiliary_losses(self, x: Tensor, target: Tensor, output: Tensor, clip_prior: Any) -> dict[str, Tensor]:
        return {}


def clip_inputs_of(model: nn.Module) -> tuple[str, ...]:
    """The CLIP inputs a generator names, as a tuple."""
    return tuple(model.clip_inputs)
