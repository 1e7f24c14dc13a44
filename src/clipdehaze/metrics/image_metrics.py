"""Per-image PSNR/SSIM accumulation as a torchmetrics ``Metric``, de-duplicated by dataset index.

Distributed evaluation: ``DistributedSampler`` pads the dataset so every rank gets the same number of
samples, by repeating the first few indices. A plain running mean would count those images twice (and the
result would depend on the world size). So ``update`` stores one value per image *with its dataset index*;
the list states are gathered with ``dist_reduce_fx="cat"`` and ``compute`` / ``per_image`` keep a single row
per index before averaging. A repeated index is the same image through the same network, so which copy is
kept does not matter; the first one gathered is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from clipdehaze.metrics.protocols import compute_psnr, compute_ssim, describe_protocol, get_protocol

_METRIC_FNS = {"psnr": compute_psnr, "ssim": compute_ssim}


class ImageQualityMetrics(Metric):
    """Mean PSNR/SSIM over unique images under a named protocol (see :mod:`clipdehaze.metrics.protocols`).

    Args:
        protocol: ``"dehazeformer"`` or ``"basicsr"``.
        metrics: which of ``"psnr"``, ``"ssim"`` to compute.
        **kwargs: the protocol's options (``crop_border``, ``test_y_channel`` for basicsr); any other keyword
            goes to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group`` ...).

    ``compute()`` returns ``{"psnr": mean, "ssim": mean}`` (float64 scalars; NaN before any update) and
    ``per_image()`` the rows ``{"index", "psnr", "ssim"}`` sorted by index. Both gather across ranks, so
    under DDP every rank must call them.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, protocol: str = "dehazeformer", metrics: Sequence[str] = ("psnr", "ssim"),
                 **kwargs: Any) -> None:
        spec = get_protocol(protocol)
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in spec.options}
        super().__init__(**kwargs)
        self.protocol = protocol
        self.options = spec.resolve(options)
        self.metric_names = tuple(str(m) for m in metrics)
        unknown = sorted(set(self.metric_names) - set(_METRIC_FNS))
        if unknown or not self.metric_names:
            raise ValueError(f"metrics must be a non-empty subset of {sorted(_METRIC_FNS)}, got {list(metrics)}")
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for name in self.metric_names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def describe(self) -> str:
        """The protocol line to print beside the numbers."""
        return describe_protocol(self.protocol, **self.options)

    def update(self, output: Tensor, target: Tensor, indices: Tensor | Sequence[int]) -> None:
        """Score each image of the batch and remember which dataset item it was.

        Args:
            output: (B, 3, H, W) network output, float RGB (clamped by the protocol).
            target: (B, 3, H, W) ground truth, float RGB in [0, 1].
            indices: (B,) dataset index of each image.
        """
        index = torch.as_tensor(indices, device=output.device).long().reshape(-1)
        if index.numel() != output.shape[0]:
            raise ValueError(f"got {index.numel()} indices for a batch of {output.shape[0]} images")
        self.index.append(index)
        for name in self.metric_names:
            getattr(self, name).append(_METRIC_FNS[name](output, target, self.protocol, **self.options))

    def _unique_rows(self) -> tuple[Tensor, dict[str, Tensor]]:
        # Local states are lists of per-batch tensors; after a sync they are one concatenated tensor.
        if (self.index.numel() if isinstance(self.index, Tensor) else len(self.index)) == 0:
            empty = torch.empty(0, dtype=torch.float64, device=self.device)
            return empty.long(), {name: empty for name in self.metric_names}
        # A rank that saw no batch contributes an empty float tensor to the gather, which would promote the
        # concatenated indices to float: cast back.
        index = dim_zero_cat(self.index).long()
        unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
        position = torch.arange(index.numel(), device=index.device)
        first = torch.full_like(unique, index.numel()).scatter_reduce_(0, inverse, position, reduce="amin")
        return unique, {name: dim_zero_cat(getattr(self, name)).double()[first] for name in self.metric_names}

    def compute(self) -> dict[str, Tensor]:
        """Mean of each metric over unique dataset indices."""
        _, values = self._unique_rows()
        return {name: v.mean() if v.numel() else v.new_tensor(float("nan")) for name, v in values.items()}

    def per_image(self) -> list[dict[str, float]]:
        """De-duplicated per-image rows ``{"index": int, "psnr": float, "ssim": float}``, sorted by index.

        Synchronises like ``compute()`` (a collective under DDP: call it on every rank), then restores the
        local states so a later ``compute()`` still works.
        """
        # The same synchronisation compute() gets from torchmetrics' wrapper.
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            index, values = self._unique_rows()
        columns = {name: v.tolist() for name, v in values.items()}
        return [{"index": i, **{name: col[row] for name, col in columns.items()}}
                for row, i in enumerate(index.tolist())]

