"""Contrastive regularisation (CR) as MixDehazeNet trains with it, and its ``L1 + 0.1·CR`` training loss.

CR (Wu et al., "Contrastive Learning for Compact Single Image Dehazing", CVPR 2021) pulls the restored image
towards the clear one (positive) and pushes it away from the hazy input (negative) in the feature space of a
frozen ImageNet network::

    CR = sum_i w_i · L1(f_i(output), f_i(target)) / (L1(f_i(output), f_i(hazy)) + 1e-7)

MixDehazeNet's ``train.py`` (https://github.com/AmeryXiong/MixDehazeNet, also MixCLDehazeNet's) builds
``ContrastLoss_res`` from ``utils/CR_res.py``: torchvision ResNet-152 with ``pretrained=True`` (ImageNet
``IMAGENET1K_V1`` weights), features after 4 stages — ``children()[:-5]`` (stem + ``layer1``), ``layer2``,
``layer3``, ``layer4`` — weighted 1/16, 1/8, 1/4, 1; output, positive and negative go through the ResNet in
three separate calls, the positive and negative features are detached; the total loss is
``nn.L1Loss()(output, target) + 0.1·CR``, all on the loader's images in [-1, 1]. (The repository also keeps
AECR-Net's VGG-19 CR with 5 layers and weights 1/32 … 1, which ``train.py`` imports but does not use.)

Scale. Images here are in [0, 1] (the generator contract), so :class:`L1WithCR` computes the L1 term as upstream
does on [-1, 1], ``2·mean|output − target|``; computed on [0, 1] it would halve L1 and so weight CR twice as
heavily relative to L1 as upstream. CR needs no such factor: the backbone is fed a fixed transform of the
[0, 1] image (``input_norm`` below; ``"upstream"`` feeds exactly upstream's [-1, 1] image), so CR is upstream's.
(Upstream's CR is nearly range-free anyway: with batch-statistics BatchNorm right after the bias-free first
convolution, an affine change of the input range cancels, up to zero-padding borders.)

Two departures from upstream's code, both switchable; the defaults are the sound choice for new training, the
upstream values reproduce MixDehazeNet's training exactly (the MixDehazeNet / MixCLDehazeNet recipes of
``experiments/mixdehazenet/recipes.yaml`` use them):

* ``input_norm``: upstream feeds its [-1, 1] images to the ImageNet network without ImageNet normalisation;
  by default inputs are normalised with the ImageNet mean/std (``"imagenet"``); ``"upstream"`` feeds
  ``2·x − 1``;
* ``batchnorm``: upstream never puts the loss module in eval mode, so its frozen ResNet's BatchNorm layers
  normalise with the statistics of each call's batch (output, positive and negative separately) and keep
  updating running statistics that nothing reads; by default (``"frozen"``) the backbone runs in eval mode,
  a fixed feature extractor whose features do not depend on the rest of the batch; ``"batch"`` reproduces
  upstream (batch statistics, three separate calls). Under upstream's ``nn.DataParallel`` the loss sees the
  whole batch; under DDP here each process normalises its own share.

The backbone is held as a plain attribute, not a submodule (as :class:`clipdehaze.models.clip.FrozenCLIP`
holds CLIP): it is never written into training checkpoints (about 230 MB), has no parameters an optimizer
could see, and ``.train()``/``.eval()`` cannot change its BatchNorm mode; ``_apply`` is overridden so ``.to(device)`` and
friends still move it.

Weights are never downloaded implicitly: they are read from torchvision's cache
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``) or from ``weights_path``;
``download=True`` lets torchvision fetch them into the cache; ``random_weights=True`` (tests only) skips them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.models import WeightsEnum, get_model, get_model_weights

__all__ = ["ContrastiveRegularization", "L1WithCR", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMS = ("imagenet", "upstream")
BATCHNORMS = ("frozen", "batch")
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class _ResNetStages(nn.Module):
    """Features after the 4 stages of a torchvision ResNet (upstream ``Resnet152``'s 4 slices)."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _imagenet_state_dict(arch: str, weights: WeightsEnum, weights_path: str | Path | None, download: bool) -> dict:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise RuntimeError(f"ContrastiveRegularization: weights_path={str(path)!r} does not exist")
        return torch.load(path, map_location="cpu", weights_only=True)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    if download:
        return weights.get_state_dict(progress=False)
    raise RuntimeError(
        f"ContrastiveRegularization needs torchvision's {arch} ImageNet weights ({weights.name}, "
        f"{Path(weights.url).name}), which are not in torchvision's cache ({cached}). Provide them by either\n"
        f"  * running once with network access: python -c \"import torchvision; "
        f"torchvision.models.{arch}(weights='{weights.name}')\" (torchvision caches them in "
        f"$TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints), or passing download=True;\n"
        f"  * copying {weights.url} to a local file and passing weights_path=/local/file.pth.")


class ContrastiveRegularization(nn.Module):
    """MixDehazeNet's contrastive regularisation on frozen ImageNet ResNet features (see module doc).

    Args:
        layer_weights: weights of the 4 stage features (upstream: 1/16, 1/8, 1/4, 1).
        arch: torchvision ResNet (upstream: ``"resnet152"``; the smaller ones share the 4-stage layout).
        weights: torchvision weights tag; upstream's ``pretrained=True`` is ``"IMAGENET1K_V1"``.
        weights_path: local ``.pth`` state_dict of torchvision's ``arch`` (instead of the cache).
        download: let torchvision download missing weights into its cache.
        random_weights: random backbone, for tests only (warns); the loss is then meaningless.
        input_norm: ``"imagenet"`` (normalise [0, 1] inputs with ImageNet mean/std) or ``"upstream"``
            (feed ``2·x − 1``, as upstream does).
        batchnorm: ``"frozen"`` (eval-mode BatchNorm, ImageNet running statistics) or ``"batch"`` (batch
            statistics of each of the three calls, as upstream's never-eval'd module does).
        eps: added to the negative distance (upstream 1e-7).

    ``forward(output, target, hazy)``: three (B, 3, H, W) images in [0, 1] -> scalar. Gradients flow into
    ``output`` only.
    """

    def __init__(self, layer_weights: Sequence[float] = (1 / 16, 1 / 8, 1 / 4, 1.0),
                 arch: str = "resnet152", weights: str = "IMAGENET1K_V1", weights_path: str | Path | None = None,
                 download: bool = False, random_weights: bool = False, input_norm: str = "imagenet",
                 batchnorm: str = "frozen", eps: float = 1e-7):
        super().__init__()
        if len(layer_weights) != 4:
            raise ValueError(f"layer_weights needs one weight per ResNet stage (4), got {list(layer_weights)}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if batchnorm not in BATCHNORMS:
            raise ValueError(f"batchnorm must be one of {BATCHNORMS}, got {batchnorm!r}")
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if random_weights:
            warnings.warn(f"ContrastiveRegularization(random_weights=True): the {arch} backbone is RANDOM; "
                          "use this for tests only, the loss is meaningless for training", stacklevel=2)
            resnet = get_model(arch, weights=None)
        else:
            # Weights first: a missing file fails at once, before building a large network.
            state = _imagenet_state_dict(arch, get_model_weights(arch)[weights], weights_path, download)
            resnet = get_model(arch, weights=None)
            resnet.load_state_dict(state)
        self.arch = arch
        # Deliberately NOT a submodule (see the module docstring); its mode is fixed by ``batchnorm``.
        backbone = _ResNetStages(resnet).train(batchnorm == "batch").requires_grad_(False)
        object.__setattr__(self, "_backbone", backbone)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.input_norm = input_norm
        self.batchnorm = batchnorm
        self.eps = float(eps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        self._backbone._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "ContrastiveRegularization":
        super().train(mode)
        # The backbone's BatchNorm mode is the ``batchnorm`` option, never the training phase.
        self._backbone.train(self.batchnorm == "batch")
        return self

    def _normalise(self, x: Tensor) -> Tensor:
        if self.input_norm == "upstream":
            return x * 2 - 1
        return (x - self.mean) / self.std

    def forward(self, output: Tensor, target: Tensor, hazy: Tensor) -> Tensor:
        dtype = self.mean.dtype
        feats_out = self._backbone(self._normalise(output.to(dtype)))
        with torch.no_grad():
            # Positives and negatives are detached upstream, so no autograd. Frozen BN makes features independent
            # of the rest of the batch, so one batched pass; batch-statistics BN needs upstream's separate calls.
            if self.batchnorm == "frozen":
                feats_ref = self._backbone(self._normalise(torch.cat([target, hazy]).to(dtype)))
                feats_pos, feats_neg = zip(*(f.chunk(2) for f in feats_ref))
            else:
                feats_pos = self._backbone(self._normalise(target.to(dtype)))
                feats_neg = self._backbone(self._normalise(hazy.to(dtype)))
        loss = output.new_zeros((), dtype=dtype)
        for w, a, p, n in zip(self.layer_weights, feats_out, feats_pos, feats_neg):
            loss = loss + w * (a - p).abs().mean() / ((a - n).abs().mean() + self.eps)
        return loss

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, layer_weights={self.layer_weights}, input_norm={self.input_norm!r}, "
                f"batchnorm={self.batchnorm!r}, eps={self.eps}")


class L1WithCR(nn.Module):
    """MixDehazeNet's training loss ``L1(output, target) + cr_weight·CR(output, target, hazy)`` (upstream 0.1).

    The L1 term is upstream's, on images in [-1, 1]: ``2·mean|output − target|`` for the [0, 1] images given
    here, which keeps upstream's balance of L1 against CR (see the module docstring). ``cr_kwargs`` go to
    :class:`ContrastiveRegularization`. The unweighted terms of the last call are kept in ``last_terms``
    (``l1`` on that [-1, 1] scale, ``cr``; detached) for logging, so ``loss = l1 + cr_weight·cr``.
    """

    def __init__(self, cr_weight: float = 0.1, **cr_kwargs):
        super().__init__()
        self.cr_weight = float(cr_weight)
        self.cr = ContrastiveRegularization(**cr_kwargs)
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, output: Tensor, target: Tensor, hazy: Tensor) -> Tensor:
        l1 = 2 * (output - target).abs().mean()  # = nn.L1Loss()(2·output − 1, 2·target − 1)
        cr = self.cr(output, target, hazy)
        self.last_terms = {"l1": l1.detach(), "cr": cr.detach()}
        return l1 + self.cr_weight * cr

    def extra_repr(self) -> str:
        return f"cr_weight={self.cr_weight}"
