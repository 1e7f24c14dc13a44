"""The "no restoration" control: returns the degraded input unchanged.

Evaluated like any generator (``clipdehaze-eval model=identity``), it gives the floor every table needs: what
the hazy input itself scores against the ground truth under the same metric protocol.
"""

from __future__ import annotations

import torch

from clipdehaze.models.contract import GeneratorBase
from clipdehaze.models.registry import register_generator


@register_generator("identity")
class Identity(GeneratorBase):
    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if kwargs:
            raise TypeError(f"identity takes no extra inputs, got {sorted(kwargs)}")
        return x.clone()
