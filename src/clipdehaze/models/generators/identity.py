"""The "no restoration" control: returns the degraded input unchanged.

Evaluated like any generator (``clipdehaze-eval model=identity``), it gives the floor every table needs: what
the hazy input itself scores against the ground truth under the same metric protocol.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from clipdehaze.models.registry import register_generator


class Identity(nn.Module):
    clip_inputs: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if kwargs:
            raise TypeError(f"identity takes no extra inputs, got {sorted(kwargs)}")
        return x.clone()


@register_generator
def identity(**kwargs) -> Identity:
    return Identity(**kwargs)
