"""The 5-stage encoder-decoder that DehazeFormer, MixDehazeNet/MixCLDehazeNet and CLIPHaze share; the block type is
the parameter.

DehazeFormer's skeleton (Song et al., IEEE TIP 2023; https://github.com/IDKiro/DehazeFormer, MIT licence) at scales
1, 1/2, 1/4, 1/2, 1: a reflect-padded 3x3 stem (``patch_embed``), stage 1, a strided-conv patch merge, stage 2, a
patch merge, stage 3, a 1x1 conv + pixel-shuffle patch split, selective-kernel fusion with the (1x1-projected)
skip, stage 4, a patch split, fusion, stage 5 and a reflect-padded 3x3 head (``patch_unembed``). Attribute names,
registration order and arithmetic are upstream's, so DehazeFormer's and MixDehazeNet's published state_dicts and
outputs are unchanged. An architecture supplies its stages (a :class:`BasicLayer` of its blocks per stage) and the
few knobs in which the three differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clipdehaze.models.contract import GeneratorBase
from clipdehaze.models.layers import PatchEmbed, PatchUnEmbed, SKFusion

__all__ = ["BasicLayer", "UNet5", "check_per_stage"]

STAGES = 5


def check_per_stage(**values: Sequence[Any]) -> None:
    """Every argument has one entry per stage."""
    for name, value in values.items():
        if len(value) != STAGES:
            raise ValueError(f"{name} needs one entry per stage ({STAGES}), got {list(value)}")


class BasicLayer(nn.Module):
    """One stage: ``blocks`` in sequence, each given the stage's extra inputs (CLIPHaze: the density map at the
    stage's scale and the embedding condition; none for DehazeFormer and MixDehazeNet)."""

    def __init__(self, blocks: Iterable[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, **inputs: Any) -> Tensor:
        for blk in self.blocks:
            x = blk(x, **inputs)
        return x


class UNet5(GeneratorBase):
    """The skeleton (see the module docstring).

    Args:
        embed_dims: channels of the 5 stages; stages 2/4 and 1/5 must match (skip fusion).
        stage: ``stage(i)`` builds stage ``i`` (0-4) at width ``embed_dims[i]``.
        in_chans, out_chans: channels of the stem's input and the head's output.
        merge_kernel_size: kernel of the stride-2 patch merges (DehazeFormer: 2; MixDehazeNet: 3).
        skip_projections: a 1x1 conv on each skip before the fusion (DehazeFormer, MixDehazeNet) or none (CLIPHaze).
        leading: modules registered before the skeleton's own, so the state_dict keeps upstream's key order
            (MixCLDehazeNet's text fusion ``text_emb``; CLIPHaze's ``embed_adapter``).
    """

    patch_size = 4  # two 2x downsamplings

    def __init__(self, embed_dims: Sequence[int], stage: Callable[[int], nn.Module], in_chans: int, out_chans: int,
                 merge_kernel_size: int | None = None, skip_projections: bool = True,
                 leading: Mapping[str, nn.Module] | None = None):
        super().__init__()
        check_per_stage(embed_dims=embed_dims)
        if embed_dims[1] != embed_dims[3] or embed_dims[0] != embed_dims[4]:
            raise ValueError(f"embed_dims of stages 2/4 and 1/5 must match for the skip fusion, got {list(embed_dims)}")
        for name, module in (leading or {}).items():
            self.add_module(name, module)

        def skip(dim: int) -> nn.Module:
            return nn.Conv2d(dim, dim, 1) if skip_projections else nn.Identity()

        d = embed_dims
        self.patch_embed = PatchEmbed(patch_size=1, in_chans=in_chans, embed_dim=d[0], kernel_size=3)
        self.layer1 = stage(0)
        self.patch_merge1 = PatchEmbed(patch_size=2, in_chans=d[0], embed_dim=d[1], kernel_size=merge_kernel_size)
        self.skip1 = skip(d[0])
        self.layer2 = stage(1)
        self.patch_merge2 = PatchEmbed(patch_size=2, in_chans=d[1], embed_dim=d[2], kernel_size=merge_kernel_size)
        self.skip2 = skip(d[1])
        self.layer3 = stage(2)
        self.patch_split1 = PatchUnEmbed(patch_size=2, out_chans=d[3], embed_dim=d[2])
        self.fusion1 = SKFusion(d[3])
        self.layer4 = stage(3)
        self.patch_split2 = PatchUnEmbed(patch_size=2, out_chans=d[4], embed_dim=d[3])
        self.fusion2 = SKFusion(d[4])
        self.layer5 = stage(4)
        self.patch_unembed = PatchUnEmbed(patch_size=1, out_chans=out_chans, embed_dim=d[4], kernel_size=3)

    def forward_features(self, x: Tensor, scale_inputs: Sequence[Mapping[str, Any]] = ({}, {}, {})) -> Tensor:
        """Stem input (padded to the network's multiple) -> the head's output (upstream ``forward_features``).

        ``scale_inputs``: the extra inputs of the stages at scale 1, 1/2 and 1/4 (stages 1 and 5, 2 and 4, 3).
        """
        s1, s2, s4 = scale_inputs
        x = self.layer1(self.patch_embed(x), **s1)
        skip1 = x
        x = self.layer2(self.patch_merge1(x), **s2)
        skip2 = x
        x = self.patch_split1(self.layer3(self.patch_merge2(x), **s4))
        x = self.fusion1([x, self.skip2(skip2)]) + x
        x = self.patch_split2(self.layer4(x, **s2))
        x = self.fusion2([x, self.skip1(skip1)]) + x
        return self.patch_unembed(self.layer5(x, **s1))

    def restore_kb(self, x: Tensor, extra_channels: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """DehazeFormer's output form, which MixDehazeNet keeps: [0, 1] RGB (B, 3, H, W) -> [0, 1] RGB, not clamped.

        Upstream works on [-1, 1] images reflect-padded to a multiple of 4; the 4-channel head predicts K and B of
        ``J = K·I − B + I``. ``extra_channels(I)`` (MixCLDehazeNet's text fusion) is concatenated to the stem's
        input.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) RGB batch, got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if min(H, W) < self.min_size:
            raise ValueError(f"{type(self).__name__} needs images of at least {self.min_size} px per side, "
                             f"got {H}x{W}")
        p = self.patch_size
        x = F.pad(x * 2 - 1, (0, (p - W % p) % p, 0, (p - H % p) % p), mode="reflect")
        # channels_last from here on: oneDNN's 1x1 and depthwise convolutions, most of the run time, are faster in
        # that layout on CPU, and every later op keeps it.
        x = x.contiguous(memory_format=torch.channels_last)
        stem_input = x if extra_channels is None else torch.cat([x, extra_channels(x)], dim=1)
        K, B = torch.split(self.forward_features(stem_input), (1, 3), dim=1)
        y = K * x - B + x
        return (y[:, :, :H, :W] + 1) / 2
