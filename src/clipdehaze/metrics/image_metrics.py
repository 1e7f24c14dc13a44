"""Per-image accumulation of registered metrics as a torchmetrics ``Metric``, de-duplicated by dataset index.

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

from clipdehaze.metrics.protocols import compute_metric, describe_protocol, get_protocol
from clipdehaze.metrics.registry import MetricSpec, get_metric, list_metrics, nan_reason


class ImageQualityMetrics(Metric):
    """Mean of registered metrics (:mod:`clipdehaze.metrics.registry`) over unique images under a named protocol
    (see :mod:`clipdehaze.metrics.protocols`).

    Args:
        protocol: ``"dehazeformer"`` or ``"basicsr"``; ``None`` when every metric is no-reference.
        metrics: registered metric names; ``None``: the ones the protocol names (``psnr``, ``ssim``). No-reference
            metrics (``niqe``, ``brisque``, ``dark_channel`` ...) may be added to any protocol.
        **kwargs: the protocol's options (``crop_border``, ``test_y_channel`` for basicsr); any other keyword
            goes to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group`` ...).

    ``compute()`` returns ``{name: mean}`` (float64 scalars; NaN before any update) and ``per_image()`` the rows
    ``{"index", <name>...}`` sorted by index. Both gather across ranks, so under DDP every rank must call them.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, protocol: str | None = "dehazeformer", metrics: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        spec = get_protocol(protocol) if protocol is not None else None
        options = {k: kwargs.pop(k) for k in list(kwargs) if spec is not None and k in spec.options}
        super().__init__(**kwargs)
        self.protocol = protocol
        self.options = spec.resolve(options) if spec is not None else {}
        names = tuple(str(m) for m in (spec.metrics if metrics is None and spec is not None else metrics or ()))
        self.metric_names = names
        self.specs: dict[str, MetricSpec] = {}
        problems = {}
        for name in names:
            try:
                self.specs[name] = get_metric(name, protocol)
            except KeyError as e:
                problems[name] = str(e).strip("'\"")
                continue
            if reason := self.specs[name].unavailable_reason():
                problems[name] = reason
        if problems or not names or len(set(names)) != len(names):
            why = "".join(f"; {n}: {r}" for n, r in problems.items())
            raise ValueError(f"metrics must be a non-empty subset, without repeats, of the metrics available here "
                             f"({', '.join(list_metrics())}), got {list(names)}{why}")
        if protocol is None and (needs := [n for n in names if self.specs[n].reference]):
            raise ValueError(f"metrics {needs} compare with the ground truth under a protocol: set metrics.protocol "
                             "(dehazeformer or basicsr)")
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for name in self.metric_names:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        #: dataset index -> why its NaN values are NaN (``{"niqe": "too small ..."}``), for the images this process
        #: scored (not gathered across ranks); cleared by ``reset``.
        self.nan_reasons: dict[int, dict[str, str]] = {}

    @property
    def reference_free(self) -> bool:
        """True when no selected metric needs the ground truth (images without GT can be scored)."""
        return not any(s.reference for s in self.specs.values())

    def describe(self) -> str:
        """The protocol line to print beside the numbers: the protocol's own (when a full-reference metric is
        computed), then each no-reference metric's."""
        parts = [describe_protocol(self.protocol, **self.options)] if not self.reference_free else []
        parts += [s.describe for s in self.specs.values() if not s.reference and s.describe]
        return "; ".join(parts)

    def update(self, output: Tensor, target: Tensor | None, indices: Tensor | Sequence[int]) -> None:
        """Score each image of the batch and remember which dataset item it was.

        Args:
            output: (B, 3, H, W) network output, float RGB (clamped by the protocol).
            target: (B, 3, H, W) ground truth, float RGB in [0, 1]; ``None`` when only no-reference metrics run.
            indices: (B,) dataset index of each image.
        """
        index = torch.as_tensor(indices, device=output.device).long().reshape(-1)
        if index.numel() != output.shape[0]:
            raise ValueError(f"got {index.numel()} indices for a batch of {output.shape[0]} images")
        if target is None and not self.reference_free:
            raise ValueError(f"metrics {[n for n, s in self.specs.items() if s.reference]} need the ground truth, "
                             "and these images have none: score them with no-reference metrics only, e.g. "
                             "metrics=no_reference")
        self.index.append(index)
        for name in self.metric_names:
            value = compute_metric(name, output, target, self.protocol, **self.options)
            getattr(self, name).append(value.to(output.device))
            for row in torch.nonzero(value.isnan()).flatten().tolist():
                self.nan_reasons.setdefault(int(index[row]), {})[name] = nan_reason(name, output[row:row + 1],
                                                                                    self.protocol)

    def reset(self) -> None:
        super().reset()
        self.nan_reasons = {}

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
        """De-duplicated per-image rows ``{"index": int, <metric>: float, ...}``, sorted by index.

        Synchronises like ``compute()`` (a collective under DDP: call it on every rank), then restores the
        local states so a later ``compute()`` still works.
        """
        # The same synchronisation compute() gets from torchmetrics' wrapper.
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            index, values = self._unique_rows()
        columns = {name: v.tolist() for name, v in values.items()}
        return [{"index": i, **{name: col[row] for name, col in columns.items()}}
                for row, i in enumerate(index.tolist())]

