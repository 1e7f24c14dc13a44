"""Tiled inference: bounded memory on images of any size, seamless by overlap blending."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(n: int, overlap: int, device, dtype) -> torch.Tensor:
    """1 in the middle, linear ramps over ``overlap`` pixels at both ends (never exactly 0)."""
    w = torch.ones(n, device=device, dtype=dtype)
    if overlap > 0 and n > 2 * overlap:
        r = torch.linspace(1.0 / (overlap + 1), 1.0, overlap, device=device, dtype=dtype)
        w[:overlap] = r
        w[-overlap:] = r.flip(0)
    return w


def tiled_forward(
    fn: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor],
    x: torch.Tensor,
    tile: int = 512,
    overlap: int = 32,
    min_size: int = 16,
) -> torch.Tensor:
    """Apply ``fn(tile_tensor, (top, left, h, w))`` over overlapping tiles and blend the results.

    ``fn`` sees tiles at most ``tile`` pixels a side; the output is accumulated on ``x``'s device with linear
    blending weights, so peak memory is one tile's activations plus two image-sized buffers. Images smaller than
    ``min_size`` are reflect/replicate-padded first so convolutional generators always get a valid input.
    """
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    pad_h, pad_w = max(0, min_size - H), max(0, min_size - W)
    if pad_h or pad_w:
        mode = "reflect" if (H > pad_h and W > pad_w) else "replicate"
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return tiled_forward(fn, xp, tile, overlap, min_size)[..., :H, :W]
    if H <= tile and W <= tile:
        return fn(x, (0, 0, H, W))
    overlap = min(overlap, tile // 4)
    stride = tile - overlap
    out = None
    weight = torch.zeros(1, 1, H, W, device=x.device, dtype=x.dtype)
    for top in _starts(H, tile, stride):
        for left in _starts(W, tile, stride):
            h, w = min(tile, H - top), min(tile, W - left)
            y = fn(x[..., top:top + h, left:left + w], (top, left, h, w))
            if out is None:
                out = torch.zeros(B, y.shape[1], H, W, device=x.device, dtype=y.dtype)
            wt = _ramp(h, overlap, x.device, x.dtype)[:, None] * _ramp(w, overlap, x.device, x.dtype)[None, :]
            out[..., top:top + h, left:left + w] += y * wt
            weight[..., top:top + h, left:left + w] += wt
    return out / weight
