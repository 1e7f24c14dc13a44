"""Building blocks shared by several generators.

``PatchEmbed``, ``PatchUnEmbed``, ``SKFusion`` and ``WindowAttention`` follow DehazeFormer ("Vision Transformers for
Single Image Dehazing", Song et al., IEEE TIP 2023; https://github.com/IDKiro/DehazeFormer, MIT licence) parameter
for parameter: same attribute names, shapes and arithmetic, so official checkpoints of DehazeFormer and of the
networks built on its skeleton (MixDehazeNet, MixCLDehazeNet) load unchanged. CLIPHaze reuses the window attention
(with its relative-position MLP) and the skeleton (:mod:`clipdehaze.models.unet`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PatchEmbed", "PatchUnEmbed", "SKFusion", "UpstreamGraph", "WindowAttention", "fused_linear",
           "get_relative_positions", "softmax", "upstream_graph", "without_autocast"]


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax computed in at least float32, returned in ``x``'s dtype (float32 or float64 input: exactly
    ``x.softmax(dim)``).

    Under bf16 autocast, CUDA already runs softmax in float32 but CPU keeps bfloat16 (8 mantissa bits for the
    normalising sum): this makes bf16-mixed training normalise in float32 on either device.
    """
    return torch.softmax(x, dim, dtype=torch.promote_types(x.dtype, torch.float32)).to(x.dtype)


def fused_linear(x: torch.Tensor, layer: nn.Linear, extra_weight: torch.Tensor | None = None, extra_bias: torch.Tensor | None = None,
                 keep: bool = True) -> torch.Tensor:
    """``layer(x)`` with ``extra_weight @ layer(x) + extra_bias`` appended as more channels, in one matmul (a linear
    map of a linear layer's output is a linear map of its input); with ``keep=False`` only the appended ones."""
    if extra_weight is None:
        return layer(x)
    bias = layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
    weight, extra = extra_weight @ layer.weight, extra_weight @ bias
    if extra_bias is not None:
        extra = extra + extra_bias
    if keep:
        weight, extra = torch.cat([layer.weight, weight]), torch.cat([bias, extra])
    return F.linear(x, weight, extra)


def without_autocast(device_type: str):
    """Autocast off for ``device_type``; nothing to switch off on a device without autocast (``meta``, which MAC
    counting uses)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


class UpstreamGraph:
    """Mixin for a module that runs a cheaper, numerically equivalent form of a published computation.

    Some published layers do work that can be skipped or fused without changing the result (DehazeFormer's
    relative-position MLP on all N x N pairs instead of the (2w-1)^2 distinct offsets; MixDehazeNet's
    1x1 -> 5x5 conv pair and three dilated depthwise convs; MixCLDehazeNet's attention over 1-D text tokens and
    the text-side update it computes and throws away). Such a module sets ``upstream_graph = True`` to run the
    published operations literally instead. Uses: an oracle for the fused form in tests, and the published
    implementation's MAC count (``clipdehaze-bench`` reports both the architecture's MACs on the upstream graph
    and the MACs this code executes). Weights and outputs are the same either way.
    """

    upstream_graph: bool = False


@contextmanager
def upstream_graph(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every :class:`UpstreamGraph` submodule of ``model`` runs the literal published graph."""
    mods = [m for m in model.modules() if isinstance(m, UpstreamGraph)]
    previous = [m.upstream_graph for m in mods]
    for m in mods:
        m.upstream_graph = enabled
    try:
        yield model
    finally:
        for m, old in zip(mods, previous):
            m.upstream_graph = old


class PatchEmbed(nn.Module):
    """Strided reflect-padded convolution: embeds pixels (``patch_size=1``) or merges patches (``2``).

    The padding ``(kernel_size - patch_size + 1) // 2`` keeps ``H / patch_size`` exactly for the kernel
    sizes upstream uses (3 with stride 1, 2 with stride 2).
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 kernel_size: int | None = None):
        super().__init__()
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        kernel_size = patch_size if kernel_size is None else kernel_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=patch_size,
                              padding=(kernel_size - patch_size + 1) // 2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchUnEmbed(nn.Module):
    """Convolution to ``out_chans * patch_size**2`` channels, then pixel shuffle (inverse of PatchEmbed).

    ``proj`` stays an ``nn.Sequential`` so the checkpoint key is ``proj.0.weight`` as upstream.
    """

    def __init__(self, patch_size: int = 4, out_chans: int = 3, embed_dim: int = 96,
                 kernel_size: int | None = None):
        super().__init__()
        self.out_chans = out_chans
        self.embed_dim = embed_dim
        kernel_size = 1 if kernel_size is None else kernel_size
        self.proj = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans * patch_size ** 2, kernel_size=kernel_size,
                      padding=kernel_size // 2, padding_mode="reflect"),
            nn.PixelShuffle(patch_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SKFusion(nn.Module):
    """Selective-kernel fusion of ``height`` same-shaped feature maps.

    A squeeze MLP on the pooled sum predicts, per channel, softmax weights across the ``height`` inputs;
    the output is the weighted sum.
    """

    def __init__(self, dim: int, height: int = 2, reduction: int = 8):
        super().__init__()
        self.height = height
        hidden = max(int(dim / reduction), 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, dim * height, 1, bias=False),
        )

    def forward(self, in_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(in_feats) != self.height:
            raise ValueError(f"SKFusion built for {self.height} inputs, got {len(in_feats)}")
        B, C = in_feats[0].shape[:2]
        feats = torch.stack(tuple(in_feats), dim=1)  # B, height, C, H, W
        attn = self.mlp(feats.sum(dim=1).mean(dim=(2, 3), keepdim=True))
        attn = softmax(attn.view(B, self.height, C, 1, 1), dim=1)
        return (feats * attn).sum(dim=1)


def _relative_offsets(window_size: int) -> torch.Tensor:
    """(N, N, 2) integer (dy, dx) from each key to each query of a window, N = window_size**2, row-major."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    return (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)


def get_relative_positions(window_size: int) -> torch.Tensor:
    """(N, N, 2) log-spaced relative positions ``sign(d)·log(1 + |d|)``, the input of the position MLP."""
    rel = _relative_offsets(window_size)
    return torch.sign(rel) * torch.log(1.0 + rel.abs())


class WindowAttention(UpstreamGraph, nn.Module):
    """DehazeFormer's multi-head attention inside each window, with a relative-position bias predicted by a small MLP.

    The MLP runs on the (2w-1)^2 distinct offsets; ``upstream_graph=True`` runs it on all w^4 pairs as upstream.
    :meth:`attend` partitions a channel-last map into windows around it.
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

    def relative_position_bias(self) -> torch.Tensor:
        """(num_heads, N, N) additive attention bias."""
        if self.upstream_graph:  # upstream: the MLP on every one of the N x N (query, key) pairs
            return self.meta(self.relative_positions).permute(2, 0, 1)
        n = self.window_size ** 2
        table = self.meta(self.relative_positions.view(-1, 2)[self._offset_rows])  # ((2w-1)^2, heads)
        return table[self._offset_index].view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(windows, heads, N, head_dim) each, any strides with a contiguous last axis -> (windows, heads, N,
        head_dim), with a (windows, N, heads, head_dim) memory layout where the fused kernel runs."""
        bias = self.relative_position_bias()
        if q.device.type == "cpu" and torch.is_grad_enabled() and bias.requires_grad:
            # CPU's fused attention has no gradient for a float mask: it would fall back to its slower math path.
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn += bias
            return softmax(attn, dim=-1) @ v
        # One fused kernel (CPU flash attention, CUDA efficient attention): the N x N scores never reach memory.
        # The mask is 4-D: a 3-D one sends CPU dispatch to the math path.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype), scale=self.scale)

    def attend_windows(self, qkv: torch.Tensor) -> torch.Tensor:
        """(windows, N, 3C) ``[Q | K | V]`` per token of each window -> (windows, N, C): every window attends within
        itself. Q, K and V are read as strided views; the result is a view of the attention's output where the
        fused kernel runs (a copy on the CPU training path with several heads)."""
        nw, n = qkv.shape[:2]
        heads, hd = self.num_heads, self.dim // self.num_heads
        q, k, v = qkv.view(nw, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        return self(q, k, v).transpose(1, 2).reshape(nw, n, self.dim)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3C) channel-last ``[Q | K | V]``, H and W whole windows -> (B, H, W, C): every window attends
        within itself. One strided copy in, one out (a free view in when ``qkv`` is contiguous)."""
        B, H, W = qkv.shape[:3]
        ws, heads = self.window_size, self.num_heads
        nh, nw, hd = H // ws, W // ws, self.dim // heads
        windows = qkv.reshape(B, nh, ws, nw, ws, 3, heads, hd)
        windows = windows.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B * nh * nw, heads, ws * ws, hd)
        out = self(*windows.unbind(0))
        return out.view(B, nh, nw, heads, ws, ws, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, self.dim)
