"""Contrastive regularisation (CR) as MixDehazeNet trains with it, and its ``L1 + 0.1·CR`` training loss.

CR (Wu et al., "Contrastive Learning for Compact Single Image Dehazing", CVPR 2021) pulls the restored image
towards the clear one (positive) and pushes it away from the hazy input (negative) in the feature space of a
frozen ImageNet network::

    CR = sum_i w_i · L1(f_i(output), f_i(target)) / (L1(f_i(output), f_i(hazy)) + 1e-7)

MixDehazeNet's ``train.py`` (https://github.com/AmeryXiong/MixDehazeNet, also MixCLDehazeNet's) builds
``ContrastLoss_res`` from ``utils/CR_res.py``: torchvision ResNet-152 with ``pretrained=True`` (ImageNet
``IMAGENET1K_V1`` weights), features after 4 stages — stem + ``layer1``, ``layer2``, ``layer3``, ``layer4`` —
weighted 1/16, 1/8, 1/4, 1; the positive and negative features are detached; the total loss is
``L1(output, target) + 0.1·CR``. (The repository also keeps AECR-Net's VGG-19 CR with 5 layers and weights
1/32 … 1, which ``train.py`` imports but does not use.) That is what is implemented here, with two documented
departures from upstream's code, both switchable:

* upstream feeds its [-1, 1] images to the ImageNet network without ImageNet normalisation; here inputs are
  [0, 1] and normalised with the ImageNet mean/std (``input_norm="imagenet"``, default);
  ``input_norm="upstream"`` reproduces upstream exactly (feeds ``2·x − 1``);
* upstream never puts the loss module in eval mode, so its frozen ResNet's BatchNorm layers normalise with the
  statistics of each batch (and keep updating their running statistics); here the backbone always runs in
  eval mode: a fixed feature extractor whose features do not depend on the rest of the batch.

The backbone is held as a plain attribute, not a submodule (as :class:`clipdehaze.models.clip.FrozenCLIP`
holds CLIP): it is never written into training checkpoints (about 230 MB), has no parameters an optimizer
could see, and ``.train()`` cannot switch it out of eval mode; ``_apply`` is overridden so ``.to(device)`` and
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
        eps: added to the negative distance (upstream 1e-7).

    ``forward(output, target, hazy)``: three (B, 3, H, W) images in [0, 1] -> scalar. Gradients flow into
    ``output`` only.
    """

    def __init__(self, layer_weights: Sequence[float] = (1 / 16, 1 / 8, 1 / 4, 1.0),
                 arch: str = "resnet152", weights: str = "IMAGENET1K_V1", weights_path: str | Path | None = None,
                 download: bool = False, random_weights: bool = False, input_norm: str = "imagenet",
                 eps: float = 1e-7):
        super().__init__()
        if len(layer_weights) != 4:
            raise ValueError(f"layer_weights needs one weight per ResNet stage (4), got {list(layer_weights)}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
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
        # Deliberately NOT a submodule (see the module docstring).
        object.__setattr__(self, "_backbone", _ResNetStages(resnet).eval().requires_grad_(False))
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.input_norm = input_norm
        self.eps = float(eps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        self._backbone._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "ContrastiveRegularization":
        super().train(mode)
        self._backbone.eval()  # frozen feature extractor: BatchNorm always uses its ImageNet statistics
        return self

    def _normalise(self, x: Tensor) -> Tensor:
        if self.input_norm == "upstream":
            return x * 2 - 1
        return (x - self.mean) / self.std

    def forward(self, output: Tensor, target: Tensor, hazy: Tensor) -> Tensor:
        dtype = self.mean.dtype
        feats_out = self._backbone(self._normalise(output.to(dtype)))
        with torch.no_grad():
            # Positives and negatives are detached upstream: one batched pass without autograd (eval-mode BN
            # makes the features independent of what else is in the batch).
            feats_ref = self._backbone(self._normalise(torch.cat([target, hazy]).to(dtype)))
        loss = output.new_zeros((), dtype=dtype)
        for w, a, ref in zip(self.layer_weights, feats_out, feats_ref):
            p, n = ref.chunk(2)
            loss = loss + w * (a - p).abs().mean() / ((a - n).abs().mean() + self.eps)
        return loss

    def extra_repr(self) -> str:
        return f"arch={self.arch}, layer_weights={self.layer_weights}, input_norm={self.input_norm!r}, eps={self.eps}"


class L1WithCR(nn.Module):
    """MixDehazeNet's training loss ``L1(output, target) + cr_weight·CR(output, target, hazy)`` (upstream 0.1).

    ``cr_kwargs`` go to :class:`ContrastiveRegularization`. The unweighted terms of the last call are kept in
    ``last_terms`` (``l1``, ``cr``; detached) for logging.
    """

    def __init__(self, cr_weight: float = 0.1, **cr_kwargs):
        super().__init__()
        self.cr_weight = float(cr_weight)
        self.cr = ContrastiveRegularization(**cr_kwargs)
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, output: Tensor, target: Tensor, hazy: Tensor) -> Tensor:
        l1 = (output - target).abs().mean()
        cr = self.cr(output, target, hazy)
        self.last_terms = {"l1": l1.detach(), "cr": cr.detach()}
        return l1 + self.cr_weight * cr

    def extra_repr(self) -> str:
        return f"cr_weight={self.cr_weight}"
