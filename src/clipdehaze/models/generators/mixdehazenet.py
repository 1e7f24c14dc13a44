"""MixDehazeNet and MixCLDehazeNet, reproduced parameter for parameter.

MixDehazeNet
    Paper: L. Lu et al., "MixDehazeNet: Mix Structure Block For Image Dehazing Network", arXiv:2305.17654, 2023.
    Upstream: https://github.com/AmeryXiong/MixDehazeNet (``models/MixDehazeNet.py``), MIT licence (file
    ``LISENCE``); it builds on DehazeFormer's skeleton (https://github.com/IDKiro/DehazeFormer, MIT).
MixCLDehazeNet
    Upstream: https://github.com/DanielHo-BS/MixCLDehazeNet (``models/MixDehazeNet.py``, fusion module
    ``ParametricAttention2`` with projection dim 5; the repository has no licence file, so only facts about the
    architecture are used here, no code). MixDehazeNet with a CLIP text embedding
    (the zero-shot "indoor"/"outdoor" class prompt, ViT-B/32) fused into the input image by upstream's attention
    with learnable projections, which its README describes as a refinement of CALIP's parameter attention (Guo et
    al., "CALIP: Zero-Shot Enhancement of CLIP with Parameter-free Attention", AAAI 2023,
    https://github.com/ZiyuGuo99/CALIP); the 3 fused channels are concatenated to the image, so the patch embedding
    sees 6 channels. ``fusion="calip"`` is not upstream's and not CALIP's attention: :class:`CALIPAttention`, our
    CALIP-inspired parameter-free fusion on scalar tokens (ours).

This file is a re-implementation: module tree, parameter names, shapes, (PyTorch-default) initialisation and
arithmetic follow upstream, so the official checkpoints load with ``strict=True`` and no renaming and outputs match
upstream to float32 round-off. Only the execution differs, for speed (same maths):

* activations run in ``channels_last`` memory format (oneDNN's 1x1 and depthwise convolutions are much faster
  on CPU that way);
* in each block the 1x1 ``conv1`` (and, in eval mode, ``norm1``) is folded into the 5x5 ``conv2`` (reflect
  padding commutes with a pointwise map), and the three dilated depthwise convolutions run as one (shared
  reflect padding, kernels zero-padded to 7 taps; no concatenation);
* ``Wg`` and ``ca`` share one global average pool;
* the fusion attention is reduced to its exact 1-dimensional form and run by ``F.scaled_dot_product_attention``
  (never materialises the HW x D attention map); the text branch whose result upstream discards is not
  evaluated (see :class:`ParametricAttention`).

Architecture: DehazeFormer's 5-stage U-Net, :mod:`clipdehaze.models.unet` (24-48-96-48-24 channels;
reflect-padded strided-conv patch merging, pixel-shuffle patch splitting, SK fusion of the skips) whose blocks are
Mix Structure Blocks: a multi-scale parallel large-kernel module (1x1 -> 5x5 conv, then depthwise 7/5/3-tap
convolutions with dilation 3, i.e. receptive fields 19/13/7, concatenated and mixed by an MLP) and an enhanced
parallel attention module (simple pixel attention, channel attention and pixel attention side by side, concatenated
and mixed by an MLP), each with BatchNorm in front and a residual connection. The 4-channel head predicts K and B
of ``J = K·I − B + I``. Upstream works on images in [-1, 1]; the generators here take and return [0, 1] images and
convert inside. The variants' numbers, shared by both families, are data: ``mixdehazenet.yaml`` beside this file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clipdehaze.models.layers import UpstreamGraph
from clipdehaze.models.registry import register_generator
from clipdehaze.models.unet import BasicLayer, UNet5, check_per_stage
from clipdehaze.models.variants import variant_factories

__all__ = ["MixStructureBlock", "ParametricAttention", "CALIPAttention", "MixDehazeNet", "MixCLDehazeNet", "FUSIONS"]

FUSIONS = ("parametric", "calip", "none")

# The widest reflect padding of a block (the 7-tap, dilation-3 depthwise conv) is 9 px, and reflect padding must
# be narrower than the map, so the 1/4-scale map needs >= 10 px: images need >= 4·10 − 3 px per side (the 3 px of
# the multiple-of-4 padding are added before the network).
_MAX_BLOCK_PAD = 9


def _bfloat16_on_cpu(x: Tensor) -> bool:
    """Whether a CPU convolution of ``x`` runs in bfloat16 (a bfloat16 tensor, or CPU autocast to bfloat16)."""
    return x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class MixStructureBlock(UpstreamGraph, nn.Module):
    """Multi-scale parallel large-kernel module, then enhanced parallel attention module, each residual.

    Runs a fused equivalent of upstream's layers (below); ``upstream_graph=True`` runs them literally.

    Attribute names and layer order are upstream's (``conv3_19`` is the 7-tap depthwise conv with dilation 3,
    receptive field 19; ``Wv``/``Wg`` the simple pixel attention, ``ca`` channel attention, ``pa`` pixel
    attention, ``mlp``/``mlp2`` the pointwise mixers of the concatenated branches).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.norm2 = nn.BatchNorm2d(dim)

        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=5, padding=2, padding_mode="reflect")
        self.conv3_19 = nn.Conv2d(dim, dim, kernel_size=7, padding=9, groups=dim, dilation=3, padding_mode="reflect")
        self.conv3_13 = nn.Conv2d(dim, dim, kernel_size=5, padding=6, groups=dim, dilation=3, padding_mode="reflect")
        self.conv3_7 = nn.Conv2d(dim, dim, kernel_size=3, padding=3, groups=dim, dilation=3, padding_mode="reflect")

        self.Wv = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, padding_mode="reflect"),
        )
        self.Wg = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1), nn.Sigmoid())
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim, 1),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
            nn.Sigmoid(),
        )
        self.pa = nn.Sequential(
            nn.Conv2d(dim, dim // 8, 1),
            nn.GELU(),
            nn.Conv2d(dim // 8, 1, 1),
            nn.Sigmoid(),
        )
        self.mlp = nn.Sequential(nn.Conv2d(dim * 3, dim * 4, 1), nn.GELU(), nn.Conv2d(dim * 4, dim, 1))
        self.mlp2 = nn.Sequential(nn.Conv2d(dim * 3, dim * 4, 1), nn.GELU(), nn.Conv2d(dim * 4, dim, 1))

    def _large_kernels(self, x: Tensor) -> Tensor:
        """norm1 -> conv1 -> conv2 -> conv3_19, conv3_13, conv3_7 -> mlp (upstream concatenates the branches)."""
        if self.upstream_graph:
            x = self.conv2(self.conv1(self.norm1(x)))
            return self.mlp(torch.cat([self.conv3_19(x), self.conv3_13(x), self.conv3_7(x)], dim=1))
        # conv2(conv1(x)) with conv1 pointwise is one 5x5 conv: W = W2·W1, b = b2 + sum_taps(W2)·b1 (reflect
        # padding commutes with a pointwise map).
        w2 = self.conv2.weight
        weight = torch.einsum("omhw,mi->oihw", w2, self.conv1.weight.flatten(1))
        bias = self.conv2.bias + torch.einsum("omhw,m->o", w2, self.conv1.bias)
        bn = self.norm1
        if bn.training or bn.running_var is None:
            x = bn(x)
        else:
            # Eval-mode BatchNorm is a per-channel affine map: folded into the conv the same way.
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bias + torch.einsum("oihw,i->o", weight, bn.bias - bn.running_mean * scale)
            weight = weight * scale.view(1, -1, 1, 1)
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, bias)
        # The three dilation-3 depthwise convs as one: the 5- and 3-tap kernels zero-padded to 7 taps (reflect
        # padding by 9 then a 7-tap kernel whose outer taps are 0 is exactly upstream's padding by 6 or 3),
        # 3 outputs per input channel. Its outputs come interleaved per channel (c0 19/13/7, c1 19/13/7, ...)
        # instead of upstream's [19 | 13 | 7] blocks, so mlp's first weight is read in that order.
        dw = torch.stack([self.conv3_19.weight, F.pad(self.conv3_13.weight, (1, 1, 1, 1)),
                          F.pad(self.conv3_7.weight, (2, 2, 2, 2))], dim=1).flatten(0, 1)
        dw_bias = torch.stack([self.conv3_19.bias, self.conv3_13.bias, self.conv3_7.bias], dim=1).flatten()
        if x.is_cpu and self.conv3_19.groups < 16 and _bfloat16_on_cpu(x):
            # oneDNN (torch 2.14) segfaults in this conv's weight gradient for bfloat16 channels_last input with
            # fewer than 16 channels (seen with 4, 8 and 12); the contiguous layout takes another kernel.
            x = x.contiguous()
        x = F.conv2d(F.pad(x, (9, 9, 9, 9), mode="reflect"), dw, dw_bias, dilation=3, groups=self.conv3_19.groups)
        fc1 = self.mlp[0]
        dim = self.conv1.in_channels
        # Upstream input channel r·dim + c (branch r of channel c) is channel 3c + r here.
        fc1_weight = fc1.weight.reshape(4 * dim, 3, dim, 1, 1).transpose(1, 2).reshape(4 * dim, 3 * dim, 1, 1)
        x = F.gelu(F.conv2d(x, fc1_weight, fc1.bias))
        return self.mlp[2](x)

    def _parallel_attention(self, x: Tensor) -> Tensor:
        """[Wv(x)·Wg(x) | ca(x)·x | pa(x)·x] concatenated on channels."""
        if self.upstream_graph:
            return torch.cat([self.Wv(x) * self.Wg(x), self.ca(x) * x, self.pa(x) * x], dim=1)
        pooled = x.mean(dim=(2, 3), keepdim=True)  # the AdaptiveAvgPool2d(1) of both Wg and ca
        gate = torch.sigmoid(self.Wg[1](pooled))
        channel = self.ca[1:](pooled)
        return torch.cat([self.Wv(x) * gate, channel * x, self.pa(x) * x], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self._large_kernels(x)
        return x + self.mlp2(self._parallel_attention(self.norm2(x)))


def _pixel_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H·W, C); a free view when ``x`` is channels_last."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def _tokens_to_image(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H·W, C) -> (B, C, H, W) with channels_last strides (free view)."""
    return tokens.reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)


class ParametricAttention(UpstreamGraph, nn.Module):
    """MixCLDehazeNet's image-text fusion (upstream ``ParametricAttention2``, proj_dim 5): 3 extra image channels.

    Upstream's definition, reconstructed from the parameter shapes and matched to the published implementation's
    reference output to 2e-7 (the nearest alternatives tried — another key projection, scale or softmax axis, a
    residual — are off by 6e-5 or more): every pixel is a token with its 3 colour values as features, every
    coordinate of the (B, 1, D) CLIP text embedding a token with 1 feature; learnable pointwise projections
    (``q1/k1/v1``: 1x1 Conv2d 3 -> p on the image, ``q2/k2/v2``: 1x1 Conv1d 1 -> p on the text) map both to
    p = proj_dim dimensions. The image update is single-head attention of the pixels over the text coordinates,
    ``softmax(q1(x)ᵀ·k2(t) / sqrt(p)) · v2(t)ᵀ`` (the HW x D map normalised over D), projected back to 3 channels
    by ``postProj_s`` (1x1 Conv2d p -> 3); no residual.

    Evaluated here in an equivalent, cheaper form. A text token is a scalar t_j, so its key and value are affine
    in it: k_j = t_j·w_k + b_k, v_j = t_j·w_v + b_v. The score q_i·k_j/sqrt(p) = a_i·t_j + q_i·b_k/sqrt(p) with
    a_i = q_i·w_k/sqrt(p); the second term is the same for every key of a pixel and cancels in the softmax. So
    the attention is, per pixel, the scalar a_i = u·x_i + c (affine in the pixel's RGB), the softmax-weighted
    mean g(a_i) = sum_j softmax_j(a_i·t_j)·t_j of the text coordinates (a tone curve whose shape the prompt sets),
    and an output affine in g: ``postProj_s(w_v·g + b_v)``. Same values up to float round-off, about 3x fewer
    operations (attention with 1-dimensional instead of p-dimensional tokens). ``upstream_graph=True`` computes
    upstream's p-dimensional attention maps literally, the discarded text update included.

    Parameters kept only for ``strict=True`` loading of official checkpoints, frozen (``requires_grad=False``;
    a parameter that requires grad but gets none makes DistributedDataParallel fail):

    * ``k1``, ``v1``, ``q2``, ``postProj_t``: upstream also computes the symmetric text update and discards it
      (``forward_features`` rebinds the text variable and never reads it again), so they never get a gradient;
    * ``k2.bias``: the softmax cancels it (above), its gradient upstream is zero.
    """

    out_chans = 3

    def __init__(self, proj_dim: int = 5):
        super().__init__()
        self.proj_dim = proj_dim
        self.q1 = nn.Conv2d(3, proj_dim, 1)
        self.k1 = nn.Conv2d(3, proj_dim, 1)
        self.v1 = nn.Conv2d(3, proj_dim, 1)
        self.q2 = nn.Conv1d(1, proj_dim, 1)
        self.k2 = nn.Conv1d(1, proj_dim, 1)
        self.v2 = nn.Conv1d(1, proj_dim, 1)
        self.postProj_s = nn.Conv2d(proj_dim, self.out_chans, 1)
        self.postProj_t = nn.Conv1d(proj_dim, 1, 1)
        for unused in (self.k1, self.v1, self.q2, self.postProj_t):
            unused.requires_grad_(False)
        self.k2.bias.requires_grad_(False)

    def forward(self, x: Tensor, text: Tensor) -> Tensor:
        """x: (B, 3, H, W) image in [-1, 1]; text: (B, 1, D) -> (B, 3, H, W) fused channels."""
        H, W = x.shape[-2:]
        if self.upstream_graph:
            return self._upstream_forward(x, text)
        w_k = self.k2.weight.flatten() / math.sqrt(self.proj_dim)
        u = w_k @ self.q1.weight.flatten(1)  # (3,)
        c = w_k @ self.q1.bias
        a = F.linear(_pixel_tokens(x), u[None], c[None])  # B, HW, 1
        # B, D, 1: one token per embedding coordinate. A reshape, not a transpose: SDPA's fused CPU kernel needs
        # unit stride in the last dim, else it falls back to materialising the HW x D map.
        t = text.reshape(text.shape[0], -1, 1)
        g = F.scaled_dot_product_attention(a, t, t, scale=1.0)  # B, HW, 1
        proj = self.postProj_s.weight.flatten(1)  # 3, p
        out = F.linear(g, (proj @ self.v2.weight.flatten())[:, None], proj @ self.v2.bias + self.postProj_s.bias)
        return _tokens_to_image(out, H, W)

    def _upstream_forward(self, x: Tensor, text: Tensor) -> Tensor:
        """Upstream's operations one by one: (HW x D) and (D x HW) attention maps over p-dimensional tokens."""
        H, W = x.shape[-2:]
        scale = self.proj_dim ** -0.5
        q_img = self.q1(x).flatten(2).transpose(1, 2)  # B, HW, p
        attn = torch.softmax(q_img @ self.k2(text) * scale, dim=-1)  # B, HW, D
        img = (attn @ self.v2(text).transpose(1, 2)).transpose(1, 2)  # B, p, HW
        # The symmetric text update: computed upstream and never read (kept so the graph is the published one).
        attn_t = torch.softmax(self.q2(text).transpose(1, 2) @ self.k1(x).flatten(2) * scale, dim=-1)  # B, D, HW
        self.postProj_t((attn_t @ self.v1(x).flatten(2).transpose(1, 2)).transpose(1, 2))
        return self.postProj_s(img.reshape(x.shape[0], self.proj_dim, H, W))


class CALIPAttention(nn.Module):
    """CALIP-inspired (ours): a parameter-free counterpart of :class:`ParametricAttention`.

    Our own design, not CALIP's attention (Guo et al., AAAI 2023): CALIP attends between CLIP's spatial visual
    features and its class text features in the joint embedding space; here the tokens are scalars. It keeps the
    parametric module's token layout with its learnable projections removed, which forces both sides to a common
    feature dimension of 1:

    * visual features F_v ∈ R^{3HW x 1}: every pixel value of the [-1, 1] image (each colour channel separately);
    * text features F_t ∈ R^{D x 1}: the D coordinates of the CLIP text embedding, rescaled to ``sqrt(D)·t/‖t‖``
      so they have unit RMS whatever D is and whether the caller normalised (a unit-norm embedding has
      coordinates of ~1/sqrt(D), which would leave every softmax below nearly uniform);
    * A = F_v·F_tᵀ ∈ R^{3HW x D} (rank one, never materialised);
    * visual update F_v^a = softmax(A/α_t)·F_t (softmax over the D text tokens): each pixel value becomes the
      softmax-weighted mean of the text coordinates, a smooth monotone tone curve whose shape the prompt sets;
    * text update F_t^a = softmax(Aᵀ/α_s)·F_v (softmax over the 3HW pixel values): coordinate j becomes a soft
      maximum (t_j > 0) or soft minimum (t_j < 0) of the image, i.e. the text vector adapted to the image's range;
    * the 3 extra channels, per colour channel, mirror CALIP's three logit terms (original features; original
      visual with updated text; updated visual with original text):
      ``β1·F_v + β2·softmax(F_v·F_t^aᵀ/α_t)·F_t^a + β3·F_v^a``.

    Defaults α_t = α_s = 1/2 are the temperatures CALIP's released code uses (A·2); β = (1, 1, 1) weighs the
    terms equally (CALIP searches β per dataset on classification logits, values that do not transfer to pixels;
    the following patch-embedding convolution learns the mix anyway). The module has no parameters, so
    ``fusion="calip"`` keeps the 6-channel patch embedding and the state_dict of the parametric model minus
    ``text_emb.*``.
    """

    out_chans = 3

    def __init__(self, alpha_t: float = 0.5, alpha_s: float = 0.5, beta: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if alpha_t <= 0 or alpha_s <= 0:
            raise ValueError(f"CALIP temperatures must be > 0, got alpha_t={alpha_t}, alpha_s={alpha_s}")
        if len(beta) != 3:
            raise ValueError(f"beta needs the 3 CALIP term weights, got {list(beta)}")
        self.alpha_t = float(alpha_t)
        self.alpha_s = float(alpha_s)
        self.beta = tuple(float(b) for b in beta)

    def forward(self, x: Tensor, text: Tensor) -> Tensor:
        """x: (B, 3, H, W) image in [-1, 1]; text: (B, 1, D) -> (B, 3, H, W) fused channels."""
        H, W = x.shape[-2:]
        f_v = _pixel_tokens(x).reshape(x.shape[0], -1, 1)  # B, 3HW, 1 (HWC order)
        f_t = text.reshape(text.shape[0], -1, 1)  # B, D, 1 (unit strides: see ParametricAttention.forward)
        f_t = f_t * (math.sqrt(f_t.shape[1]) / f_t.norm(dim=1, keepdim=True).clamp_min(1e-12))
        attend = F.scaled_dot_product_attention
        f_v_a = attend(f_v, f_t, f_t, scale=1 / self.alpha_t)
        f_t_a = attend(f_t, f_v, f_v, scale=1 / self.alpha_s)
        f_v_ta = attend(f_v, f_t_a, f_t_a, scale=1 / self.alpha_t)
        b1, b2, b3 = self.beta
        out = b1 * f_v + b2 * f_v_ta + b3 * f_v_a
        return _tokens_to_image(out.view(x.shape[0], H * W, 3), H, W)

    def extra_repr(self) -> str:
        return f"alpha_t={self.alpha_t}, alpha_s={self.alpha_s}, beta={self.beta}"


class _MixUNet(UNet5):
    """The skeleton with Mix Structure Blocks, 3x3 patch merges and an optional fusion module registered first as
    ``text_emb`` (upstream order); the 4 output channels are K (1) and B (3) of J = K·I − B + I."""

    min_size = UNet5.patch_size * (_MAX_BLOCK_PAD + 1) - (UNet5.patch_size - 1)

    def __init__(self, embed_dims: Sequence[int], depths: Sequence[int], text_emb: nn.Module | None = None):
        check_per_stage(depths=depths)

        def stage(i: int) -> BasicLayer:
            return BasicLayer(MixStructureBlock(embed_dims[i]) for _ in range(depths[i]))

        # RGB, plus the fused channels concatenated to it.
        in_chans = 3 if text_emb is None else 3 + text_emb.out_chans
        super().__init__(embed_dims, stage, in_chans, out_chans=4, merge_kernel_size=3,
                         leading=None if text_emb is None else {"text_emb": text_emb})


_STAGE_DIMS = (24, 48, 96, 48, 24)


@register_generator("mixdehazenet")
class MixDehazeNet(_MixUNet):
    """MixDehazeNet generator: hazy RGB in [0, 1] -> dehazed RGB in [0, 1] (not clamped), any H x W.

    Args:
        embed_dims: channels of the 5 stages (scales 1, 1/2, 1/4, 1/2, 1); stages 2/4 and 1/5 must match.
        depths: Mix Structure Blocks per stage.

    Inputs are reflect-padded to a multiple of 4 and the output cropped back; the shortest side must be at least
    :attr:`min_size` (37 px) because the blocks' reflect padding must be narrower than the 1/4-scale map.
    """

    def __init__(self, embed_dims: Sequence[int] = _STAGE_DIMS, depths: Sequence[int] = (1, 1, 2, 1, 1)):
        super().__init__(embed_dims, depths)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        """(B, 3, H, W) hazy RGB in [0, 1] -> (B, 3, H, W) dehazed RGB, nominally [0, 1] but not clamped."""
        if kwargs:
            raise TypeError(f"MixDehazeNet takes no CLIP inputs; got unexpected {sorted(kwargs)}")
        return self.restore_kb(x)


@register_generator("mixcldehazenet")
class MixCLDehazeNet(_MixUNet):
    """MixCLDehazeNet generator: hazy RGB in [0, 1] + CLIP text embedding -> dehazed RGB in [0, 1] (not clamped).

    Args:
        fusion: how the text embedding enters the network —
            ``"parametric"`` (published): :class:`ParametricAttention`, keys ``text_emb.*`` as upstream;
            ``"calip"``: :class:`CALIPAttention`, CALIP-inspired and parameter-free (ours; same 6-channel patch
            embedding);
            ``"none"``: no text at all, i.e. plain MixDehazeNet (the ablation); ``clip_inputs`` is then ``()``.
        text_dim: D of the (B, 1, D) text embedding (512 for CLIP ViT-B/32); checked at every call. Neither
            fusion has a parameter whose shape depends on it.
        proj_dim: projection width of the parametric fusion (upstream: 5).
        calip_alpha: (α_t, α_s) temperatures of the CALIP-inspired fusion.
        calip_beta: (β1, β2, β3) term weights of the CALIP-inspired fusion.
        embed_dims, depths: as :class:`MixDehazeNet`.
    """

    clip_inputs: tuple[str, ...] = ("text_feature",)

    def __init__(self, embed_dims: Sequence[int] = _STAGE_DIMS, depths: Sequence[int] = (1, 1, 2, 1, 1),
                 fusion: str = "parametric", text_dim: int = 512, proj_dim: int = 5,
                 calip_alpha: Sequence[float] = (0.5, 0.5), calip_beta: Sequence[float] = (1.0, 1.0, 1.0)):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion == "parametric":
            text_emb = ParametricAttention(proj_dim)
        elif fusion == "calip":
            text_emb = CALIPAttention(*calip_alpha, beta=calip_beta)
        else:
            text_emb = None
        super().__init__(embed_dims, depths, text_emb=text_emb)
        self.fusion = fusion
        self.text_dim = text_dim
        if text_emb is None:
            self.clip_inputs = ()

    def forward(self, x: Tensor, text_feature: Tensor | None = None) -> Tensor:
        """x: (B, 3, H, W) hazy RGB in [0, 1]; text_feature: (B, 1, text_dim) (or (B, text_dim)) CLIP embedding.

        Returns (B, 3, H, W) dehazed RGB, nominally [0, 1] but not clamped.
        """
        if self.fusion == "none":
            if text_feature is not None:
                raise TypeError("MixCLDehazeNet(fusion='none') takes no text_feature")
            return self.restore_kb(x)
        if text_feature is None:
            raise TypeError(f"MixCLDehazeNet(fusion={self.fusion!r}) needs text_feature=(B, 1, {self.text_dim})")
        if text_feature.dim() == 2:
            text_feature = text_feature.unsqueeze(1)
        if text_feature.shape != (x.shape[0], 1, self.text_dim):
            raise ValueError(f"text_feature must be (B, 1, text_dim) = ({x.shape[0]}, 1, {self.text_dim}), "
                             f"got {tuple(text_feature.shape)}")
        text = text_feature.to(x.dtype)
        return self.restore_kb(x, lambda image: self.text_emb(image, text))


#: mixdehazenet_t(**kwargs) ... mixcldehazenet_test(**kwargs): the variants of mixdehazenet.yaml as factories.
__getattr__ = variant_factories(__name__)
