"""The number formatters of every table and report: digits and direction from the metric registry
(:func:`clipdehaze.metrics.registry.metric_display`), ``-`` for a missing value."""

from __future__ import annotations

from typing import Any

#: Metrics shown first, in this order; any other a run logged follows (labels, digits and direction from
#: :mod:`clipdehaze.metrics.registry`).
PRIMARY_METRICS = ("psnr", "ssim")
#: Units appended where a metric's numbers are quoted in prose.
UNITS = {"psnr": " dB"}


def display(metric: str) -> tuple[str, int, bool | None]:
    """``(label, digits, higher_is_better)`` of a metric."""
    from clipdehaze.metrics.registry import metric_display

    return metric_display(metric)


def header(metric: str) -> str:
    """A column header: the label with the direction (``PSNR (dB) ↑``, ``NIQE ↓``)."""
    label, _, higher = display(metric)
    return label + {True: " ↑", False: " ↓", None: ""}[higher]


def fixed(v: float | None, digits: int, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def value(v: float | None, metric: str, signed: bool = False) -> str:
    """``v`` with the metric's digits; a non-zero value too small for them in scientific notation (a difference of
    1e-5 dB is not zero)."""
    if v is None:
        return "-"
    d = display(metric)[1]
    if v != 0 and abs(v) < 0.5 * 10 ** -d:
        return f"{v:+.1e}" if signed else f"{v:.1e}"
    return fixed(v, d, signed)


def interval(ci: tuple[float, float] | None, metric: str, signed: bool = True) -> str:
    return "-" if ci is None else f"[{value(ci[0], metric, signed)}, {value(ci[1], metric, signed)}]"


def pvalue(p: float | None) -> str:
    return "-" if p is None else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def share(x: float) -> str:
    return f"{x:.0%}"


def mean_std(stat: Any, metric: str, ci: bool = True, pm: str = "±") -> str:
    """A row's cell: ``mean ± std [95% t-interval]`` over its seeds (``ci=False``: without the interval), the value
    for one seed, ``-`` for none; the non-finite and missing seeds named after it."""
    if stat.mean is None:
        cell = "-"
    elif stat.n > 1:
        cell = f"{value(stat.mean, metric)} {pm} {value(stat.std, metric)}"
        if ci:
            cell += f" [{value(stat.mean - stat.ci95, metric)}, {value(stat.mean + stat.ci95, metric)}]"
    else:
        cell = value(stat.mean, metric)
    if stat.nonfinite_seeds:
        cell += f" (non-finite: seed {seeds(stat.nonfinite_seeds)})"
    if stat.missing_seeds:
        cell += f" (missing: seed {seeds(stat.missing_seeds)})"
    return cell


def seeds(values: list[Any]) -> str:
    """Seeds in order, numbers numerically; ``-`` for the seedless (a weights file)."""
    numeric = all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in values)
    ordered = sorted(values) if numeric else sorted(values, key=str)
    return " ".join("-" if s is None else str(s) for s in ordered)
