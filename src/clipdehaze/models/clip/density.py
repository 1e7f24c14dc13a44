"""Zero-shot haze density maps from dense CLIP features.

The map is P(hazy) per location: dense image features, unit-normalised in CLIP's joint space, are scored against
the class embeddings of a prompt set (``haze_level``: hazy vs clear), ``softmax(logit_scale * cos)`` over the
classes, and the probability of the ``positive`` class is kept. This low-resolution *density grid* is upsampled
bilinearly (``align_corners=False``) to the image size; :func:`crop_density` crops a cached grid to a training
crop with exactly the same sampling, so a cached map and a live map of the full image agree pixel for pixel.

Dense features, per backbone (``method``):

``vv`` (ViT, the default for ViTs)
    Value-value attention in the last block (CLIP Surgery, Li et al. 2023; SCLIP / ClearCLIP 2024): tokens from
    block L-1 go through the last block's ``ln_1`` and value projection, attend to each other with
    ``softmax(v v^T / sqrt(d))`` per head, then ``out_proj``; the residual branch and the MLP of that block are
    dropped (ClearCLIP shows both add noise to dense maps), then ``ln_post`` and ``proj`` map each patch token
    into the joint space. q-k attention in CLIP's last block attends to a few global tokens, which is why plain
    output tokens give near-constant maps.
``value`` (ViT or ModifiedResNet; the default for ResNets)
    MaskCLIP (Zhou et al., ECCV 2022): the value embedding alone. ViT: ``out_proj(v)`` of the last block (no
    attention, no residual, no MLP), then ``ln_post`` and ``proj``. ModifiedResNet: the attention pool is
    skipped and its ``v_proj`` and ``c_proj`` are applied as 1x1 convolutions to the layer4 feature map.
``windows`` (any backbone; ``auto`` falls back to it when neither applies)
    Sliding windows: the image is cut into overlapping ``image_size`` crops (stride ``window_stride``, the last
    window flush with the border), each crop's *global* embedding is scored, each window's P(hazy) is averaged
    into the pixels it covers, and the averaged map is area-pooled to cells of ``image_size // 8`` pixels.

Resolution: the image is resized so its short side is ``size`` (default ``2 * image_size``: a 14x14 grid for
ViT-B/32 on a square image), each side rounded to a multiple of the backbone stride (patch size, or 32 for
ModifiedResNet). ViT positional embeddings are resized bicubically to the new grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor

from clipdehaze.models.clip.prompts import options_from_mapping

METHODS = ("auto", "vv", "value", "windows")


@dataclass(frozen=True)
class DensityOptions:
    """How :meth:`FrozenCLIP.density_map` is computed (fields as in the module docstring)."""

    method: str = "auto"
    size: int | None = None
    prompt_set: str = "haze_level"
    positive: str = "hazy"
    logit_scale: float | None = None  # None: the model's own (100 for OpenAI CLIP)
    window_stride: int | None = None  # None: image_size // 2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"density method {self.method!r} not in {METHODS}")
        if self.size is not None and self.size < 16:
            raise ValueError(f"density size must be >= 16 px, got {self.size}")
        if self.window_stride is not None and self.window_stride < 1:
            raise ValueError(f"window_stride must be >= 1, got {self.window_stride}")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> "DensityOptions":
        return options_from_mapping(cls, options, "density")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dense_kind(visual: torch.nn.Module) -> str | None:
    """``"vit"`` / ``"resnet"`` when the tower has a dense path, else None (only windows work)."""
    if isinstance(visual, ModifiedResNet):
        return "resnet"
    # Only the plain CLIP ViT: attentional poolers, avg pooling or custom blocks (qk-norm, head scaling...)
    # change what the last block computes, and the v-v / value surgery would then be a different model.
    if (isinstance(visual, VisionTransformer) and visual.attn_pool is None and visual.pool_type == "tok"
            and not visual.final_ln_after_pool and visual.proj is not None
            and isinstance(visual.transformer.resblocks[-1], ResidualAttentionBlock)):
        return "vit"
    return None


def resolve_method(method: str, kind: str | None) -> str:
    """``auto`` -> the best method for this backbone; an explicit method the backbone lacks is an error."""
    if method == "auto":
        return {"vit": "vv", "resnet": "value", None: "windows"}[kind]
    if method == "vv" and kind != "vit":
        raise ValueError("density method 'vv' needs a plain CLIP ViT image tower; use 'value' or 'windows'")
    if method == "value" and kind is None:
        raise ValueError("density method 'value' needs a CLIP ViT or ModifiedResNet image tower; use 'windows'")
    return method


def backbone_stride(visual: torch.nn.Module) -> int:
    if isinstance(visual, VisionTransformer):
        return visual.patch_size[0]
    return 32  # ModifiedResNet: stem /4, then layers 2-4 each /2


def resized_hw(height: int, width: int, short_side: int, multiple: int = 1) -> tuple[int, int]:
    """Scale so the short side is ``short_side``, each side rounded to a multiple of ``multiple`` (>= one)."""
    scale = short_side / min(height, width)

    def r(v: int) -> int:
        return max(multiple, int(round(v * scale / multiple)) * multiple)

    return r(height), r(width)


def _resize_pos_embed(pos: Tensor, old: tuple[int, int], new: tuple[int, int]) -> Tensor:
    if tuple(old) == tuple(new):
        return pos
    cls_tok, grid = pos[:1], pos[1:]
    grid = grid.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls_tok, grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)], dim=0)


def vit_dense(visual: VisionTransformer, pixels: Tensor, method: str) -> Tensor:
    """(B, D, h, w) patch features in CLIP's joint space (not normalised); ``method`` is ``vv`` or ``value``."""
    b, _, height, width = pixels.shape
    ph, pw = visual.patch_size
    grid = (height // ph, width // pw)
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)  # (B, h*w, C)
    cls_tok = visual.class_embedding.to(x.dtype).expand(b, 1, -1)
    x = torch.cat([cls_tok, x], dim=1)
    x = x + _resize_pos_embed(visual.positional_embedding, visual.grid_size, grid).to(x.dtype)
    x = visual.ln_pre(x)  # patch dropout is the identity in eval mode

    blocks = visual.transformer.resblocks
    batch_first = visual.transformer.batch_first
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks[:-1]:
        x = blk(x)
    if not batch_first:
        x = x.transpose(0, 1)

    last = blocks[-1]
    attn = last.attn  # nn.MultiheadAttention: packed q/k/v in in_proj_weight
    c = x.shape[-1]
    bias = attn.in_proj_bias[2 * c:] if attn.in_proj_bias is not None else None
    v = F.linear(last.ln_1(x), attn.in_proj_weight[2 * c:], bias)  # (B, L, C)
    if method == "vv":
        heads = attn.num_heads
        vh = v.reshape(b, v.shape[1], heads, c // heads).transpose(1, 2)
        v = F.scaled_dot_product_attention(vh, vh, vh).transpose(1, 2).reshape(b, -1, c)
    tokens = visual.ln_post(attn.out_proj(v))[:, 1:] @ visual.proj  # drop the class token
    return tokens.transpose(1, 2).reshape(b, -1, grid[0], grid[1])


def resnet_dense(visual: ModifiedResNet, pixels: Tensor) -> Tensor:
    """(B, D, h, w): MaskCLIP's attention-pool-free features (v_proj then c_proj as 1x1 convolutions)."""
    x = visual.stem(pixels)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    x = F.conv2d(x, pool.v_proj.weight[:, :, None, None], pool.v_proj.bias)
    return F.conv2d(x, pool.c_proj.weight[:, :, None, None], pool.c_proj.bias)


def _starts(length: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)  # the last window sits flush with the border so every pixel is covered
    return starts


@dataclass(frozen=True)
class WindowLayout:
    """Where the sliding windows lie in the resized image, and the grid their average is pooled to."""

    tops: tuple[int, ...]
    lefts: tuple[int, ...]
    window: int
    canvas_hw: tuple[int, int]
    grid_hw: tuple[int, int]

    @classmethod
    def build(cls, height: int, width: int, window: int, stride: int) -> "WindowLayout":
        cell = max(1, window // 8)
        return cls(tuple(_starts(height, window, stride)), tuple(_starts(width, window, stride)), window,
                   (height, width), (math.ceil(height / cell), math.ceil(width / cell)))

    def crops(self, pixels: Tensor) -> Tensor:
        """(B, 3, H', W') -> (B * n_windows, 3, window, window), windows row-major per image."""
        w = self.window
        crops = [pixels[:, :, t:t + w, l:l + w] for t in self.tops for l in self.lefts]
        return torch.stack(crops, dim=1).flatten(0, 1)

    def to_grid(self, scores: Tensor) -> Tensor:
        """(B, 1, n_tops, n_lefts) per-window scores -> (B, 1, *grid_hw): averaged into pixels, area-pooled."""
        b = scores.shape[0]
        canvas = scores.new_zeros(b, 1, *self.canvas_hw)
        count = scores.new_zeros(1, 1, *self.canvas_hw)
        w = self.window
        for i, t in enumerate(self.tops):
            for j, l in enumerate(self.lefts):
                canvas[:, :, t:t + w, l:l + w] += scores[:, :, i:i + 1, j:j + 1]
                count[:, :, t:t + w, l:l + w] += 1
        return F.adaptive_avg_pool2d(canvas / count, self.grid_hw)


def upsample_density(grid: Tensor, height: int, width: int) -> Tensor:
    """Density grid (B, 1, h, w) -> map (B, 1, H, W), bilinear with ``align_corners=False``."""
    if tuple(grid.shape[-2:]) == (height, width):
        return grid
    return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)


def crop_density(grid: Tensor, image_hw: tuple[int, int], box: tuple[int, int, int, int],
                 out_hw: tuple[int, int] | None = None) -> Tensor:
    """The part of a density grid under a crop box of the original image.

    ``grid`` (..., h, w) covers the whole image of size ``image_hw = (H, W)``; ``box = (top, left, height,
    width)`` in image pixels (the crop the data module took). Returns (..., out_h, out_w) (default: the box size),
    equal to ``upsample_density(grid, H, W)[..., top:top+height, left:left+width]`` at full resolution but
    without building the full-size map. Flips / 90-degree rotations of the crop are applied by the caller
    to the returned map, exactly as to the image.
    """
    big_h, big_w = image_hw
    top, left, height, width = box
    if not (0 <= top and 0 <= left and top + height <= big_h and left + width <= big_w and height > 0 < width):
        raise ValueError(f"crop box {box} (top, left, height, width) does not fit an image of size {image_hw}")
    out_h, out_w = out_hw or (height, width)
    lead = grid.shape[:-2]
    g = grid.reshape(-1, 1, *grid.shape[-2:])
    # Output pixel centres in original-image coordinates, then in grid_sample's [-1, 1] (align_corners=False:
    # -1 and 1 are the outer edges of the image), which is the sampling F.interpolate uses for the full map.
    ys = top + (torch.arange(out_h, dtype=torch.float64) + 0.5) * (height / out_h)
    xs = left + (torch.arange(out_w, dtype=torch.float64) + 0.5) * (width / out_w)
    ys = (2 * ys / big_h - 1).to(g.dtype)
    xs = (2 * xs / big_w - 1).to(g.dtype)
    coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).to(g.device)  # (out_h, out_w, [x, y])
    out = F.grid_sample(g, coords.expand(g.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.reshape(*lead, out_h, out_w)
