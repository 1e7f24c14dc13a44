"""DehazeFormer, reproduced parameter for parameter.

Paper: Y. Song, Z. He, H. Qian, X. Du, "Vision Transformers for Single Image Dehazing", IEEE Transactions on
Image Processing 32, 2023 (arXiv:2204.03883).
Upstream: https://github.com/IDKiro/DehazeFormer (``models/dehazeformer.py``), MIT licence. This file is a
re-implementation: the module tree, parameter names, shapes, initialisation and arithmetic follow upstream, so
the official checkpoints load with ``strict=True`` and no renaming, and outputs match upstream to float32
round-off. Only the execution differs, for speed (same maths):

* activations run in ``channels_last`` memory format: oneDNN's 1x1 and depthwise convolutions, most of the run
  time, are faster on CPU in that layout (about 20 % less CPU time per DehazeFormer-T train step), and the
  NCHW -> NHWC permute of window attention becomes a free view;
* window partition/merge and the head split are one strided copy each (upstream: several);
* the relative-position MLP (``meta``) is evaluated on the (2w-1)^2 distinct offsets and gathered, instead of
  on all w^4 query/key pairs.

Architecture: the 5-stage U-Net of :mod:`clipdehaze.models.unet` (24-48-96-48-24 channels for the small
variants) whose blocks are "TransformerBlocks" mixing a reflect-padded (depthwise) convolution branch with
shifted-window attention (:class:`clipdehaze.models.layers.WindowAttention`); RescaleNorm (RLN) before the
attention branch; SK fusion on the skips; the 4-channel head predicts K and B of ``J = K·I − B + I``.
Upstream works on images in [-1, 1]; :class:`DehazeFormer` takes and returns [0, 1] images and converts inside.
The variants' numbers are data: ``dehazeformer.yaml`` beside this file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.init import _calculate_fan_in_and_fan_out, trunc_normal_

from clipdehaze.models.layers import WindowAttention
from clipdehaze.models.registry import register_generator
from clipdehaze.models.unet import BasicLayer, UNet5, check_per_stage
from clipdehaze.models.variants import variant_factories

__all__ = ["RLN", "Mlp", "Attention", "TransformerBlock", "DehazeFormer"]

CONV_TYPES = ("Conv", "DWConv")


def _trunc_normal_xavier_(weight: Tensor, gain: float = 1.0) -> None:
    """Upstream's init for every convolution inside the blocks: truncated normal with a Xavier-normal std."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(weight)
    trunc_normal_(weight, std=gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def _depth_gain(network_depth: int) -> float:
    # Residual branches are scaled down with the total number of blocks, as upstream does.
    return (8 * network_depth) ** (-1 / 4)


class RLN(nn.Module):
    """RescaleNorm (upstream: "Revised LayerNorm"): normalises over (C, H, W) and also returns affine maps of
    the removed mean and std.

    The caller multiplies its branch output by ``rescale`` and adds ``rebias``, so the statistics the
    normalisation removed are restored (``meta1``/``meta2`` are 1x1 convs on the per-image std and mean).
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones((1, dim, 1, 1)))
        self.bias = nn.Parameter(torch.zeros((1, dim, 1, 1)))
        self.meta1 = nn.Conv2d(1, dim, 1)
        self.meta2 = nn.Conv2d(1, dim, 1)
        trunc_normal_(self.meta1.weight, std=0.02)
        nn.init.constant_(self.meta1.bias, 1)
        trunc_normal_(self.meta2.weight, std=0.02)
        nn.init.constant_(self.meta2.bias, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Statistics in float32 for any input dtype: under bf16 autocast a bfloat16 mean of features far from zero
        # is off by up to 1/256 of its size, which can exceed their spread.
        xf = x.float()
        mean = xf.mean(dim=(1, 2, 3), keepdim=True)
        std = torch.sqrt((xf - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        out = (xf - mean) / std * self.weight + self.bias
        return out.to(x.dtype), self.meta1(std.to(x.dtype)), self.meta2(mean.to(x.dtype))


class Mlp(nn.Module):
    """Pointwise two-layer MLP (1x1 convs with ReLU)."""

    def __init__(self, network_depth: int, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.mlp = nn.Sequential(
            nn.Conv2d(in_features, hidden_features, 1),
            nn.ReLU(True),
            nn.Conv2d(hidden_features, out_features, 1),
        )
        gain = _depth_gain(network_depth)
        for m in self.mlp:
            if isinstance(m, nn.Conv2d):
                _trunc_normal_xavier_(m.weight, gain)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class Attention(nn.Module):
    """The token mixer of a block: a convolution branch and/or shifted-window attention.

    ``conv_type`` 'DWConv': 5x5 depthwise conv on V; 'Conv': two 3x3 convs. With ``use_attn`` the attention
    output is added to the conv branch before the projection. Without attention, 'DWConv' keeps the V/proj
    1x1 convs and 'Conv' is the bare conv pair (upstream's asymmetry, kept for checkpoint compatibility).
    Shifted windows use reflect padding (left/top by ``shift_size``), not a cyclic roll, so no mask is needed.
    """

    def __init__(self, network_depth: int, dim: int, num_heads: int, window_size: int, shift_size: int,
                 use_attn: bool = False, conv_type: str = "DWConv"):
        super().__init__()
        if conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type must be one of {CONV_TYPES}, got {conv_type!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.use_attn = use_attn
        self.conv_type = conv_type

        if conv_type == "Conv":
            self.conv = nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size=3, padding=1, padding_mode="reflect"),
                nn.ReLU(True),
                nn.Conv2d(dim, dim, kernel_size=3, padding=1, padding_mode="reflect"),
            )
        else:
            self.conv = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=dim, padding_mode="reflect")
        if conv_type == "DWConv" or use_attn:
            self.V = nn.Conv2d(dim, dim, 1)
            self.proj = nn.Conv2d(dim, dim, 1)
        if use_attn:
            self.QK = nn.Conv2d(dim, dim * 2, 1)
            self.attn = WindowAttention(dim, window_size, num_heads)

        gain = _depth_gain(network_depth)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Q/K feed a softmax, not the residual stream: no depth gain.
                _trunc_normal_xavier_(m.weight, 1.0 if m is getattr(self, "QK", None) else gain)
                nn.init.zeros_(m.bias)

    def _window_pad(self, x: Tensor) -> Tensor:
        """Reflect-pad to whole windows; shifted blocks also move the grid by ``shift_size`` (upstream check_size)."""
        h, w = x.shape[-2:]
        ws, s = self.window_size, self.shift_size
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        if s > 0:
            return F.pad(x, (s, (ws - s + pad_w) % ws, s, (ws - s + pad_h) % ws), mode="reflect")
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")

    def _window_attention(self, qkv: Tensor, H: int, W: int) -> Tensor:
        """(B, 3C, H, W) channels [Q | K | V] -> (B, C, H, W) attention output."""
        s = self.shift_size
        # B, Hp, Wp, 3C: a free view of the channels_last padded map.
        out = self.attn.attend(self._window_pad(qkv).permute(0, 2, 3, 1))
        return out[:, s:s + H, s:s + W, :].permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        if self.use_attn:
            # One 1x1 conv for Q, K and V (upstream runs QK and V separately, then concatenates them).
            qkv = F.conv2d(x, torch.cat([self.QK.weight, self.V.weight]), torch.cat([self.QK.bias, self.V.bias]))
            v = qkv[:, 2 * self.dim:]
            return self.proj(self.conv(v) + self._window_attention(qkv, H, W))
        if self.conv_type == "DWConv":
            return self.proj(self.conv(self.V(x)))
        return self.conv(x)


class TransformerBlock(nn.Module):
    """Token mixer (RLN-wrapped when it has attention) and pointwise MLP, each with a residual connection."""

    def __init__(self, network_depth: int, dim: int, num_heads: int, mlp_ratio: float = 4.0, window_size: int = 8,
                 shift_size: int = 0, use_attn: bool = True, conv_type: str = "DWConv"):
        super().__init__()
        self.norm1 = RLN(dim) if use_attn else None
        self.attn = Attention(network_depth, dim, num_heads=num_heads, window_size=window_size,
                              shift_size=shift_size, use_attn=use_attn, conv_type=conv_type)
        self.mlp = Mlp(network_depth, dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        if self.norm1 is None:
            x = x + self.attn(x)
        else:
            y, rescale, rebias = self.norm1(x)
            x = x + (self.attn(y) * rescale + rebias)
        return x + self.mlp(x)


def _stage(network_depth: int, dim: int, depth: int, num_heads: int, mlp_ratio: float, window_size: int,
           attn_ratio: float, conv_type: str) -> BasicLayer:
    """One stage: ``depth`` blocks, the last ``attn_ratio·depth`` with attention, every odd block shifted."""
    attn_depth = attn_ratio * depth
    return BasicLayer(
        TransformerBlock(network_depth, dim, num_heads=num_heads, mlp_ratio=mlp_ratio, window_size=window_size,
                         shift_size=0 if i % 2 == 0 else window_size // 2, use_attn=i >= depth - attn_depth,
                         conv_type=conv_type)
        for i in range(depth))


@register_generator("dehazeformer")
class DehazeFormer(UNet5):
    """DehazeFormer generator: hazy RGB in [0, 1] -> dehazed RGB in [0, 1] (not clamped), any H x W.

    Args (one entry per stage, 5 stages at scales 1, 1/2, 1/4, 1/2, 1; the published variants in
    ``dehazeformer.yaml``, the defaults are DehazeFormer-B):
        embed_dims: channels; stages 2/4 and 1/5 must match (skip fusion).
        mlp_ratios: MLP hidden width / channels.
        depths: blocks per stage.
        num_heads: attention heads.
        attn_ratio: fraction of a stage's blocks (the last ones) that have window attention.
        conv_type: 'DWConv' or 'Conv' per stage.
        in_chans, out_chans, window_size: as upstream (the head's 4 channels are K and B).

    Inputs are reflect-padded to a multiple of 4 and the output cropped back. Reflect padding needs the pad to be
    smaller than the padded side, so the shortest image side must be at least :attr:`min_size` (25 px for
    window 8: the shifted windows of the 1/4-scale stage).
    """

    def __init__(self, embed_dims: Sequence[int] = (24, 48, 96, 48, 24),
                 mlp_ratios: Sequence[float] = (2.0, 4.0, 4.0, 2.0, 2.0),
                 depths: Sequence[int] = (16, 16, 16, 8, 8),
                 num_heads: Sequence[int] = (2, 4, 6, 1, 1),
                 attn_ratio: Sequence[float] = (1 / 4, 1 / 2, 3 / 4, 0, 0),
                 conv_type: Sequence[str] = ("DWConv",) * 5,
                 in_chans: int = 3, out_chans: int = 4, window_size: int = 8):
        check_per_stage(mlp_ratios=mlp_ratios, depths=depths, num_heads=num_heads, attn_ratio=attn_ratio,
                        conv_type=conv_type)
        if window_size % 2:
            raise ValueError(f"window_size must be even (shift = window_size / 2), got {window_size}")
        network_depth = sum(depths)

        def stage(i: int) -> BasicLayer:
            return _stage(network_depth, embed_dims[i], depths[i], num_heads[i], mlp_ratio=mlp_ratios[i],
                          window_size=window_size, attn_ratio=attn_ratio[i], conv_type=conv_type[i])

        super().__init__(embed_dims, stage, in_chans, out_chans)
        self.window_size = window_size
        # Smallest 1/4-scale map whose shifted-window reflect padding is valid is 3w/4 + 1, minus the <= 3 px the
        # multiple-of-4 padding adds.
        self.min_size = self.patch_size * (3 * window_size // 4 + 1) - (self.patch_size - 1)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        """(B, 3, H, W) hazy RGB in [0, 1] -> (B, 3, H, W) dehazed RGB, nominally [0, 1] but not clamped."""
        if kwargs:
            raise TypeError(f"DehazeFormer takes no CLIP inputs; got unexpected {sorted(kwargs)}")
        return self.restore_kb(x)


#: dehazeformer_t(**kwargs) ... dehazeformer_test(**kwargs): the variants of dehazeformer.yaml as factories.
__getattr__ = variant_factories(__name__)
