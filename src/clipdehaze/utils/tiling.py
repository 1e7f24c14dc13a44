"""Tiled inference: bounded memory on images of any size, seamless by overlap blending, with the tile size
chosen from a memory budget."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from clipdehaze.utils.memory import peak_memory_bytes, release_freed_memory

log = logging.getLogger(__name__)

__all__ = ["auto_tile", "check_tiling", "crop_inputs", "tile_count", "tiled_forward"]


def check_tiling(tile: object, overlap: object, min_size: int = 1, allow_auto: bool = False) -> None:
    """Raise ``ValueError`` naming the option when ``tile`` / ``overlap`` cannot cover an image: a tile that is
    not a positive whole number of pixels or is below the model's smallest input side, an overlap that is
    negative or not smaller than the tile (tiles would leave gaps or never advance). With ``allow_auto``,
    ``tile="auto"`` passes (its size is chosen later, larger than the overlap)."""
    auto = allow_auto and tile == "auto"
    for name, value in (("tile", tile), ("overlap", overlap)):
        if (name != "tile" or not auto) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name}={value!r}: must be a whole number of pixels"
                             + (" or 'auto'" if name == "tile" and allow_auto else ""))
    if overlap < 0:
        raise ValueError(f"overlap={overlap}: must be 0 or more pixels")
    if auto:
        return
    if tile < 1:
        raise ValueError(f"tile={tile}: must be a positive number of pixels" + (" or 'auto'" if allow_auto else ""))
    if tile < min_size:
        raise ValueError(f"tile={tile} is below this model's smallest input side of {min_size} px; "
                         f"use tile>={min_size}" + (" or tile=auto" if allow_auto else ""))
    if overlap >= tile:
        raise ValueError(f"overlap={overlap} must be smaller than tile={tile}: each tile advances by "
                         f"tile - overlap pixels")


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many times :func:`tiled_forward` calls its function on an image of this size."""
    if height <= tile and width <= tile:
        return 1
    return len(_starts(height, tile, tile - overlap)) * len(_starts(width, tile, tile - overlap))


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

    ``fn`` sees tiles at most ``tile`` pixels a side, consecutive tiles sharing ``overlap`` pixels; the output is
    accumulated on ``x``'s device with linear blending weights, so peak memory is one tile's activations plus two
    image-sized buffers. Images smaller than ``min_size`` are reflect/replicate-padded first so convolutional
    generators always get a valid input. Invalid ``tile`` / ``overlap`` raise ``ValueError`` (:func:`check_tiling`).
    """
    check_tiling(tile, overlap, min_size)
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
            del y
            if x.device.type == "cpu":
                release_freed_memory()   # each tile's peak, not a growing heap, bounds the run
    return out / weight


def crop_inputs(inputs: dict[str, Any], image_hw: tuple[int, int], box: tuple[int, int, int, int],
                tile_hw: tuple[int, int]) -> dict[str, Any]:
    """A tile's share of per-image generator inputs: maps at the image's size (CLIP density maps) cropped to the
    tile's ``box`` (resized to the tile when it was padded up to the minimum size), everything else (embeddings,
    the ``image_encoder`` function) as is."""
    top, left, h, w = box
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.ndim == 4 and tuple(v.shape[-2:]) == tuple(image_hw):
            v = v[..., top:top + h, left:left + w]
            if tuple(v.shape[-2:]) != tuple(tile_hw):
                v = F.interpolate(v, size=tile_hw, mode="nearest")
        out[k] = v
    return out


PROBE_SIDE = 384
# Allocator variance between one tile and a run of tiles: with freed memory given back after each tile, the peak
# of a tiled run measured within 5 % of one tile's peak plus the image buffers on CPU.
_TILE_SEQUENCE_SLACK = 1.1


def auto_tile(fn: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor], x: torch.Tensor,
              budget_bytes: int, overlap: int, min_size: int = 16, multiple: int = 32,
              measure: Callable[[Callable[[], object]], int | None] | None = None) -> int:
    """The largest tile side whose inference fits ``budget_bytes``, or one tile covering the whole image when it
    fits (then no seams at all).

    Memory is measured, not assumed: ``fn`` runs once on a smaller crop of ``x`` (warm-up: one-time
    allocations such as kernel caches stay out of the measurement), then on a :data:`PROBE_SIDE`² crop, whose
    peak (``measure``, default :func:`clipdehaze.utils.memory.peak_memory_bytes` on ``x``'s device) divided by
    its pixel count is taken as the cost of a pixel. That over-counts whatever does not grow with the tile, on
    the safe side: measured, the peak grows faster than linearly between small crops (the allocator serves them
    differently), so a slope between two small probes would under-count large tiles. The image-sized output and
    weight buffers of :func:`tiled_forward` are counted too, and a slack for the allocator over successive tiles. Tiles are rounded down to a multiple of
    ``multiple`` (the padding unit of window-based models). Where memory cannot be measured (no /proc on this
    OS), tiles of 512 are used.

    An image thinner than ``min_size`` (a 3×1000 strip) is planned as :func:`tiled_forward` runs it: padded to
    ``min_size`` first, so no probe is thinner than the model takes.
    """
    B, C, H, W = x.shape
    if min(H, W) < min_size:
        x = F.pad(x, (0, max(0, min_size - W), 0, max(0, min_size - H)), mode="replicate")
        B, C, H, W = x.shape
    whole = max(H, W, overlap + 1)   # one tile covering the image (larger than the overlap, as tiles must be)
    if max(H, W) <= PROBE_SIDE:
        return whole
    if measure is None:
        def measure(work):
            return peak_memory_bytes(work, x.device)
    h, w = min(PROBE_SIDE, H), min(PROBE_SIDE, W)
    warm_h, warm_w = min(h, max(min_size, h // 2)), min(w, max(min_size, w // 2))
    with torch.no_grad():
        fn(x[..., :warm_h, :warm_w], (0, 0, warm_h, warm_w))
        peak = measure(lambda: fn(x[..., :h, :w], (0, 0, h, w)))
    if peak is None:
        log.info("tile=auto: peak memory cannot be measured here; using tiles of 512 px")
        return max(min(max(H, W), 512), overlap + 1)
    per_pixel = peak / (h * w) * _TILE_SEQUENCE_SLACK
    image_buffers = (B * C + 1) * H * W * x.element_size()   # tiled_forward's output and blending weights
    if per_pixel * H * W <= budget_bytes:
        return whole
    tile = math.isqrt(int(max(0, budget_bytes - image_buffers) / per_pixel)) // multiple * multiple
    smallest = max(min_size, 2 * overlap + multiple)
    if tile < smallest:
        need = (per_pixel * smallest ** 2 + image_buffers) / 2**20
        raise ValueError(f"memory_budget_mb={budget_bytes / 2**20:.0f} leaves room for tiles of only {tile} px on "
                         f"this {H}x{W} image (tiles of {smallest} px with overlap={overlap} need about "
                         f"{need:.0f} MB); raise memory_budget_mb, lower overlap, or set tile= explicitly")
    log.info("tile=auto: %d px tiles for a %dx%d image (%.2f kB per pixel measured with slack, budget %.0f MB)",
             tile, H, W, per_pixel / 1024, budget_bytes / 2**20)
    return tile
