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

Architecture: a 5-stage U-Net (24-48-96-48-24 channels for the small variants) of "TransformerBlocks" mixing a
reflect-padded (depthwise) convolution branch with shifted-window attention; RescaleNorm (RLN) before the
attention branch; SK fusion on the skips; the 4-channel head predicts K and B of ``J = K·I − B + I``.
Upstream works on images in [-1, 1]; :class:`DehazeFormer` takes and returns [0, 1] images and converts inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.init import _calculate_fan_in_and_fan_out, trunc_normal_

from clipdehaze.models.layers import PatchEmbed, PatchUnEmbed, SKFusion, UpstreamGraph, softmax
from clipdehaze.models.registry import register_generator

__all__ = ["RLN", "Mlp", "WindowAttention", "Attention", "TransformerBlock", "BasicLayer", "DehazeFormer",
           "get_relative_positions"]

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


def _relative_offsets(window_size: int) -> Tensor:
    """(N, N, 2) integer (dy, dx) from each key to each query of a window, N = window_size**2, row-major."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    return (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)


def get_relative_positions(window_size: int) -> Tensor:
    """(N, N, 2) log-spaced relative positions ``sign(d)·log(1 + |d|)``, the input of the position MLP."""
    rel = _relative_offsets(window_size)
    return torch.sign(rel) * torch.log(1.0 + rel.abs())


class WindowAttention(UpstreamGraph, nn.Module):
    """Multi-head attention inside each window, with a relative-position bias predicted by a small MLP.

    The MLP runs on the (2w-1)^2 distinct offsets; ``upstream_graph=True`` runs it on all w^4 pairs as upstream.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.register_buffer("relative_positions", get_relative_positions(window_size))
        self.meta = nn.Sequential(nn.Linear(2, 256, bias=True), nn.ReLU(True), nn.Linear(256, num_heads, bias=True))

        # The w^4 (query, key) pairs of a window share only (2w-1)^2 distinct offsets: the MLP runs once per
        # offset, on one representative row of ``relative_positions``, and the result is gathered per pair.
        span = 2 * window_size - 1
        rel = _relative_offsets(window_size).flatten(0, 1) + (window_size - 1)
        self.register_buffer("_offset_index", rel[:, 0] * span + rel[:, 1], persistent=False)  # pair -> offset
        d = torch.arange(span) - (window_size - 1)
        dy, dx = (t.flatten() for t in torch.meshgrid(d, d, indexing="ij"))  # offset ids in the same order
        qy, qx = dy.clamp(min=0), dx.clamp(min=0)  # a query with a key at (q - d) inside the window
        rows = (qy * window_size + qx) * window_size ** 2 + (qy - dy) * window_size + (qx - dx)
        self.register_buffer("_offset_rows", rows, persistent=False)  # offset -> one (query, key) pair

    def relative_position_bias(self) -> Tensor:
        """(num_heads, N, N) additive attention bias."""
        if self.upstream_graph:  # upstream: the MLP on every one of the N x N (query, key) pairs
            return self.meta(self.relative_positions).permute(2, 0, 1)
        n = self.window_size ** 2
        table = self.meta(self.relative_positions.view(-1, 2)[self._offset_rows])  # ((2w-1)^2, heads)
        return table[self._offset_index].view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(windows, heads, N, head_dim) each -> same shape."""
        # Explicit rather than F.scaled_dot_product_attention: on CPU a float mask sends SDPA to its math path,
        # which adds masked-row checks (all/where) that cost more than they save here.
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn += self.relative_position_bias()
        return softmax(attn, dim=-1) @ v


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
        B = qkv.shape[0]
        ws, s, heads = self.window_size, self.shift_size, self.num_heads
        head_dim = self.dim // heads
        qkv = self._window_pad(qkv)
        Hp, Wp = qkv.shape[-2:]
        nh, nw = Hp // ws, Wp // ws
        # B, nh, ws, nw, ws, 3, heads, hd  ->  3, B*nh*nw, heads, ws*ws, hd  (one copy; free view if channels_last)
        windows = qkv.permute(0, 2, 3, 1).reshape(B, nh, ws, nw, ws, 3, heads, head_dim)
        windows = windows.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B * nh * nw, heads, ws * ws, head_dim)
        out = self.attn(*windows.unbind(0))
        # windows, heads, ws*ws, hd  ->  B, Hp, Wp, C  (one copy), then undo the padding/shift
        out = out.view(B, nh, nw, heads, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, self.dim)
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


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks, the last ``attn_ratio·depth`` with attention, every odd block shifted."""

    def __init__(self, network_depth: int, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 window_size: int = 8, attn_ratio: float = 0.0, conv_type: str = "DWConv"):
        super().__init__()
        attn_depth = attn_ratio * depth
        self.blocks = nn.ModuleList([
            TransformerBlock(network_depth, dim, num_heads=num_heads, mlp_ratio=mlp_ratio, window_size=window_size,
                             shift_size=0 if i % 2 == 0 else window_size // 2, use_attn=i >= depth - attn_depth,
                             conv_type=conv_type)
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class DehazeFormer(nn.Module):
    """DehazeFormer generator: hazy RGB in [0, 1] -> dehazed RGB in [0, 1] (not clamped), any H x W.

    Args (one entry per stage, 5 stages at scales 1, 1/2, 1/4, 1/2, 1):
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

    clip_inputs: tuple[str, ...] = ()
    patch_size = 4  # two 2x downsamplings

    def __init__(self, embed_dims: Sequence[int] = (24, 48, 96, 48, 24),
                 mlp_ratios: Sequence[float] = (2.0, 4.0, 4.0, 2.0, 2.0),
                 depths: Sequence[int] = (16, 16, 16, 8, 8),
                 num_heads: Sequence[int] = (2, 4, 6, 1, 1),
                 attn_ratio: Sequence[float] = (1 / 4, 1 / 2, 3 / 4, 0, 0),
                 conv_type: Sequence[str] = ("DWConv",) * 5,
                 in_chans: int = 3, out_chans: int = 4, window_size: int = 8):
        super().__init__()
        for name, value in dict(embed_dims=embed_dims, mlp_ratios=mlp_ratios, depths=depths, num_heads=num_heads,
                                attn_ratio=attn_ratio, conv_type=conv_type).items():
            if len(value) != 5:
                raise ValueError(f"{name} needs one entry per stage (5), got {list(value)}")
        if embed_dims[1] != embed_dims[3] or embed_dims[0] != embed_dims[4]:
            raise ValueError(f"embed_dims of stages 2/4 and 1/5 must match for the skip fusion, got {list(embed_dims)}")
        if window_size % 2:
            raise ValueError(f"window_size must be even (shift = window_size / 2), got {window_size}")
        self.window_size = window_size
        # Smallest 1/4-scale map whose shifted-window reflect padding is valid is 3w/4 + 1, minus the <= 3 px the
        # multiple-of-4 padding adds.
        self.min_size = self.patch_size * (3 * window_size // 4 + 1) - (self.patch_size - 1)
        network_depth = sum(depths)

        def stage(i: int) -> BasicLayer:
            return BasicLayer(network_depth, embed_dims[i], depths[i], num_heads[i], mlp_ratio=mlp_ratios[i],
                              window_size=window_size, attn_ratio=attn_ratio[i], conv_type=conv_type[i])

        self.patch_embed = PatchEmbed(patch_size=1, in_chans=in_chans, embed_dim=embed_dims[0], kernel_size=3)
        self.layer1 = stage(0)
        self.patch_merge1 = PatchEmbed(patch_size=2, in_chans=embed_dims[0], embed_dim=embed_dims[1])
        self.skip1 = nn.Conv2d(embed_dims[0], embed_dims[0], 1)
        self.layer2 = stage(1)
        self.patch_merge2 = PatchEmbed(patch_size=2, in_chans=embed_dims[1], embed_dim=embed_dims[2])
        self.skip2 = nn.Conv2d(embed_dims[1], embed_dims[1], 1)
        self.layer3 = stage(2)
        self.patch_split1 = PatchUnEmbed(patch_size=2, out_chans=embed_dims[3], embed_dim=embed_dims[2])
        self.fusion1 = SKFusion(embed_dims[3])
        self.layer4 = stage(3)
        self.patch_split2 = PatchUnEmbed(patch_size=2, out_chans=embed_dims[4], embed_dim=embed_dims[3])
        self.fusion2 = SKFusion(embed_dims[4])
        self.layer5 = stage(4)
        self.patch_unembed = PatchUnEmbed(patch_size=1, out_chans=out_chans, embed_dim=embed_dims[4], kernel_size=3)

    def forward_features(self, x: Tensor) -> Tensor:
        """Padded [-1, 1] image -> the (B, out_chans, H, W) head output (upstream ``forward_features``)."""
        x = self.layer1(self.patch_embed(x))
        skip1 = x
        x = self.layer2(self.patch_merge1(x))
        skip2 = x
        x = self.patch_split1(self.layer3(self.patch_merge2(x)))
        x = self.fusion1([x, self.skip2(skip2)]) + x
        x = self.patch_split2(self.layer4(x))
        x = self.fusion2([x, self.skip1(skip1)]) + x
        return self.patch_unembed(self.layer5(x))

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        """(B, 3, H, W) hazy RGB in [0, 1] -> (B, 3, H, W) dehazed RGB, nominally [0, 1] but not clamped."""
        if kwargs:
            raise TypeError(f"DehazeFormer takes no CLIP inputs; got unexpected {sorted(kwargs)}")
        H, W = x.shape[-2:]
        if min(H, W) < self.min_size:
            raise ValueError(f"DehazeFormer needs images of at least {self.min_size} px per side, got {H}x{W}")
        p = self.patch_size
        x = F.pad(x * 2 - 1, (0, (p - W % p) % p, 0, (p - H % p) % p), mode="reflect")
        x = x.contiguous(memory_format=torch.channels_last)  # every later op keeps this layout (see module doc)
        K, B = torch.split(self.forward_features(x), (1, 3), dim=1)
        y = K * x - B + x
        return (y[:, :, :H, :W] + 1) / 2


# Published variants (upstream factories; W and D from the paper's Table 1), as plain data.
_SMALL = dict(embed_dims=(24, 48, 96, 48, 24), mlp_ratios=(2.0, 4.0, 4.0, 2.0, 2.0), num_heads=(2, 4, 6, 1, 1),
              attn_ratio=(1 / 4, 1 / 2, 3 / 4, 0, 0), conv_type=("DWConv",) * 5)
_WIDE = dict(_SMALL, embed_dims=(48, 96, 192, 96, 48))
_CONFIGS = {
    "t": dict(_SMALL, depths=(4, 4, 4, 2, 2), attn_ratio=(0, 1 / 2, 1, 0, 0)),
    "s": dict(_SMALL, depths=(8, 8, 8, 4, 4)),
    "b": dict(_SMALL, depths=(16, 16, 16, 8, 8)),
    "m": dict(_SMALL, depths=(12, 12, 12, 6, 6), conv_type=("Conv",) * 5),
    "l": dict(_WIDE, depths=(16, 16, 16, 12, 12), conv_type=("Conv",) * 5),
    "w": dict(_WIDE, depths=(16, 16, 16, 8, 8)),
    "d": dict(_SMALL, depths=(32, 32, 32, 16, 16)),
    # CI: stage 3 holds an unshifted and a shifted two-head attention block, the other stages conv blocks.
    "test": dict(embed_dims=(8,) * 5, mlp_ratios=(2.0,) * 5, depths=(1, 1, 2, 1, 1), num_heads=(1, 1, 2, 1, 1),
                 attn_ratio=(0, 0, 1, 0, 0), conv_type=("DWConv",) * 5),
}


def _create(variant: str, kwargs: dict) -> DehazeFormer:
    return DehazeFormer(**dict(_CONFIGS[variant], **kwargs))


@register_generator
def dehazeformer_t(**kwargs) -> DehazeFormer:
    """DehazeFormer-T (0.69 M params): depths 4-4-4-2-2, no attention in stage 1, only attention in stage 3."""
    return _create("t", kwargs)


@register_generator
def dehazeformer_s(**kwargs) -> DehazeFormer:
    """DehazeFormer-S (1.28 M params): depths 8-8-8-4-4."""
    return _create("s", kwargs)


@register_generator
def dehazeformer_b(**kwargs) -> DehazeFormer:
    """DehazeFormer-B (2.52 M params): depths 16-16-16-8-8."""
    return _create("b", kwargs)


@register_generator
def dehazeformer_m(**kwargs) -> DehazeFormer:
    """DehazeFormer-M (4.64 M params): depths 12-12-12-6-6 with the two-3x3-conv branch."""
    return _create("m", kwargs)


@register_generator
def dehazeformer_l(**kwargs) -> DehazeFormer:
    """DehazeFormer-L (25.45 M params): double width, depths 16-16-16-12-12, two-3x3-conv branch."""
    return _create("l", kwargs)


@register_generator
def dehazeformer_w(**kwargs) -> DehazeFormer:
    """DehazeFormer-W (9.69 M params): DehazeFormer-B at double width."""
    return _create("w", kwargs)


@register_generator
def dehazeformer_d(**kwargs) -> DehazeFormer:
    """DehazeFormer-D (4.98 M params): DehazeFormer-B at double depth."""
    return _create("d", kwargs)


@register_generator
def dehazeformer_test(**kwargs) -> DehazeFormer:
    """Tiny CI variant (a few thousand parameters); every code path of DehazeFormer-T."""
    return _create("test", kwargs)
