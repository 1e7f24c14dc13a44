"""The metric registry: a metric is one decorated function in one file.

    # src/clipdehaze/metrics/niqe.py
    @register_metric("niqe", reference=False, higher_is_better=False, label="NIQE", digits=3,
                     describe="NIQE (Mittal et al. 2013), ...")
    def niqe(output: Tensor) -> Tensor: ...          # (B, 3, H, W) in [0, 1] -> float64 (B,)

Full-reference metrics take ``(output, target, **options)``, no-reference ones ``(output, **options)``; both return
one float64 value per image. A metric whose value depends on the evaluation protocol (PSNR and SSIM: float vs
uint8, RGB vs Y ...) registers one function per protocol (``protocol="basicsr"``); a protocol names the metrics it
computes (:data:`clipdehaze.metrics.protocols.PROTOCOLS`), and any registered metric can be added to a run with
``metrics.names=[psnr,ssim,niqe]``.

Where a metric is found, by name, the first time it is asked for (nothing is imported up front, so one broken
metric file breaks only that metric):

1. already registered in this process (a test or a notebook may register its own);
2. the module ``clipdehaze.metrics.<name>`` (a file beside this one, named after the metric);
3. an installed package's entry point ``<name>`` in the group ``clipdehaze.metrics`` (a metric kept outside this
   repository: the entry point names the module that registers it).

This module imports nothing of torch or of the metrics, so the table tool can read labels and digits cheaply.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

#: Entry-point group of metrics that live in other packages.
ENTRY_POINT_GROUP = "clipdehaze.metrics"
#: Modules of this package that are not metrics.
_NOT_METRICS = {"registry", "protocols", "image_metrics"}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric implementation.

    Attributes:
        name: the key in logs, CSVs and tables (``test/<name>_<dataset>``).
        fn: ``fn(output, target, **options)`` (full-reference) or ``fn(output, **options)`` (no-reference) ->
            float64 ``(B,)``.
        reference: whether the metric needs the ground truth.
        higher_is_better: the direction a table reads it in.
        label: column header (``"PSNR (dB)"``).
        digits: decimals shown in tables.
        protocol: the protocol this implementation belongs to; ``None``: the same under every protocol.
        options: the protocol options ``fn`` accepts (``crop_border`` ...); other options are not passed.
        describe: the line printed beside its numbers (what is computed, after which paper/implementation);
            protocol-specific implementations leave it empty (the protocol's line says it).
        available: ``None``, or a function returning why the metric cannot run here (missing weights), or None.
        explain: ``None``, or ``explain(image)`` -> why the metric is NaN on that image (1, C, H, W): too small, a
            constant image ...; :func:`nan_reason` asks it.
    """

    name: str
    fn: Callable[..., Any]
    reference: bool
    higher_is_better: bool
    label: str
    digits: int
    protocol: str | None
    options: tuple[str, ...]
    describe: str
    available: Callable[[], str | None] | None = None
    explain: Callable[[Any], str] | None = None

    def unavailable_reason(self) -> str | None:
        return self.available() if self.available is not None else None


_REGISTRY: dict[tuple[str, str | None], MetricSpec] = {}


def register_metric(name: str, *, reference: bool, higher_is_better: bool, label: str | None = None,
                    digits: int = 4, protocol: str | None = None, options: Sequence[str] = (), describe: str = "",
                    available: Callable[[], str | None] | None = None,
                    explain: Callable[[Any], str] | None = None) -> Callable:
    """Decorator: register ``fn`` (a function or a class whose instances are called) as metric ``name``.

    Registering the same name and protocol twice replaces the first (re-running a notebook cell), with the same
    kind (full-/no-reference) only: a typo that would silently turn PSNR into a no-reference metric is an error.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"metric name {name!r}: use lower-case letters, digits and '_' (it becomes a log key and a "
                         "CSV column)")

    def deco(fn: Callable) -> Callable:
        key = (name, protocol)
        old = _REGISTRY.get(key)
        if old is not None and old.reference != reference:
            raise ValueError(f"metric {name!r} is already registered as a "
                             f"{'full' if old.reference else 'no'}-reference metric ({old.fn.__module__})")
        _REGISTRY[key] = MetricSpec(name=name, fn=fn, reference=reference, higher_is_better=higher_is_better,
                                    label=label or name.upper(), digits=digits, protocol=protocol,
                                    options=tuple(options), describe=describe, available=available,
                                    explain=explain)
        return fn

    return deco


def _load(name: str) -> None:
    if any(n == name for n, _ in _REGISTRY) or not _NAME.fullmatch(name):
        return
    if name not in _NOT_METRICS and importlib.util.find_spec(f"{__package__}.{name}") is not None:
        importlib.import_module(f"{__package__}.{name}")
        return
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        ep.load()


def get_metric(name: str, protocol: str | None = None) -> MetricSpec:
    """The implementation of ``name`` under ``protocol`` (its protocol-specific one, else the general one)."""
    _load(name)
    spec = _REGISTRY.get((name, protocol)) or _REGISTRY.get((name, None))
    if spec is None:
        under = [p for n, p in _REGISTRY if n == name]
        if under:
            raise KeyError(f"metric {name!r} is defined for protocol(s) {sorted(map(str, under))}, not for "
                           f"{protocol!r}")
        raise KeyError(f"unknown metric {name!r}; available: {', '.join(list_metrics())}")
    return spec


def nan_reason(name: str, image: Any, protocol: str | None = None) -> str:
    """Why metric ``name`` is NaN on ``image`` (1, C, H, W), float RGB: non-finite pixels, else what the metric's
    ``explain`` says (too small, a constant image ...)."""
    import torch

    if not bool(torch.isfinite(image).all()):
        return "the image has NaN/Inf pixels (the model is numerically unstable on this input)"
    spec = get_metric(name, protocol)
    return spec.explain(image) if spec.explain is not None else f"{name} is undefined on this image"


def list_metrics() -> list[str]:
    """Every metric name: registered ones and the metric files of this package (not imported here)."""
    files = {p.stem for p in Path(__file__).parent.glob("*.py")
             if not p.stem.startswith("_") and p.stem not in _NOT_METRICS}
    entry_points = {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted({n for n, _ in _REGISTRY} | files | entry_points)


def metric_display(name: str) -> tuple[str, int, bool | None]:
    """``(label, digits, higher_is_better)`` for tables; a name no registry entry explains (a run scored by a
    metric that is not installed here) keeps its name, 4 digits and an unknown direction."""
    try:
        spec = get_metric(name)
    except (KeyError, ImportError):
        try:
            spec = next(s for (n, _), s in _REGISTRY.items() if n == name)
        except StopIteration:
            return name, 4, None
    return spec.label, spec.digits, spec.higher_is_better
