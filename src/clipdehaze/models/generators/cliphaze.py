"""CLIPHaze: window self-attention and a 2-D selective scan in parallel, fused per pixel under CLIP's guidance.

Paper: X. Zhang, F. Xie, H. Ding, L. Pan, Z. Shi, "Adapt CLIP as Aggregation Instructor for Image Dehazing",
arXiv:2408.12317 v1, 2024 (v2 and v3 of the same arXiv entry rename the method DehazeMatic and change its
aggregator; v3 also moves the haze density estimation inside the network).
Upstream: none published ("code will be public after acceptance"). This file is our own implementation of the
mechanism as v1 describes it, MIT licence (this project's). What v1 fixes, we follow:

* a symmetric, hierarchical encoder-decoder: a convolution extracts shallow features, stages of hybrid blocks
  (v1's TrambaDA, "Transformer-Mamba Dual Aggregation" blocks) run at 1, 1/2, 1/4, 1/2 and 1 of the input
  resolution, and a reconstruction convolution predicts the output;
* each hybrid block feeds the same normalised features to two parallel paths: non-overlapping window
  self-attention (local, fine-grained) and an SS2D selective scan (VMamba/MambaIR, global context);
* the CLIP-instructed Aggregation Module (CAM) fuses the two paths per pixel, instructed *explicitly* by a
  zero-shot CLIP haze density map and *implicitly* by the CLIP image embedding.

Every choice v1 leaves open is ours and listed here and in ``experiments/cliphaze/README.md``:

1. CAM = per-pixel softmax over the two paths. A pointwise layer (``cam_ratio`` x channels hidden units) reads
   the concatenated path outputs and the density map at the stage's resolution (area-averaged from the input
   resolution); the image embedding modulates its hidden units by FiLM (per-channel scale ``1 + γ`` and shift
   ``β``), then GELU and a pointwise layer give two logits per pixel: ``out = w_attn · attn + w_ssm · ssm`` with
   ``w_attn + w_ssm = 1``. One weight per pixel (not per channel): v1 chooses "the neural operation range for
   each pixel".
2. The embedding goes through one shared adapter (LayerNorm, linear ``clip_dim -> cond_dim``, GELU) and each
   CAM owns only a small ``cond_dim -> 2·hidden`` FiLM layer, so the 512-wide embedding does not cost a
   512-wide layer per block. FiLM rather than cross-attention: the embedding is a single vector, so attention
   over one key would collapse to a gate anyway.
3. The density map is CLIP's zero-shot P(hazy) from :class:`clipdehaze.models.clip.FrozenCLIP` (fixed prompts,
   no prompt learning). The embedding: v1 calls it a "high-quality image embedding without degradation
   information", which only a restored image (or a CLIP adapter that removes the degradation, as DA-CLIP's content
   embedding does) can give. ``embedding_of="input"`` (default) embeds the hazy input, the cue available before
   the network has run; ``embedding_of="first_pass"`` embeds restored content instead: the network runs once
   (without gradient) with the input's embedding, and its output's embedding instructs the second, returned pass
   (about twice the compute; CLIP input ``image_encoder``, a function, so it is computed live, never cached).
4. Transformer path: single-head attention by default (v1), relative-position bias from DehazeFormer's
   position MLP (:class:`clipdehaze.models.layers.WindowAttention`), window 8, no shifted windows (the SS2D path
   already mixes across windows).
5. Mamba path: :class:`clipdehaze.models.ssm.SS2D` (4 scan directions) at the stage's full resolution, with
   ``d_state=1`` and ``ssm_expand=1`` (constructor knobs). VMamba's own later configurations use
   ``d_state=1``; MambaIR's 16 and 2 make one full-resolution block of the pure-PyTorch CPU scan cost more than
   a whole DehazeFormer-S train step. On a GPU with mamba-ssm, ``d_state=16, ssm_expand=2`` is MambaIR's size.
6. Block: pre-LayerNorm, ``x + CAM(attn(LN x), ssm(LN x))``, then ``x + FFN(LN x)`` with a 3x3 depthwise
   convolution between the two pointwise layers of the FFN (local mixing the attention windows lack at their
   borders).
7. Skeleton: DehazeFormer's, :mod:`clipdehaze.models.unet` (2x2 strided conv down, 1x1 conv + pixel shuffle up,
   SK fusion of the skips, without DehazeFormer's 1x1 skip projections); reconstruction: reflect-padded 3x3 conv to
   RGB added to the input (global residual, [0, 1] images, output not clamped).
8. Any input size: reflect padding to a multiple of ``window_size · 4`` (whole windows at the 1/4 stage),
   output cropped back.

Ablation switches (constructor and ``cliphaze.yaml``, ``model.<switch>=``): ``cam_density`` and ``cam_embedding`` turn
the two CLIP cues of the CAM on and off; ``aggregation="sum"`` or ``"concat"`` replaces the CAM by plain
addition or by concatenation and a pointwise projection, using no CLIP input at all (the CAM switches are then
ignored). ``clip_inputs`` (an instance attribute) names exactly the CLIP inputs the configuration uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.init import trunc_normal_

from clipdehaze.models.layers import WindowAttention, fused_linear, softmax
from clipdehaze.models.registry import register_generator
from clipdehaze.models.ssm import SS2D
from clipdehaze.models.unet import BasicLayer, UNet5, check_per_stage
from clipdehaze.models.variants import variant_factories

__all__ = ["AGGREGATIONS", "EMBEDDING_SOURCES", "WindowSelfAttention", "FeedForward", "CLIPAggregation",
           "SumAggregation", "ConcatAggregation", "DualPathBlock", "CLIPHaze"]

AGGREGATIONS = ("cam", "sum", "concat")
EMBEDDING_SOURCES = ("input", "first_pass")


def _init_linear(m: nn.Linear, std: float = 0.02) -> None:
    # Swin / MambaIR initialisation for every linear layer outside SS2D (SS2D keeps Mamba's own init).
    trunc_normal_(m.weight, std=std)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _reflect_pad(x: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Reflect-pad bottom/right by any amount: reflection needs pad < side, so large pads go in steps."""
    while pad_h > 0 or pad_w > 0:
        h, w = x.shape[-2:]
        step_h, step_w = min(pad_h, h - 1), min(pad_w, w - 1)
        if (pad_h and not step_h) or (pad_w and not step_w):  # a 1-pixel side cannot reflect
            return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return x


class WindowSelfAttention(nn.Module):
    """The local path: multi-head self-attention inside non-overlapping ``window_size``² windows.

    (B, H, W, C) channel-last -> the attention output, window-major: (B, H/ws, W/ws, ws, ws, C), which the block's
    aggregation reads as a view of the map. H and W must be multiples of ``window_size`` (:class:`CLIPHaze` pads).
    ``extra`` (a function, called in the forward) gives ``(weight, bias, keep)``: ``weight @ out + bias`` is appended
    as more channels in the output projection's matmul (:func:`clipdehaze.models.layers.fused_linear`; with
    ``keep=False`` only those). A function, not tensors, so that hooks on the module see no parameter views as inputs.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.proj = nn.Linear(dim, dim)
        _init_linear(self.qkv)
        _init_linear(self.proj)

    def forward(self, x: Tensor, extra: Callable[[], tuple[Tensor | None, Tensor | None, bool]] | None = None) -> Tensor:
        B, H, W, C = x.shape
        ws = self.window_size
        # The one layout copy of the path: the normalised map (C channels) into window order, a temporary freed by
        # the QKV projection, which then writes Q, K and V window-major for the attention to read as views.
        qkv = self.qkv(x.reshape(B, H // ws, ws, W // ws, ws, C).transpose(2, 3).reshape(-1, ws * ws, C))
        out = self.attn.attend_windows(qkv)
        del qkv
        out = fused_linear(out, self.proj, *(extra() if extra is not None else ()))
        return out.view(B, H // ws, W // ws, ws, ws, -1)


def _as_split_maps(window_major: Tensor, *maps: Tensor | None) -> tuple[Tensor | None, ...]:
    """A window-major (B, nh, nw, ws, ws, ·) tensor and row-major (B, H, W, ·) maps, all as views shaped
    (B, nh, ws, nw, ws, ·) that index the same pixel at the same position: elementwise operations combine them
    without reordering either."""
    B, nh, nw, ws = window_major.shape[:4]
    return (window_major.transpose(2, 3),
            *(m.view(B, nh, ws, nw, ws, *m.shape[3:]) if m is not None else None for m in maps))


def _merged(t: Tensor) -> Tensor:
    """(B, nh, ws, nw, ws, ·) laid out row-major (an elementwise result whose first operand was a row-major map)
    -> (B, H, W, ·), a view."""
    B, nh, ws, nw = t.shape[:4]
    return t.view(B, nh * ws, nw * ws, *t.shape[5:])


class FeedForward(nn.Module):
    """Pointwise expand, 3x3 depthwise conv, GELU, pointwise project; (B, H, W, C) -> same."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        _init_linear(self.fc1)
        _init_linear(self.fc2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        # The permutes are free views: (B, H, W, C) contiguous is NCHW in channels_last, which conv2d keeps.
        h = self.dwconv(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        # Without autograd, GELU in place: the widest map of the block exists once, not twice.
        return self.fc2(torch.ops.aten.gelu_(h) if not torch.is_grad_enabled() else F.gelu(h))


class CLIPAggregation(nn.Module):
    """CAM: per-pixel softmax weights over the attention and SS2D paths, instructed by CLIP.

    Hidden units ``h = W [attn, ssm, density]`` (density only with ``use_density``), FiLM-modulated by the
    adapted image embedding ``cond`` (only with ``cond_dim``): ``h · (1 + γ(cond)) + β(cond)``; then
    ``softmax(W' GELU(h))`` over the two paths gives the per-pixel weights.

    :meth:`reference` computes exactly that from the two paths' outputs. What the block runs is the same, arranged
    so that no concatenation is made: ``W`` splits into its attention, SS2D and density columns; the first two are
    linear maps of the paths' outputs, so each path appends its share of ``h`` to its own output in its output
    projection's matmul (:meth:`extra` names what to append); the density column is a per-pixel multiply-add; and
    the softmax over two logits is the sigmoid of their difference: ``out = lerp(ssm, attn, σ(l_attn - l_ssm))``
    (:meth:`forward`). The parameters are the same.
    """

    def __init__(self, dim: int, hidden: int, use_density: bool = True, cond_dim: int | None = None):
        super().__init__()
        self.dim = dim
        self.use_density = use_density
        self.reduce = nn.Linear(2 * dim + int(use_density), hidden)
        self.film = nn.Linear(cond_dim, 2 * hidden) if cond_dim else None
        self.logits = nn.Linear(hidden, 2)
        for m in (self.reduce, self.film, self.logits):
            if m is not None:
                _init_linear(m)

    def path_weights(self, attn: Tensor, ssm: Tensor, density: Tensor | None = None,
                     cond: Tensor | None = None) -> Tensor:
        """(B, H, W, 2) softmax weights of (attention, SS2D) per pixel."""
        feats = [attn, ssm, density] if self.use_density else [attn, ssm]
        h = self.reduce(torch.cat(feats, dim=-1))
        if self.film is not None:
            gamma, beta = self.film(cond)[:, None, None, :].chunk(2, dim=-1)
            h = h * (1 + gamma) + beta
        return softmax(self.logits(F.gelu(h)), dim=-1)

    def reference(self, attn: Tensor, ssm: Tensor, density: Tensor | None = None,
                  cond: Tensor | None = None) -> Tensor:
        """The CAM's output from the two paths' (B, H, W, C) outputs, as defined above."""
        w = self.path_weights(attn, ssm, density, cond)
        return w[..., :1] * attn + w[..., 1:] * ssm

    def extra(self, path: str) -> tuple[Tensor | None, Tensor | None, bool]:
        """(weight, bias, keep) that ``path`` ("attn" or "ssm") appends to its output: its share of ``h``."""
        C, w = self.dim, self.reduce.weight
        return (w[:, :C], None, True) if path == "attn" else (w[:, C:2 * C], self.reduce.bias, True)

    def forward(self, attn: Tensor, ssm: Tensor, density: Tensor | None = None,
                cond: Tensor | None = None) -> Tensor:
        """``attn`` window-major (B, H/ws, W/ws, ws, ws, C + hidden) and ``ssm`` row-major (B, H, W, C + hidden), each
        a path's output with its :meth:`extra` appended; ``density`` (B, H, W, 1) -> (B, H, W, C)."""
        C = self.dim
        attn, ssm, density = _as_split_maps(attn, ssm, density)
        h = ssm[..., C:] + attn[..., C:]
        if self.use_density:
            h = torch.addcmul(h, density, self.reduce.weight[:, 2 * C])
        if self.film is not None:
            gamma, beta = self.film(cond)[:, None, None, None, None, :].chunk(2, dim=-1)
            h = torch.addcmul(beta, h, 1 + gamma)
        lw, lb = self.logits.weight, self.logits.bias
        z = F.linear(F.gelu(h), lw[:1] - lw[1:], lb[:1] - lb[1:])
        # σ in at least float32, as the softmax it replaces (layers.softmax): under bf16 autocast too.
        w_attn = torch.sigmoid(z.to(torch.promote_types(z.dtype, torch.float32))).to(z.dtype)
        return _merged(torch.lerp(ssm[..., :C], attn[..., :C], w_attn))


class SumAggregation(nn.Module):
    """Ablation: ``attn + ssm``, no CLIP. Arguments as :class:`CLIPAggregation`'s."""

    def reference(self, attn: Tensor, ssm: Tensor, density: Tensor | None = None,
                  cond: Tensor | None = None) -> Tensor:
        return attn + ssm

    def extra(self, path: str) -> tuple[Tensor | None, Tensor | None, bool]:
        return None, None, True

    def forward(self, attn: Tensor, ssm: Tensor, density: Tensor | None = None,
                cond: Tensor | None = None) -> Tensor:
        attn, ssm = _as_split_maps(attn, ssm)
        return _merged(ssm + attn)


class ConcatAggregation(nn.Module):
    """Ablation: pointwise projection of ``[attn, ssm]``, no CLIP. Arguments as :class:`CLIPAggregation`'s.

    ``proj [attn, ssm] = P_a attn + P_s ssm + b``: each path outputs only its term (folded into its own output
    projection), and the aggregation adds them."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(2 * dim, dim)
        _init_linear(self.proj)

    def reference(self, attn: Tensor, ssm: Tensor, density: Tensor | None = None,
                  cond: Tensor | None = None) -> Tensor:
        return self.proj(torch.cat([attn, ssm], dim=-1))

    def extra(self, path: str) -> tuple[Tensor | None, Tensor | None, bool]:
        C, w = self.dim, self.proj.weight
        return (w[:, :C], None, False) if path == "attn" else (w[:, C:], self.proj.bias, False)

    def forward(self, attn: Tensor, ssm: Tensor, density: Tensor | None = None,
                cond: Tensor | None = None) -> Tensor:
        attn, ssm = _as_split_maps(attn, ssm)
        return _merged(ssm + attn)


class DualPathBlock(nn.Module):
    """Hybrid block (v1's TrambaDA): ``x + Agg(attn(LN x), SS2D(LN x))``, then ``x + FFN(LN x)``.

    Takes and returns the skeleton's (B, C, H, W) channels_last maps and works on their (B, H, W, C) token views
    (free permutes both ways); ``density`` is the (B, H, W, 1) map at the block's scale.

    Layouts: the token map stays row-major (what the depthwise convolutions and the scan read in place); the
    attention path works window-major from one copy of the normalised map on; the two paths meet in the
    aggregation, which reads the window-major attention output as a view of the map and writes row-major. Each
    path's output projection also computes what the aggregation needs of its output (``aggregate.extra``).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, d_state: int,
                 ssm_expand: float, aggregation: str, cam_density: bool, cond_dim: int | None,
                 cam_ratio: float, scan_backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowSelfAttention(dim, window_size, num_heads)
        self.ssm = SS2D(dim, d_state=d_state, expand=ssm_expand, scan_backend=scan_backend)
        if aggregation == "cam":
            self.aggregate = CLIPAggregation(dim, max(4, int(dim * cam_ratio)), cam_density, cond_dim)
        elif aggregation == "concat":
            self.aggregate = ConcatAggregation(dim)
        else:
            self.aggregate = SumAggregation()
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, density: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        x = _to_tokens(x)
        y = self.norm1(x)
        # The attention first: at inference its Q, K and V, the block's largest buffers, are gone before the scan.
        attn = self.attn(y, partial(self.aggregate.extra, "attn"))
        ssm = self.ssm(y, partial(self.aggregate.extra, "ssm"))
        del y
        x = x + self.aggregate(attn, ssm, density, cond)
        del attn, ssm
        return _to_image(x + self.ffn(self.norm2(x)))


def _to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) channels_last -> (B, H, W, C), a free view."""
    return x.permute(0, 2, 3, 1)


def _to_image(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W) with channels_last strides, a free view."""
    return x.permute(0, 3, 1, 2)


@register_generator("cliphaze")
class CLIPHaze(UNet5):
    """CLIPHaze generator: hazy RGB in [0, 1] (+ CLIP density map / image embedding) -> dehazed RGB in [0, 1]
    (not clamped), any H x W.

    Args (one entry per stage, 5 stages at scales 1, 1/2, 1/4, 1/2, 1; the variants in ``cliphaze.yaml``):
        embed_dims: channels; stages 2/4 and 1/5 must match (skip fusion).
        depths: hybrid blocks per stage.
        num_heads: attention heads of the window path.
        mlp_ratios: FFN hidden width / channels.
        window_size: attention window side (inputs are padded to multiples of ``4 · window_size``).
        d_state, ssm_expand: SS2D state size and inner width factor.
        aggregation: ``cam`` (CLIP-instructed), ``sum`` or ``concat`` (ablations without CLIP).
        cam_density, cam_embedding: the CAM's CLIP cues (ignored unless ``aggregation == "cam"``).
        embedding_of: what the embedding cue embeds, ``input`` (the hazy image) or ``first_pass`` (the network's
            own output of a first pass, see the module docstring).
        clip_dim: width of the CLIP image embedding (512 for ViT-B/32 and ViT-B/16, 1024 for RN50).
        cond_dim: width of the shared embedding adapter feeding every CAM's FiLM layer.
        cam_ratio: CAM hidden width / channels.
        scan_backend: SS2D's selective-scan backend (``auto``: on GPU mamba-ssm's kernel when installed, else Triton).
    """

    def __init__(self, embed_dims: Sequence[int] = (24, 48, 96, 48, 24), depths: Sequence[int] = (1, 2, 8, 2, 1),
                 num_heads: Sequence[int] = (1, 1, 1, 1, 1), mlp_ratios: Sequence[float] = (2.0,) * 5,
                 window_size: int = 8, d_state: int = 1, ssm_expand: float = 1.0, aggregation: str = "cam",
                 cam_density: bool = True, cam_embedding: bool = True, embedding_of: str = "input",
                 clip_dim: int = 512, cond_dim: int = 64, cam_ratio: float = 0.5, in_chans: int = 3,
                 scan_backend: str = "auto"):
        check_per_stage(depths=depths, num_heads=num_heads, mlp_ratios=mlp_ratios)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if embedding_of not in EMBEDDING_SOURCES:
            raise ValueError(f"embedding_of must be one of {EMBEDDING_SOURCES}, got {embedding_of!r}")
        use_density = aggregation == "cam" and bool(cam_density)
        use_embedding = aggregation == "cam" and bool(cam_embedding)
        # One adapter for the whole network: every CAM reads the same conditioning vector.
        adapter = None
        if use_embedding:
            adapter = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, cond_dim), nn.GELU())
            _init_linear(adapter[1])

        def stage(i: int) -> BasicLayer:
            return BasicLayer(
                DualPathBlock(embed_dims[i], num_heads=num_heads[i], window_size=window_size, mlp_ratio=mlp_ratios[i],
                              d_state=d_state, ssm_expand=ssm_expand, aggregation=aggregation,
                              cam_density=use_density, cond_dim=cond_dim if use_embedding else None,
                              cam_ratio=cam_ratio, scan_backend=scan_backend)
                for _ in range(depths[i]))

        super().__init__(embed_dims, stage, in_chans, out_chans=in_chans, skip_projections=False,
                         leading={"embed_adapter": adapter})
        self.aggregation = aggregation
        self.cam_density = use_density
        self.cam_embedding = use_embedding
        self.embedding_of = embedding_of if use_embedding else "input"
        self.clip_dim = clip_dim
        self.window_size = window_size
        self.pad_multiple = window_size * self.patch_size
        embedding = "image_encoder" if self.embedding_of == "first_pass" else "image_embedding"
        # What the LightningModule asks FrozenCLIP for: exactly the cues this configuration reads.
        self.clip_inputs: tuple[str, ...] = ("density_map",) * use_density + (embedding,) * use_embedding

    def extra_repr(self) -> str:
        return (f"aggregation={self.aggregation!r}, cam_density={self.cam_density}, "
                f"cam_embedding={self.cam_embedding}, embedding_of={self.embedding_of!r}, "
                f"clip_inputs={self.clip_inputs}")

    def _check_inputs(self, x: Tensor, clip: dict[str, Any]) -> None:
        if unexpected := sorted(n for n, v in clip.items() if v is not None and n not in self.clip_inputs):
            raise TypeError(f"this CLIPHaze (clip_inputs={self.clip_inputs}) does not use {', '.join(unexpected)}")
        if missing := [n for n in self.clip_inputs if clip.get(n) is None]:
            raise ValueError(f"this CLIPHaze (clip_inputs={self.clip_inputs}) needs {', '.join(missing)}; pass "
                             f"FrozenCLIP.generator_inputs(model.clip_inputs, x)")
        B = x.shape[0]
        density_map = clip.get("density_map")
        if density_map is not None and (density_map.dim() != 4 or density_map.shape[:2] != (B, 1)):
            raise ValueError(f"density_map must be (B, 1, h, w) with B={B}, got {tuple(density_map.shape)}")
        if "image_encoder" in clip and not callable(clip["image_encoder"]):
            raise TypeError("image_encoder must be a function from (B, 3, H, W) images in [0, 1] to (B, clip_dim) "
                            "embeddings (FrozenCLIP.generator_inputs provides it)")
        self._check_embedding(clip.get("image_embedding"), B)

    def _check_embedding(self, embedding: Tensor | None, batch: int) -> None:
        if embedding is not None and tuple(embedding.shape) != (batch, self.clip_dim):
            raise ValueError(f"image_embedding must be (B, clip_dim) = ({batch}, {self.clip_dim}), got "
                             f"{tuple(embedding.shape)}; set clip_dim to the CLIP's embedding width")

    def _density_pyramid(self, density_map: Tensor, size: tuple[int, int], pad: tuple[int, int]) -> list[Tensor]:
        """(B, 1, h, w) -> channel-last maps at the three stage resolutions of the padded input."""
        d = density_map.to(dtype=self.patch_embed.proj.weight.dtype)
        if tuple(d.shape[-2:]) != size:  # e.g. a cached low-resolution grid
            d = F.interpolate(d, size=size, mode="bilinear", align_corners=False)
        d = _reflect_pad(d, *pad)
        # Area averaging: each stage sees the mean haze density of the pixels its features cover.
        pyramid = [d, F.avg_pool2d(d, 2), F.avg_pool2d(d, 4)]
        return [_to_tokens(p.contiguous(memory_format=torch.channels_last)) for p in pyramid]

    def _restore(self, xp: Tensor, density: list[Tensor] | None, embedding: Tensor | None) -> Tensor:
        """One pass on the padded channels_last image: the input plus the predicted residual."""
        cond = self.embed_adapter(embedding.to(xp.dtype)) if self.embed_adapter is not None else None
        scale_inputs = [{"density": d, "cond": cond} for d in (density or (None, None, None))]
        return xp + self.forward_features(xp, scale_inputs)

    def forward(self, x: Tensor, **clip: Any) -> Tensor:
        """(B, 3, H, W) hazy RGB in [0, 1] -> (B, 3, H, W) dehazed RGB, nominally [0, 1] but not clamped.

        CLIP inputs, required exactly when named in :attr:`clip_inputs`: ``density_map`` (B, 1, h, w) in [0, 1]
        (resized to H x W when it differs), ``image_embedding`` (B, clip_dim), or ``image_encoder`` (a function
        embedding (B, 3, H, W) [0, 1] images) with ``embedding_of="first_pass"``.
        """
        self._check_inputs(x, clip)
        H, W = x.shape[-2:]
        m = self.pad_multiple
        pad = ((m - H % m) % m, (m - W % m) % m)
        density_map = clip.get("density_map")
        density = self._density_pyramid(density_map, (H, W), pad) if density_map is not None else None
        xp = _reflect_pad(x, *pad).contiguous(memory_format=torch.channels_last)
        embedding = clip.get("image_embedding")
        if self.embedding_of == "first_pass":
            encode = clip["image_encoder"]
            # The first pass only feeds the (frozen, gradient-free) encoder: no graph to keep.
            with torch.no_grad():
                hazy = encode(x)
                self._check_embedding(hazy, x.shape[0])
                restored = self._restore(xp, density, hazy)[:, :, :H, :W].clamp(0, 1)
                embedding = encode(restored)
        return self._restore(xp, density, embedding)[:, :, :H, :W]


#: cliphaze_t(**kwargs) ... cliphaze_test(**kwargs): the variants of cliphaze.yaml as factories.
__getattr__ = variant_factories(__name__)
