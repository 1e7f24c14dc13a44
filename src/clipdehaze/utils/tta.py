"""Self-ensemble (test-time augmentation) of a restoration network.

``x8`` is BasicSR's ``test_selfensemble`` (also EDSR's "+" results): the 8 flips and transposes of the input
(the dihedral group of the square: identity, 3 rotations by 90°, 4 mirrors), each output mapped back by the
inverse transform, averaged. ``flip``: the identity and the left-right mirror (2 passes). ``none``: one pass.
The network's per-image side inputs that are maps (4-D tensors such as a CLIP density map) are transformed with
the image; vectors (CLIP embeddings, text features) are the same for every pass: the prior describes the image,
which a flip does not change.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

TTA_MODES = ("none", "flip", "x8")

# (transpose, flip rows, flip columns), applied in this order.
_TRANSFORMS = {
    "none": [(False, False, False)],
    "flip": [(False, False, False), (False, False, True)],
    "x8": [(t, h, w) for t in (False, True) for h in (False, True) for w in (False, True)],
}

TTA_DESCRIPTIONS = {
    "none": "",
    "flip": "self-ensemble flip: mean of the outputs for the image and its left-right mirror, mapped back",
    "x8": "self-ensemble x8 (BasicSR test_selfensemble): mean of the outputs for the 8 flips/transposes of the "
          "image, each mapped back",
}


def check_tta(mode: object) -> str:
    if mode not in TTA_MODES:
        raise ValueError(f"tta={mode!r}: must be one of {', '.join(TTA_MODES)}")
    return str(mode)


def _forward(x: torch.Tensor, transpose: bool, flip_h: bool, flip_w: bool) -> torch.Tensor:
    if transpose:
        x = x.transpose(-2, -1)
    if flip_h:
        x = x.flip(-2)
    return x.flip(-1) if flip_w else x


def _inverse(y: torch.Tensor, transpose: bool, flip_h: bool, flip_w: bool) -> torch.Tensor:
    if flip_w:
        y = y.flip(-1)
    if flip_h:
        y = y.flip(-2)
    return y.transpose(-2, -1) if transpose else y


def self_ensemble(fn: Callable[..., torch.Tensor], x: torch.Tensor, mode: str = "x8",
                  inputs: dict[str, Any] | None = None) -> torch.Tensor:
    """``mean_g g⁻¹(fn(g(x), **g(inputs)))`` over the transforms ``g`` of ``mode`` (see the module docstring)."""
    inputs = inputs or {}
    total = None
    for g in _TRANSFORMS[check_tta(mode)]:
        # Image-shaped side inputs are transformed with x; vectors and callables (the CLIP image encoder a
        # first-pass generator calls on its own output) pass through.
        side = {k: _forward(v, *g) if isinstance(v, torch.Tensor) and v.ndim == 4 else v for k, v in inputs.items()}
        y = _inverse(fn(_forward(x, *g), **side), *g)
        total = y if total is None else total + y
    return total / len(_TRANSFORMS[mode])
