"""clipdehaze.stats against oracles that cannot share its mistakes: small cases worked by hand (the arithmetic is
written out), closed forms of the t distribution with 2 degrees of freedom, an exact permutation enumeration of the
Wilcoxon signed-rank test, and the normal approximation of a large bootstrap. Where a t quantile at a
non-integer df is needed, it comes from the distribution function, never from the test the code calls."""

import itertools
import math

import numpy as np
import pytest

from clipdehaze.stats import PAIRED_T, WELCH_T, bootstrap_ci, compare_metric, holm, paired_t, seed_stat, welch_t, \
    wilcoxon_p

# Student t with 2 degrees of freedom in closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p of t is
# 1 - t / sqrt(2 + t^2), and the 0.975 quantile q solves q / sqrt(2 + q^2) = 0.95: q^2 = 2 * 0.95^2 / (1 - 0.95^2).
T975_DF2 = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))  # 4.302652729749464
# Student t with 1 degree of freedom is Cauchy: the 0.975 quantile is tan(pi * (0.975 - 1/2)).
T975_DF1 = math.tan(math.pi * 0.475)  # 12.706204736174698


def test_closed_form_quantiles_are_the_tabled_ones():
    assert T975_DF2 == pytest.approx(4.302652729749464, rel=1e-12)
    assert T975_DF1 == pytest.approx(12.706204736174698, rel=1e-12)


def test_seed_stat_by_hand():
    # (30, 32): mean 31, sample variance ((-1)^2 + 1^2) / 1 = 2, half-width t(0.975, 1) * sqrt(2) / sqrt(2).
    s = seed_stat([(0, 30.0), (1, 32.0)])
    assert (s.mean, s.std, s.n) == (31.0, pytest.approx(math.sqrt(2)), 2)
    assert s.ci95 == pytest.approx(T975_DF1, rel=1e-9)
    # (10, 12, 11): mean 11, variance (1 + 1 + 0) / 2 = 1, half-width t(0.975, 2) / sqrt(3).
    s = seed_stat([(0, 10.0), (1, 12.0), (2, 11.0)])
    assert (s.mean, s.std) == (11.0, 1.0) and s.ci95 == pytest.approx(T975_DF2 / math.sqrt(3), rel=1e-9)
    # NaN is named, a missing value counted apart, neither averaged.
    s = seed_stat([(0, 10.0), (1, math.nan), (2, None), (3, 12.0)])
    assert (s.mean, s.n, s.nonfinite_seeds, s.missing_seeds) == (11.0, 2, [1], [2])


def test_paired_t_by_hand():
    # d = (10-9, 12-10, 11-11) = (1, 2, 0): mean 1, sd 1, se 1/sqrt(3), t = sqrt(3) with 2 df.
    res = paired_t(np.array([10.0, 12.0, 11.0]), np.array([9.0, 10.0, 11.0]))
    assert res.test == PAIRED_T and res.delta == pytest.approx(1.0)
    assert res.se == pytest.approx(1 / math.sqrt(3))
    assert res.p == pytest.approx(1 - math.sqrt(3) / math.sqrt(2 + 3), rel=1e-9)  # = 1 - sqrt(0.6) = 0.2254
    assert res.ci == pytest.approx((1 - T975_DF2 / math.sqrt(3), 1 + T975_DF2 / math.sqrt(3)), rel=1e-9)


def test_welch_t_by_hand():
    from scipy.stats import t as student_t  # the distribution only; the statistic, df and interval are ours

    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0, 8.0])
    # var a = 1, var b = (9 + 1 + 1 + 9) / 3 = 20/3; se^2 = 1/3 + (20/3)/4 = 2.
    # Welch-Satterthwaite df = se^4 / ((1/3)^2 / 2 + (5/3)^2 / 3) = 4 / (1/18 + 25/27) = 216/53.
    se, delta, df = math.sqrt(2), 2.0 - 5.0, 216 / 53
    res = welch_t(a, b)
    assert res.test == WELCH_T and res.delta == pytest.approx(delta) and res.se == pytest.approx(se)
    assert res.p == pytest.approx(2 * student_t.sf(abs(delta) / se, df), rel=1e-9)
    q = student_t.ppf(0.975, df)
    assert res.ci == pytest.approx((delta - q * se, delta + q * se), rel=1e-9)
    # A paired test on the same numbers would be a different claim: the two must not coincide.
    assert res.p != pytest.approx(paired_t(a[:3], b[:3]).p)


def test_too_few_seeds_give_no_seed_test():
    assert welch_t(np.array([1.0]), np.array([2.0, 3.0])).test is None
    assert paired_t(np.array([1.0]), np.array([2.0])).ci is None


def _exact_wilcoxon(d: np.ndarray) -> float:
    """Two-sided exact p by enumerating all 2^n sign assignments of the ranks (no zeros, no ties)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w_plus = ranks[d > 0].sum()
    observed = min(w_plus, ranks.sum() - w_plus)
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=d.size)]
    return min(1.0, 2 * sum(s <= observed for s in sums) / len(sums))


def test_wilcoxon_against_exact_enumeration():
    d = np.array([0.5, -1.2, 2.0, 0.3, 1.7, -0.1])
    # By hand: ranks of |d| = 3, 4, 6, 2, 5, 1; W+ = 3 + 6 + 2 + 5 = 16, W- = 4 + 1 = 5. Subsets of {1..6} with
    # sum <= 5: {}, 1, 2, 3, 4, 5, 12, 13, 14, 23 -> 10 of 64; two-sided p = 2 * 10/64.
    assert _exact_wilcoxon(d) == 0.3125
    assert wilcoxon_p(d) == pytest.approx(0.3125, rel=1e-12)
    rng = np.random.default_rng(3)
    for n in (5, 8, 11):
        d = rng.normal(0.3, 1.0, n)
        assert wilcoxon_p(d) == pytest.approx(_exact_wilcoxon(d), rel=1e-9), n
    assert wilcoxon_p(np.zeros(4)) is None


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([None, 0.2, None, 0.5]) == [None, pytest.approx(0.4), None, pytest.approx(0.5)]
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # 2 x 0.6 = 1.2 capped at 1; 0.7 then takes the running max
    assert holm([]) == []


def test_bootstrap_matches_the_normal_interval_on_a_large_sample():
    d = np.random.default_rng(0).normal(1.0, 2.0, 400)
    lo, hi = bootstrap_ci(d, 4999)
    half = 1.959964 * d.std(ddof=1) / math.sqrt(d.size)
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.05 * half)
    assert bootstrap_ci(np.array([0.3, 0.3, 0.3]), 999) == (0.3, 0.3)
    assert bootstrap_ci(np.array([0.3]), 999) is None


@pytest.mark.parametrize("higher_is_better, better, verdict", [
    (False, 1.0, "better (image-level 95% interval below 0)"),   # NIQE, BRISQUE: lower is better
    (True, 0.0, "worse (image-level 95% interval below 0)"),     # PSNR, SSIM
])
def test_direction_reads_win_rate_and_verdict(higher_is_better, better, verdict):
    variant = np.array([[3.0, 4.0, 5.0, 2.0]])
    reference = np.array([[4.0, 4.5, 6.5, 2.2]])  # d = -1, -0.5, -1.5, -0.2: the variant is lower on every image
    res = compare_metric("m", variant, reference, paired_seeds=True, higher_is_better=higher_is_better,
                         resamples=999)
    assert res.delta == pytest.approx(-0.8) and res.better_rate == better and res.tie_rate == 0.0
    assert res.verdict == verdict
    assert res.seed.test is None  # one seed each: no seed-level test, the image level decides


def test_seed_level_follows_the_pairing_decision():
    # Two seeds per row; seed means: variant (11, 13), reference (10, 11): paired d = (1, 2).
    variant = np.array([[10.0, 12.0], [12.0, 14.0]])
    reference = np.array([[9.0, 11.0], [10.0, 12.0]])
    paired = compare_metric("psnr", variant, reference, True, True, 999).seed
    unpaired = compare_metric("psnr", variant, reference, False, True, 999).seed
    assert paired.test == PAIRED_T and unpaired.test == WELCH_T
    # paired: mean 1.5, sd of (1, 2) = sqrt(0.5), se = 0.5; Welch: se^2 = 2/2 + 0.5/2 = 1.25
    assert paired.se == pytest.approx(0.5) and unpaired.se == pytest.approx(math.sqrt(1.25))
    assert paired.delta == unpaired.delta == pytest.approx(1.5)
