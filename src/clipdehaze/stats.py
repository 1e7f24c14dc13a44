"""The statistics of ``clipdehaze-table`` and ``clipdehaze-compare``, and which test is used when.

**A row over seeds** (:func:`seed_stat`): mean, sample standard deviation and the 95% Student-t interval over the
finite values; a seed whose value is NaN/Inf is named, one whose metrics.json lacks the metric is counted apart.

**Two rows on the same images** (:func:`compare_metric`), Δ = variant − reference, each per-image value averaged
over its row's seeds first:

* image level: the mean Δ with a 95% BCa bootstrap interval over images (``scipy.stats.bootstrap``, a fixed
  generator), the two-sided Wilcoxon signed-rank p (``scipy.stats.wilcoxon``: exact for up to 50 non-zero Δ
  without ties, zeros dropped), and the share of images on which the variant is *better*, read in the metric's
  direction (``higher_is_better`` of :mod:`clipdehaze.metrics.registry`: NIQE and BRISQUE improve downwards);
* seed level: when the two rows **share an initialisation** (:func:`clipdehaze.runs.identity.share_initialisation`:
  prior-control twins, or one set of weights scored two ways) seed *s* of one row and seed *s* of the other
  started from the same weights, and the seed means pair: the paired t-test over their differences (both rows
  must hold the same seeds). Any other two rows (two architectures, two recipes) have independent
  initialisations even under one seed number: Welch's unpaired t-test on the two rows' seed means. The test used
  is named in every report line;
* the verdict comes from the seed-level interval when there is one (another training run), else the image-level
  one, again in the metric's direction.

**Across comparisons** (:func:`holm`): a report tests many comparisons and metrics; beside each raw p it shows the
Holm-adjusted p over all the p-values of the same level (image level: every Wilcoxon p of the report; seed level:
every seed-test p), which controls the family-wise error rate without assuming independence.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAIRED_T = "paired t (shared initialisation)"
WELCH_T = "Welch t (independent initialisations)"


# ------------------------------------------------------------------------------------------------------- a row
@dataclass
class SeedStat:
    """Mean, sample std and 95% t-interval half-width over the finite values; the non-finite and missing ones by
    seed."""

    mean: float | None
    std: float | None
    ci95: float | None
    n: int
    nonfinite_seeds: list[Any]
    missing_seeds: list[Any]


def t_quantile(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def seed_stat(values: list[tuple[Any, float | None]]) -> SeedStat:
    """``values``: (seed, value or None when the run lacks the metric)."""
    finite = [v for _, v in values if v is not None and math.isfinite(v)]
    bad = [s for s, v in values if v is not None and not math.isfinite(v)]
    missing = [s for s, v in values if v is None]
    if not finite:
        return SeedStat(None, None, None, 0, bad, missing)
    n = len(finite)
    mean = statistics.fmean(finite)
    std = statistics.stdev(finite) if n > 1 else None
    ci = t_quantile(0.975, n - 1) * std / math.sqrt(n) if n > 1 else None
    return SeedStat(mean, std, ci, n, bad, missing)


# ------------------------------------------------------------------------------------------------------- tests
def bootstrap_ci(d: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float] | None:
    """95% BCa bootstrap interval of the mean of ``d`` (None for fewer than 2 values; a point when all are equal)."""
    from scipy import stats

    if d.size < 2:
        return None
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    res = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=resamples, method="BCa",
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def wilcoxon_p(d: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p of ``d`` (None without a non-zero value)."""
    from scipy import stats

    if not np.any(d != 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one non-zero Δ: scipy's normal approximation divides by 0
        return _finite(stats.wilcoxon(d).pvalue)


@dataclass
class SeedTest:
    """The seed-level comparison: ``test`` is :data:`PAIRED_T`, :data:`WELCH_T` or None (too few seeds)."""

    test: str | None
    delta: float
    ci: tuple[float, float] | None
    p: float | None
    se: float | None


def paired_t(a: np.ndarray, b: np.ndarray) -> SeedTest:
    """``a[i]`` and ``b[i]`` from the same seed (same initialisation)."""
    from scipy import stats

    d = a - b
    if d.size < 2:
        return SeedTest(None, float(d.mean()), None, None, None)
    if np.ptp(d) == 0:  # scipy's interval is NaN for equal differences; it is the point itself
        return SeedTest(PAIRED_T, float(d[0]), (float(d[0]), float(d[0])), None, 0.0)
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    return SeedTest(PAIRED_T, float(d.mean()), (float(ci.low), float(ci.high)), _finite(res.pvalue),
                    float(d.std(ddof=1) / math.sqrt(d.size)))


def welch_t(a: np.ndarray, b: np.ndarray) -> SeedTest:
    """Two independent samples of seed means, unequal variances."""
    from scipy import stats

    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return SeedTest(None, delta, None, None, None)
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    if se == 0:
        return SeedTest(WELCH_T, delta, (delta, delta), None, 0.0)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return SeedTest(WELCH_T, delta, (float(ci.low), float(ci.high)), _finite(res.pvalue), se)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values that are not None (None stays None): with the m p-values sorted
    ascending, the k-th (from 0) becomes ``max over j <= k of min(1, (m - j) p_(j))``."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for j, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


def _finite(p: float) -> float | None:
    return float(p) if math.isfinite(p) else None


# ------------------------------------------------------------------------------------------------------- two rows
@dataclass
class MetricResult:
    """One metric of one comparison (variant minus reference); ``higher_is_better`` reads every verdict."""

    metric: str
    higher_is_better: bool
    n_images: int
    variant_mean: float
    reference_mean: float
    delta: float
    ci: tuple[float, float] | None
    wilcoxon_p: float | None
    better_rate: float
    tie_rate: float
    seed: SeedTest
    se_images: float | None
    per_image: np.ndarray = field(repr=False)
    variant_per_image: np.ndarray = field(repr=False)
    reference_per_image: np.ndarray = field(repr=False)
    wilcoxon_p_holm: float | None = None
    seed_p_holm: float | None = None

    @property
    def dominant(self) -> str | None:
        """``seeds`` or ``images``: whose standard error of the mean Δ is larger (None when one is unknown)."""
        if self.se_images is None or self.seed.se is None:
            return None
        return "seeds" if self.seed.se > self.se_images else "images"

    @property
    def verdict(self) -> str:
        """From the seed-level interval when there is one (another training run), else the image-level one, in the
        metric's direction."""
        if not np.any(self.per_image != 0):
            return "identical on every image (the model got the same inputs, or ignores them)"
        interval, level = (self.seed.ci, "seed") if self.seed.ci is not None else (self.ci, "image")
        if interval is None:
            return "undetermined (one image and one seed)"
        lo, hi = interval
        up, down = ("better", "worse") if self.higher_is_better else ("worse", "better")
        if lo > 0:
            return f"{up} ({level}-level 95% interval above 0)"
        if hi < 0:
            return f"{down} ({level}-level 95% interval below 0)"
        return f"no clear difference ({level}-level 95% interval contains 0)"


def compare_metric(metric: str, variant: np.ndarray, reference: np.ndarray, paired_seeds: bool,
                   higher_is_better: bool, resamples: int) -> MetricResult:
    """``variant`` and ``reference``: (seeds, images) values of one metric on the same images in the same order;
    with ``paired_seeds`` row *i* of both comes from the same seed (see the module docstring)."""
    v_img, r_img = variant.mean(axis=0), reference.mean(axis=0)
    d = v_img - r_img
    v_seed, r_seed = variant.mean(axis=1), reference.mean(axis=1)
    seed = paired_t(v_seed, r_seed) if paired_seeds else welch_t(v_seed, r_seed)
    better = d > 0 if higher_is_better else d < 0
    return MetricResult(
        metric=metric, higher_is_better=higher_is_better, n_images=d.size, variant_mean=float(v_img.mean()),
        reference_mean=float(r_img.mean()), delta=float(d.mean()), ci=bootstrap_ci(d, resamples),
        wilcoxon_p=wilcoxon_p(d), better_rate=float(np.mean(better)), tie_rate=float(np.mean(d == 0)), seed=seed,
        se_images=float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None, per_image=d,
        variant_per_image=v_img, reference_per_image=r_img)
