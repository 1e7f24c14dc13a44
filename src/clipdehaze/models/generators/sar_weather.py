"""SAR weather net: a Spatially-Adaptive Residual encoder, CLIP Weather Prior (CWP) tokens and CLIP Soft Residual
Distillation (CLIP-SRD), for single-model all-weather restoration.

Paper: Z. Tan, Y. Wu, Q. Liu, Q. Chu, L. Lu, J. Ye, N. Yu, "Exploring the Application of Large-scale Pre-trained
Models on Adverse Weather Removal", IEEE Transactions on Image Processing, 2024 (doi:10.1109/TIP.2024.3368961,
arXiv:2306.09008).
Upstream: none (the paper promises code; none was released). This file is our own implementation from the
paper's description; what the paper states and what we chose are listed below and in
``experiments/sar_weather/README.md`` ("Our reading of the SAR weather net").

What the paper states (its abstract; we could not read the method sections):

* a Spatially-Adaptive Residual (SAR) encoder "extracts degraded areas adaptively";
* CLIP-SRD, a training strategy that transfers CLIP's spatial knowledge "between clean and adverse weather
  images" into the SAR encoder;
* CWP embedding: a sample-specific weather prior from the CLIP image encoder, integrated with
  "distribution-specific information learned by a set of parameters", embedded through cross attention.

Our choices where the paper leaves the design open:

* **Backbone.** A 3-level convolutional U-Net (full, 1/2, 1/4 resolution; widths ``dims``), DehazeFormer-style
  reflect-padded 3x3 stem and tail, strided 2x2 convolutions down, 1x1 conv + pixel shuffle up, selective-kernel
  fusion (:class:`~clipdehaze.models.layers.SKFusion`) of skips. The tail predicts a residual added to the input
  (``y = x + tail(f)``); the tail is zero-initialised so the untrained net is the identity. Inputs of any size are
  padded to a multiple of 4 (reflect; replicate below 4 px) and the output is cropped back.
* **SAR block.** ``x + g(x) * R(x)`` followed by a channel MLP: ``R`` is a residual branch (LayerNorm, 1x1 expand,
  3x3 depthwise, GELU, 1x1) and ``g`` a per-pixel spatial gate in [0, 1] (1x1 reduce, GELU, 7x7 depthwise, 1x1
  to one channel, sigmoid): the block learns *where* the image is degraded and adds the branch's features only
  there. Decoder blocks are the same block without the gate.
* **CWP.** ``K`` learnable prototypes are the "set of parameters" holding the training distribution's weather
  information: each has a key in CLIP's joint space and a value of ``num_tokens x prior_dim``. The CLIP image
  embedding ``e`` is compared to the keys, ``s = softmax(scale * cos(e, key_k))`` with a learnable scale (init 10,
  CLIP-style log-parametrised, capped at 100); the prior tokens are ``W e`` (projected embedding, sample-specific)
  plus ``s @ values`` (weighted prototypes, distribution-specific) plus learned token embeddings, then LayerNorm.
  Each decoder level (1/4, 1/2, 1) starts with a pre-norm cross-attention (pixels are queries, prior tokens keys
  and values) whose output projection is zero-initialised, so training starts from the plain U-Net.
* **CLIP-SRD** (training only, :meth:`SARWeatherNet.auxiliary_losses`). The frozen CLIP's dense features of the
  degraded input and of the clean target (``FrozenCLIP.dense_features``, no gradient) give the residual
  ``r = f(x) - f(target)``: what the weather changed, location by location. The deepest SAR-encoder features
  from the last training forward pass go through a small head (1x1, GELU, 1x1 to ``clip_dim``, the last layer
  zero-initialised: the first prediction is "nothing changed") and are area-pooled to CLIP's grid to predict
  ``r``. The target is ``r`` divided by the batch's root-mean-square residual norm (unit mean energy, so the
  term starts near 1 whatever the CLIP backbone; relative strengths between images kept). The loss is a
  *soft*, confidence-weighted squared error: per location ``w_i = N softmax_i(|r_i| / (tau * max_j |r_j|))``
  within each image (``tau = srd_temperature``, default 0.5): locations the weather changed more weigh more,
  but the largest weight is at most ``exp(1 / tau)`` times the smallest (7.4x at 0.5), so clean locations keep
  a floor weight (they must predict "nothing changed") and a few rain streaks or drops cannot take all the
  weight; equal residuals give uniform weights. ``loss = mean_b mean_i w_i * ||p_i - r_i / rms|r| ||^2``. Its
  weight is loss config (``SARWeatherLoss.aux_weights["srd"]``), not model config.

``clip_inputs`` is ``("image_embedding",)`` with CWP and ``()`` without; SRD needs the frozen CLIP only in
training, which :class:`clipdehaze.losses.sar.SARWeatherLoss` requests (``needs_clip``), so ``srd=True`` with
``cwp=False`` still gets a prior. Nothing at inference needs the clean image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clipdehaze.models.contract import GeneratorBase
from clipdehaze.models.layers import SKFusion, softmax, without_autocast
from clipdehaze.models.registry import register_generator
from clipdehaze.models.variants import variant_factories

__all__ = ["LayerNorm2d", "SpatialGate", "SARBlock", "CLIPWeatherPrior", "PriorCrossAttention", "SRDHead",
           "SARWeatherNet", "soft_residual_distillation"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SpatialGate(nn.Module):
    """Per-pixel gate in [0, 1]: where the block's residual features are added (where the image is degraded).

    The 7x7 depthwise convolution gives the gate a wider view than the branch's 3x3, so whether a pixel is
    degraded is judged from its surroundings. The last bias starts at 0 (gate 0.5 everywhere).
    """

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        hidden = max(dim // reduction, 8)
        self.body = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 7, padding=3, groups=hidden),
            nn.Conv2d(hidden, 1, 1),
        )
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.body(x))


class SARBlock(nn.Module):
    """``x + g(x) * R(x)``, then ``+ MLP(x)``; ``gated=False`` (decoder blocks) drops ``g``."""

    def __init__(self, dim: int, expansion: float = 2.0, mlp_ratio: float = 2.0, gated: bool = True):
        super().__init__()
        hidden = int(dim * expansion)
        self.norm1 = LayerNorm2d(dim)
        self.branch = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )
        self.gate = SpatialGate(dim) if gated else None
        mlp_hidden = int(dim * mlp_ratio)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, mlp_hidden, 1), nn.GELU(), nn.Conv2d(mlp_hidden, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        r = self.branch(y)
        if self.gate is not None:
            r = self.gate(y) * r
        x = x + r
        return x + self.mlp(self.norm2(x))


def _stage(dim: int, depth: int, gated: bool) -> nn.Sequential:
    return nn.Sequential(*(SARBlock(dim, gated=gated) for _ in range(depth)))


class CLIPWeatherPrior(nn.Module):
    """CLIP image embedding + learned weather prototypes -> ``num_tokens`` prior tokens (B, T, prior_dim).

    Each prototype has a key in CLIP's joint space (matched against the image embedding) and a value in token
    space (the distribution-specific information it contributes). Tokens = projected embedding (sample-specific)
    + similarity-weighted prototype values (distribution-specific) + learned token embeddings, then LayerNorm.
    """

    def __init__(self, clip_dim: int, prior_dim: int, num_prototypes: int = 8, num_tokens: int = 4):
        super().__init__()
        if num_prototypes < 1 or num_tokens < 1:
            raise ValueError(f"num_prototypes and num_tokens must be >= 1, got {num_prototypes}, {num_tokens}")
        self.clip_dim, self.prior_dim, self.num_tokens = clip_dim, prior_dim, num_tokens
        self.prototype_keys = nn.Parameter(torch.randn(num_prototypes, clip_dim) / math.sqrt(clip_dim))
        self.prototype_values = nn.Parameter(torch.randn(num_prototypes, num_tokens * prior_dim) * 0.02)
        # CLIP's own parametrisation of a softmax scale: log-space, capped at 100 in use.
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.embed_proj = nn.Linear(clip_dim, num_tokens * prior_dim)
        self.token_embed = nn.Parameter(torch.zeros(num_tokens, prior_dim))
        self.norm = nn.LayerNorm(prior_dim)

    def weights(self, embedding: Tensor) -> Tensor:
        """(B, K) softmax weights of the prototypes for (B, clip_dim) embeddings (cosine similarity)."""
        # Cosines scaled by up to 100: autocast's bfloat16 matmul would round the logits by up to ~0.4.
        with without_autocast(embedding.device.type):
            sim = F.normalize(embedding.float(), dim=-1) @ F.normalize(self.prototype_keys.float(), dim=-1).t()
            logits = self.log_scale.float().exp().clamp(max=100.0) * sim
        return softmax(logits, dim=-1).to(embedding.dtype)

    def forward(self, embedding: Tensor) -> Tensor:
        if embedding.ndim != 2 or embedding.shape[1] != self.clip_dim:
            raise ValueError(f"image_embedding must be (B, {self.clip_dim}), got {tuple(embedding.shape)}; "
                             "set the model's clip_dim to the CLIP's embedding width")
        prior = self.embed_proj(embedding) + self.weights(embedding) @ self.prototype_values
        return self.norm(prior.view(-1, self.num_tokens, self.prior_dim) + self.token_embed)


class PriorCrossAttention(nn.Module):
    """Pre-norm cross-attention, pixels (queries) to prior tokens (keys/values); zero-initialised output."""

    def __init__(self, dim: int, prior_dim: int, head_dim: int = 32):
        super().__init__()
        self.num_heads = max(1, dim // head_dim)
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible into {self.num_heads} heads")
        self.norm = LayerNorm2d(dim)
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Linear(prior_dim, 2 * dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.num_heads
        # Heads split off the channels-last layout: views, no copies (see SARWeatherNet.forward).
        q = self.q(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, h, C // h).transpose(1, 2)
        k, v = self.kv(tokens).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # B, h, HW, C/h
        return x + self.proj(out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2))


class SRDHead(nn.Module):
    """Training-only projection of the deepest SAR-encoder features into CLIP's embedding space.

    The last layer starts at zero: the first prediction is "the weather changed nothing", so the SRD loss
    starts at the (normalised) residual energy instead of at the norm of a random projection.
    """

    def __init__(self, dim: int, clip_dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, clip_dim, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def soft_residual_distillation(pred: Tensor, residual: Tensor, temperature: float = 0.5,
                               eps: float = 1e-6) -> Tensor:
    """The CLIP-SRD loss of ``pred`` (B, D, h, w) against the CLIP feature residual ``residual`` (B, D, h, w).

    Per location ``i`` of each image: ``w_i = N softmax_i(|r_i| / (temperature * max_j |r_j|))`` (mean 1 over
    the image; the logits lie in [0, 1 / temperature], so weights differ by at most ``exp(1 / temperature)``),
    target ``r_i / sqrt(mean_{batch, j} |r_j|^2)``; returns ``mean_b mean_i w_i ||pred_i - target_i||^2``. A residual of
    zero everywhere (clean input) gives uniform weights and a zero target.
    """
    if pred.shape != residual.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and residual {tuple(residual.shape)} differ")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    residual = residual.detach()
    mag = residual.norm(dim=1).flatten(1)  # B, N
    per_image = mag.amax(dim=1, keepdim=True)
    weights = softmax(mag / (temperature * per_image + eps), dim=1) * mag.shape[1]
    target = residual / (mag.square().mean().sqrt() + eps)
    err = (pred - target).square().sum(dim=1).flatten(1)  # B, N
    return (weights * err).mean()


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    H, W = x.shape[-2:]
    ph, pw = (multiple - H % multiple) % multiple, (multiple - W % multiple) % multiple
    if not ph and not pw:
        return x
    # reflect needs the pad to be smaller than the side; images under `multiple` px fall back to replicate.
    mode = "reflect" if min(H, W) > max(ph, pw) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@register_generator("sar_weather")
class SARWeatherNet(GeneratorBase):
    """The SAR weather net (see the module docstring); any input size (padded inside).

    Args:
        dims: widths of the full, 1/2 and 1/4 resolution levels.
        enc_depths: SAR blocks per encoder level (the last one is the bottleneck).
        dec_depths: decoder blocks at the 1/2 and full resolution levels.
        clip_dim: width of the CLIP embeddings (image embedding and dense features).
        cwp: use the CLIP Weather Prior (the forward then takes ``image_embedding``).
        srd: build the CLIP-SRD head and return the ``srd`` term from :meth:`auxiliary_losses`.
        num_prototypes: learned weather prototypes of the CWP.
        num_tokens, prior_dim: number and width of the CWP prior tokens.
        srd_temperature: softmax temperature of the SRD location weights.
        in_chans: input/output channels.
    """

    patch_size = 4  # two 2x downsamplings

    def __init__(self, dims: Sequence[int] = (24, 48, 96), enc_depths: Sequence[int] = (2, 2, 4),
                 dec_depths: Sequence[int] = (2, 2), clip_dim: int = 512, cwp: bool = True, srd: bool = True,
                 num_prototypes: int = 8, num_tokens: int = 4, prior_dim: int = 64, srd_temperature: float = 0.5,
                 in_chans: int = 3):
        super().__init__()
        if len(dims) != 3 or len(enc_depths) != 3 or len(dec_depths) != 2:
            raise ValueError(f"need 3 dims, 3 enc_depths and 2 dec_depths, got {list(dims)}, {list(enc_depths)}, "
                             f"{list(dec_depths)}")
        if srd_temperature <= 0:
            raise ValueError(f"srd_temperature must be > 0, got {srd_temperature}")
        self.clip_dim = clip_dim
        self.cwp, self.srd = bool(cwp), bool(srd)
        self.srd_temperature = float(srd_temperature)
        self.clip_inputs: tuple[str, ...] = ("image_embedding",) if self.cwp else ()
        self.auxiliary_terms: tuple[str, ...] = ("srd",) if self.srd else ()
        d0, d1, d2 = dims

        self.stem = nn.Conv2d(in_chans, d0, 3, padding=1, padding_mode="reflect")
        self.enc0 = _stage(d0, enc_depths[0], gated=True)
        self.down1 = nn.Conv2d(d0, d1, 2, stride=2)
        self.enc1 = _stage(d1, enc_depths[1], gated=True)
        self.down2 = nn.Conv2d(d1, d2, 2, stride=2)
        self.enc2 = _stage(d2, enc_depths[2], gated=True)

        self.up1 = nn.Sequential(nn.Conv2d(d2, d1 * 4, 1), nn.PixelShuffle(2))
        self.fuse1 = SKFusion(d1)
        self.dec1 = _stage(d1, dec_depths[0], gated=False)
        self.up0 = nn.Sequential(nn.Conv2d(d1, d0 * 4, 1), nn.PixelShuffle(2))
        self.fuse0 = SKFusion(d0)
        self.dec0 = _stage(d0, dec_depths[1], gated=False)
        self.tail = nn.Conv2d(d0, in_chans, 3, padding=1, padding_mode="reflect")
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

        if self.cwp:
            self.prior = CLIPWeatherPrior(clip_dim, prior_dim, num_prototypes, num_tokens)
            self.inject = nn.ModuleList(PriorCrossAttention(d, prior_dim) for d in (d2, d1, d0))
        self.srd_head = SRDHead(d2, clip_dim) if self.srd else None
        # Deepest encoder features of the last training forward (B, d2, ceil(H/4), ceil(W/4)), read by
        # auxiliary_losses in the same step; never set in eval mode, never saved.
        self._deep_features: Tensor | None = None

    def forward(self, x: Tensor, image_embedding: Tensor | None = None, **kwargs: Any) -> Tensor:
        """(B, 3, H, W) degraded RGB in [0, 1] -> restored RGB, nominally [0, 1] but not clamped."""
        if kwargs:
            raise TypeError(f"SARWeatherNet takes only image_embedding from CLIP; got unexpected {sorted(kwargs)}")
        if self.cwp and image_embedding is None:
            raise ValueError("cwp=True needs image_embedding (B, clip_dim) from the frozen CLIP; "
                             "build the net with cwp=False to run without CLIP")
        H, W = x.shape[-2:]
        # channels_last throughout: LayerNorm2d's permutes become free views and oneDNN's 1x1 / depthwise
        # convolutions run faster on CPU (as in DehazeFormer); same maths.
        x_in = _pad_to_multiple(x, self.patch_size).contiguous(memory_format=torch.channels_last)
        f0 = self.enc0(self.stem(x_in))
        f1 = self.enc1(self.down1(f0))
        f2 = self.enc2(self.down2(f1))
        if self.training and self.srd:
            self._deep_features = f2[..., :math.ceil(H / 4), :math.ceil(W / 4)]

        tokens = self.prior(image_embedding.to(x.dtype)) if self.cwp else None
        y = self.inject[0](f2, tokens) if self.cwp else f2
        y = self.up1(y)
        y = self.fuse1([y, f1]) + y
        if self.cwp:
            y = self.inject[1](y, tokens)
        y = self.up0(self.dec1(y))
        y = self.fuse0([y, f0]) + y
        if self.cwp:
            y = self.inject[2](y, tokens)
        y = self.tail(self.dec0(y))
        return x + y[..., :H, :W]

    def auxiliary_losses(self, x: Tensor, target: Tensor, output: Tensor, clip_prior: Any) -> dict[str, Tensor]:
        """``{"srd": CLIP-SRD loss}`` for the last training forward (``{}`` when ``srd=False``)."""
        if not self.srd:
            return {}
        if clip_prior is None:
            raise ValueError("CLIP-SRD needs the frozen CLIP prior during training: use loss=sar_weather (it asks "
                             "for the prior), or build the model with srd=false")
        feats = self._deep_features
        if feats is None or feats.shape[0] != x.shape[0]:
            raise RuntimeError("auxiliary_losses needs the features of a training-mode forward on this batch; "
                               "call the model in train() mode on x first")
        self._deep_features = None
        with torch.no_grad():
            residual = clip_prior.dense_features(x) - clip_prior.dense_features(target)
        if residual.shape[1] != self.clip_dim:
            raise ValueError(f"CLIP dense features are {residual.shape[1]}-d but the model was built with "
                             f"clip_dim={self.clip_dim}")
        pred = F.adaptive_avg_pool2d(self.srd_head(feats), residual.shape[-2:])
        return {"srd": soft_residual_distillation(pred, residual.to(pred.dtype), self.srd_temperature)}


#: sar_weather_t(**kwargs) ... sar_weather_test(**kwargs): the variants of sar_weather.yaml as factories.
__getattr__ = variant_factories(__name__)
