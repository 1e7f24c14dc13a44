"""``clipdehaze-compare``: does a variant beat its control on the same test images, by how much, how sure are we?

    clipdehaze-compare outputs/train/multiruns/<stamp> [more run folders ...] [--baseline NAME] [--out DIR]
                       [--metrics psnr ssim] [--viewer-images K] [--resamples N] [--group-by KEY ...] [--ignore KEY ...]

Rows are variants, exactly as ``clipdehaze-table`` makes them (:func:`clipdehaze.table.aggregate`: runs that differ
only in seed). The **control** (``--baseline``, a row's name as printed, or a unique part of it; default: the one
row whose generator takes no CLIP input) is compared with every other row, and each row with the ``real`` prior
with its ``shuffled`` / ``constant`` / ``zero`` twin (the same variant but for the prior control). Each comparison
pairs the two rows image by image, from every run's ``per_image.csv``:

* **per-image Δ**: the variant's value minus the reference's, each averaged over its seeds first;
* **mean Δ with a 95% bootstrap CI over images** (``scipy.stats.bootstrap``, BCa, a fixed generator), the
  **Wilcoxon signed-rank p** (``scipy.stats.wilcoxon``, two-sided) and the **win rate** (share of images the variant
  improves; ties are listed apart): how sure we are that *these trained models* differ on images like these;
* **seed level**: the Δ of the seed means with its 95% t-interval over seeds (``scipy.stats.ttest_rel`` when both
  rows ran the same seeds, Welch's ``ttest_ind`` otherwise): how sure we are that *another training run* would
  differ the same way;
* **which source of variance dominates**: the standard error of the mean Δ over images against that over seeds.
  When seeds dominate, a tiny image-level p says little: the effect is within the spread of training runs.

Runs scored on different image sets (the manifest hash of ``metrics.json``: file names and sizes) or under
different metric protocols are never paired; the error names both rows and why. Writes ``compare.md``,
``compare.csv`` (a line per comparison and metric), ``compare_per_image.csv``, ``forest.png`` (Δ with both
intervals per comparison), ``scatter.png`` (per image: control vs variant) and ``compare.html`` (self-contained:
the tables, the plots, and for the images with the largest positive and negative Δ a viewer hazy | control |
variant | GT with a before/after slider and full resolution on click; the restored images are the runs' own test
outputs, saved with ``save_test_outputs=true``, as the study experiments do).
"""

from __future__ import annotations

import argparse
import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipdehaze.artefacts import PER_IMAGE_CSV
from clipdehaze.table import PRIMARY_METRICS, Row, Run, aggregate, collect_runs

CONTROL_KEYS = ("clip_control", "test_clip_control")
RANDOM_PRIOR_NOTE = (
    "**The CLIP prior of these runs is random** (random CLIP weights, e.g. `clip=tiny_random`): it cannot carry "
    "information about the images, so `real` ≈ `shuffled` ≈ `constant` is the expected result here, and a difference "
    "to the CLIP-free control comes from the architecture and training noise, not from CLIP.")


class ComparisonError(ValueError):
    """Rows that cannot be paired, or per-image files that cannot be read; the message says which and why."""


# ------------------------------------------------------------------------------------------------------- inputs
def row_name(row: Row) -> str:
    """A row's name as ``clipdehaze-table`` prints it."""
    return row.generator + (f" ({row.label})" if row.label else "")


def short_names(rows: list[Row]) -> dict[int, str]:
    """``generator [prior]`` (``[CLIP-free]`` without CLIP input) where that names each row uniquely, else the full
    name: plot labels."""
    short = {id(r): f"{r.generator} [{'CLIP-free' if r.prior == '-' else r.prior}]" for r in rows}
    if len(set(short.values())) == len(rows):
        return short
    return {id(r): row_name(r) for r in rows}


def read_per_image(run: Run, metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """``{image name: {metric: value}}`` of one run's ``per_image.csv``; a missing file, column or a non-finite
    value is a ComparisonError naming the file."""
    path = Path(run.path) / PER_IMAGE_CSV
    if not path.is_file():
        raise ComparisonError(f"{path}: no per-image results (runs written before clipdehaze wrote {PER_IMAGE_CSV}, "
                              "or a run with test=false); rerun its test with clipdehaze-eval ckpt_path=<checkpoint>")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ComparisonError(f"{path}: unreadable ({e})") from e
    if not rows:
        raise ComparisonError(f"{path}: no images")
    missing = [c for c in ("name", *metrics) if c not in rows[0]]
    if missing:
        raise ComparisonError(f"{path}: no column {', '.join(missing)} (has {', '.join(rows[0])}); choose --metrics "
                              "among the columns every run has")
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        values = {}
        for m in metrics:
            try:
                values[m] = float(r[m])
            except (TypeError, ValueError):
                values[m] = math.nan
            if not math.isfinite(values[m]):
                raise ComparisonError(f"{path}: {m} of {r['name']} is {r[m]!r} (the output had NaN/Inf pixels); a "
                                      "paired comparison needs a finite value for every image")
        out[r["name"]] = values
    return out


def _describe_set(row: Row) -> str:
    where = row.runs[0].path + (f" and {len(row.runs) - 1} more runs" if len(row.runs) > 1 else "")
    return (f"{row_name(row)!r} {row.images} images of {row.dataset} (manifest {(row.manifest or 'unknown')[:12]}, "
            f"{where})")


def check_pairable(a: Row, b: Row) -> None:
    """Raise a ComparisonError saying why two rows were not scored on the same images under the same protocol."""
    if a.manifest is None or b.manifest is None:
        which = row_name(a) if a.manifest is None else row_name(b)
        raise ComparisonError(f"cannot pair {row_name(a)!r} with {row_name(b)!r}: the metrics.json of {which!r} "
                              "records no manifest of its scored images, so nothing shows they are the same images; "
                              "re-evaluate it with the current clipdehaze-eval")
    if (a.dataset, a.manifest) != (b.dataset, b.manifest):
        raise ComparisonError(f"cannot pair {row_name(a)!r} with {row_name(b)!r}: they were scored on different image "
                              f"sets: {_describe_set(a)} vs {_describe_set(b)}. A paired comparison needs the same "
                              "test images (same files and sizes); compare one image set at a time")
    if a.protocol != b.protocol:
        raise ComparisonError(f"cannot pair {row_name(a)!r} with {row_name(b)!r}: different metric protocols "
                              f"({a.protocol!r} vs {b.protocol!r})")


@dataclass
class Side:
    """One row of a comparison as matrices: ``values[metric]`` is (seeds, images), images in ``names`` order."""

    row: Row
    seeds: list[Any]
    values: dict[str, np.ndarray]
    runs: list[Run]


def load_side(row: Row, names: tuple[list[str], Path] | None, metrics: tuple[str, ...]
              ) -> tuple[Side, tuple[list[str], Path]]:
    """A row's per-image values; ``names``: (the image names every run must have scored, the file they come from),
    None for the first row loaded."""
    per_run = [(r, read_per_image(r, metrics)) for r in row.runs]
    if names is None:
        names = (sorted(per_run[0][1]), Path(per_run[0][0].path) / PER_IMAGE_CSV)
    expected, source = names
    for r, table in per_run:
        if sorted(table) != expected:
            here, there = sorted(set(table) - set(expected)), sorted(set(expected) - set(table))
            raise ComparisonError(f"{Path(r.path) / PER_IMAGE_CSV}: its images differ from those of {source} despite "
                                  f"one manifest (only here: {here[:5]}, only there: {there[:5]}); rerun its test")
    values = {m: np.array([[t[n][m] for n in expected] for _, t in per_run]) for m in metrics}
    return Side(row, [r.seed for r in row.runs], values, list(row.runs)), names


# ------------------------------------------------------------------------------------------------------- statistics
@dataclass
class MetricResult:
    """The paired statistics of one metric (variant minus reference; higher is better for PSNR and SSIM)."""

    metric: str
    n_images: int
    variant_mean: float
    reference_mean: float
    delta: float
    ci: tuple[float, float] | None
    wilcoxon_p: float | None
    win_rate: float
    tie_rate: float
    seed_test: str | None
    seed_delta: float | None
    seed_ci: tuple[float, float] | None
    seed_p: float | None
    se_images: float | None
    se_seeds: float | None
    per_image: np.ndarray = field(repr=False)
    variant_per_image: np.ndarray = field(repr=False)
    reference_per_image: np.ndarray = field(repr=False)

    @property
    def dominant(self) -> str | None:
        """``seeds`` or ``images``: whose standard error of the mean Δ is larger (None when one is unknown)."""
        if self.se_images is None or self.se_seeds is None:
            return None
        return "seeds" if self.se_seeds > self.se_images else "images"

    @property
    def verdict(self) -> str:
        """From the seed-level interval when there is one (another training run), else the image-level one."""
        if not np.any(self.per_image != 0):
            return "identical on every image (the model got the same inputs, or ignores them)"
        interval, level = (self.seed_ci, "seed") if self.seed_ci is not None else (self.ci, "image")
        if interval is None:
            return "undetermined (one image and one seed)"
        lo, hi = interval
        if lo > 0:
            return f"better ({level}-level 95% interval above 0)"
        if hi < 0:
            return f"worse ({level}-level 95% interval below 0)"
        return f"no clear difference ({level}-level 95% interval contains 0)"


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
    """Two-sided Wilcoxon signed-rank p of the per-image Δ (None without a non-zero Δ)."""
    from scipy import stats

    if not np.any(d != 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one non-zero Δ: scipy's normal approximation divides by 0
        return float(stats.wilcoxon(d).pvalue)


def seed_level(variant: dict[Any, float], reference: dict[Any, float]
               ) -> tuple[str | None, float | None, tuple[float, float] | None, float | None, float | None]:
    """(test, Δ of seed means, its 95% t-interval, p, standard error) over seeds; paired by seed when both rows ran
    the same seeds, Welch otherwise; Nones where a row has fewer than 2 seeds."""
    from scipy import stats

    shared = sorted(set(variant) & set(reference), key=str)
    if set(variant) == set(reference) and len(shared) >= 2:
        a = np.array([variant[s] for s in shared])
        b = np.array([reference[s] for s in shared])
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(0.95)
        d = a - b
        return "paired t", float(d.mean()), (float(ci.low), float(ci.high)), _p(res.pvalue), \
            float(d.std(ddof=1) / math.sqrt(d.size))
    a, b = np.array(list(variant.values())), np.array(list(reference.values()))
    if a.size < 2 or b.size < 2:
        return None, float(a.mean() - b.mean()), None, None, None
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return "Welch t", float(a.mean() - b.mean()), (float(ci.low), float(ci.high)), _p(res.pvalue), se


def _p(p: float) -> float | None:
    return float(p) if math.isfinite(p) else None


def _finite_or_point(ci, value: float) -> tuple[float, float]:
    """A t-interval of Δs that are all equal is NaN in scipy; it is the point itself."""
    lo, hi = ci
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else (value, value)


def compare_metric(variant: Side, reference: Side, metric: str, resamples: int) -> MetricResult:
    va, ref = variant.values[metric], reference.values[metric]
    v_img, r_img = va.mean(axis=0), ref.mean(axis=0)
    d = v_img - r_img
    test, seed_delta, seed_ci, seed_p, se_seeds = seed_level(
        {s: float(v) for s, v in zip(variant.seeds, va.mean(axis=1))},
        {s: float(v) for s, v in zip(reference.seeds, ref.mean(axis=1))})
    if seed_ci is not None:
        seed_ci = _finite_or_point(seed_ci, seed_delta)
    return MetricResult(
        metric=metric, n_images=d.size, variant_mean=float(v_img.mean()), reference_mean=float(r_img.mean()),
        delta=float(d.mean()), ci=bootstrap_ci(d, resamples), wilcoxon_p=wilcoxon_p(d),
        win_rate=float(np.mean(d > 0)), tie_rate=float(np.mean(d == 0)), seed_test=test, seed_delta=seed_delta,
        seed_ci=seed_ci, seed_p=seed_p, se_images=float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None,
        se_seeds=se_seeds, per_image=d, variant_per_image=v_img, reference_per_image=r_img)


@dataclass
class Comparison:
    """``variant`` minus ``reference`` on the same images; ``kind``: ``vs control`` or ``real vs <control>``."""

    kind: str
    variant: Side
    reference: Side
    names: list[str]
    results: dict[str, MetricResult]


def _twin_key(row: Row) -> tuple:
    """A row's identity without its prior control: rows equal in it differ only in the prior."""
    rest = {k: v for k, v in row.variant.items() if k.rsplit(".", 1)[-1] not in CONTROL_KEYS}
    return row.generator, row.dataset, row.manifest, row.protocol, tuple(sorted((k, str(v)) for k, v in rest.items()))


def find_baseline(rows: list[Row], baseline: str | None) -> Row:
    names = [row_name(r) for r in rows]
    listing = "; ".join(names)
    if baseline is None:
        free = [r for r in rows if r.prior == "-"]
        if len(free) != 1:
            why = "no row is CLIP-free" if not free else f"{len(free)} rows are CLIP-free"
            raise ComparisonError(f"{why}: name the control with --baseline NAME (rows: {listing})")
        return free[0]
    exact = [r for r, n in zip(rows, names) if n == baseline]
    hits = exact or [r for r, n in zip(rows, names) if baseline in n]
    if len(hits) != 1:
        raise ComparisonError(f"--baseline {baseline!r} matches {len(hits)} rows; give one of: {listing}")
    return hits[0]


def plan(rows: list[Row], baseline: Row) -> list[tuple[str, Row, Row]]:
    """(kind, variant, reference): every row against the control, then each real-prior row against its twins
    under the other controls."""
    pairs = [("vs control", r, baseline) for r in rows if r is not baseline]
    for real in (r for r in rows if r.prior == "real"):
        for other in rows:
            if other is not real and other.prior not in ("real", "-") and _twin_key(other) == _twin_key(real):
                pairs.append((f"real vs {other.prior}", real, other))
    return pairs


def compare(paths: list[Path], baseline: str | None = None, metrics: tuple[str, ...] = PRIMARY_METRICS,
            resamples: int = 9999, group_by: list[str] | None = None, ignore: list[str] | None = None
            ) -> tuple[list[Row], Row, list[Comparison]]:
    rows = aggregate(collect_runs(paths), group_by=group_by, ignore=ignore)
    if len(rows) < 2:
        raise ComparisonError(f"one row ({row_name(rows[0])}) below {', '.join(map(str, paths))}: a comparison needs a "
                              "variant and its control")
    base = find_baseline(rows, baseline)
    comparisons = []
    sides: dict[int, Side] = {}
    names: tuple[list[str], Path] | None = None
    for kind, v, r in plan(rows, base):
        check_pairable(v, r)
        for row in (r, v):
            if id(row) not in sides:
                sides[id(row)], names = load_side(row, names, metrics)
        comparisons.append(Comparison(kind, sides[id(v)], sides[id(r)], names[0],
                                      {m: compare_metric(sides[id(v)], sides[id(r)], m, resamples) for m in metrics}))
    return rows, base, comparisons


# ------------------------------------------------------------------------------------------------------- report
_UNITS = {"psnr": " dB"}


def _num(v: float | None, metric: str, signed: bool = False) -> str:
    if v is None:
        return "-"
    from clipdehaze.metrics.registry import metric_display

    d = metric_display(metric)[1]
    if v != 0 and abs(v) < 0.5 * 10 ** -d:  # a difference too small for the metric's digits is not zero
        return f"{v:+.1e}" if signed else f"{v:.1e}"
    return f"{v:+.{d}f}" if signed else f"{v:.{d}f}"


def _interval(ci: tuple[float, float] | None, metric: str) -> str:
    return "-" if ci is None else f"[{_num(ci[0], metric, True)}, {_num(ci[1], metric, True)}]"


def _pval(p: float | None) -> str:
    return "-" if p is None else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def variance_statement(res: MetricResult) -> str:
    unit = _UNITS.get(res.metric, "")
    if res.se_seeds is None:
        return ("seed-to-seed variance unknown (fewer than 2 seeds per row): the image-level interval ignores "
                "training randomness")
    if res.se_images is None:
        return "image-level variance unknown (one image)"
    se_s, se_i = _num(res.se_seeds, res.metric), _num(res.se_images, res.metric)
    if res.dominant == "seeds":
        return (f"seed-to-seed variance dominates (standard error {se_s}{unit} over seeds vs {se_i}{unit} over "
                "images): the image-level CI and p understate the uncertainty; read the seed-level interval")
    return (f"image-to-image variance dominates (standard error {se_i}{unit} over images vs {se_s}{unit} over "
            "seeds): more test images narrow the interval more than more seeds")


def random_prior(rows: list[Row]) -> bool:
    return any("random CLIP" in r.flags for r in rows)


def _seeds(seeds: list[Any]) -> str:
    numeric = all(isinstance(s, (int, float)) for s in seeds)
    return " ".join(map(str, sorted(seeds) if numeric else sorted(seeds, key=str)))


def _row_cell(row: Row, metric: str) -> str:
    s = row.stat(metric)
    if s.mean is None:
        return "-"
    return _num(s.mean, metric) + (f" ± {_num(s.std, metric)}" if s.std is not None else "")


def report_blocks(rows: list[Row], base: Row, comparisons: list[Comparison], metrics: tuple[str, ...]) -> list[tuple]:
    """The report as blocks, rendered to Markdown here and to HTML by :mod:`clipdehaze.compare_html`:
    ``("h", level, text)``, ``("p", text)``, ``("warn", text)``, ``("ul", [items])``, ``("table", header, rows)``.
    Text may hold ``**bold**`` and ```code``` spans."""
    short = short_names(rows)
    blocks: list[tuple] = [("h", 1, f"Does the CLIP prior help? {rows[0].dataset} (test images: {base.images})")]
    if random_prior(rows):
        blocks.append(("warn", RANDOM_PRIOR_NOTE))
    blocks += [("p", f"Control: **{short[id(base)]}** = {row_name(base)}."), ("h", 2, "Rows"),
               ("table", ["row", "variant", "prior", *[f"{m.upper()} (mean ± std over seeds)" for m in metrics],
                          "seeds", "flags"],
                [[short[id(r)], row_name(r), r.prior, *[_row_cell(r, m) for m in metrics], _seeds(r.seeds),
                  "; ".join(r.flags)] for r in rows])]
    for m in metrics:
        table = []
        for c in comparisons:
            res = c.results[m]
            win = f"{res.win_rate:.0%}" + (f" ({res.tie_rate:.0%} ties)" if res.tie_rate else "")
            seed = _interval(res.seed_ci, m) + (f" ({res.seed_test}, p {_pval(res.seed_p)})" if res.seed_test else "")
            table.append([c.kind, short[id(c.variant.row)], short[id(c.reference.row)], _num(res.delta, m, True),
                          _interval(res.ci, m), _pval(res.wilcoxon_p), win, _num(res.seed_delta, m, True), seed,
                          res.verdict])
        blocks += [("h", 2, f"Δ {m.upper()}{_UNITS.get(m, '')} (variant − reference, per image averaged over seeds)"),
                   ("table", ["comparison", "variant", "reference", "mean Δ", "95% bootstrap CI (images)",
                              "Wilcoxon p", "win rate", "Δ of seed means", "95% t-interval (seeds)", "verdict"], table),
                   ("p", "Variance:"),
                   ("ul", [f"{c.kind}, {short[id(c.variant.row)]}: {variance_statement(c.results[m])}"
                           for c in comparisons])]
    blocks += [("h", 2, "How to read this"), ("ul", [
        "*Image level* (bootstrap CI, Wilcoxon p, win rate): how sure we are that these trained models differ on "
        "images like these. *Seed level* (t-interval over seeds): how sure we are that another training run would "
        "differ the same way. A difference that the image level calls certain but the seed level does not is within "
        "the spread of training runs.",
        "`real vs shuffled` isolates the image-specific information of the prior (the same distribution of CLIP "
        "inputs, another image's); `real vs constant` whether it matters that the prior varies with the image; "
        "`vs control` everything CLIP adds, its part of the architecture included.",
        f"{len(comparisons[0].names)} images paired by file name, one manifest: {base.manifest}.",
        f"Metric protocol: {base.protocol}."])]
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for kind, *rest in blocks:
        if kind == "h":
            lines += ["#" * rest[0] + " " + rest[1], ""]
        elif kind in ("p", "warn"):
            lines += [rest[0], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in rest[0]] + [""]
        else:
            header, body = rest
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(map(str, r)) + " |" for r in body), ""]
    return "\n".join(lines)


def write_csv(comparisons: list[Comparison], path: Path, short: dict[int, str]) -> None:
    fields = ["kind", "variant", "reference", "variant_row", "reference_row", "metric", "n_images", "variant_seeds",
              "reference_seeds", "variant_mean", "reference_mean", "delta", "ci_low", "ci_high", "wilcoxon_p",
              "win_rate", "tie_rate", "seed_test", "seed_delta", "seed_ci_low", "seed_ci_high", "seed_p", "se_images",
              "se_seeds", "dominant", "verdict", "manifest"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for c in comparisons:
            for m, res in c.results.items():
                w.writerow({
                    "kind": c.kind, "variant": short[id(c.variant.row)], "reference": short[id(c.reference.row)],
                    "variant_row": row_name(c.variant.row), "reference_row": row_name(c.reference.row), "metric": m,
                    "n_images": res.n_images, "variant_seeds": _seeds(c.variant.seeds),
                    "reference_seeds": _seeds(c.reference.seeds), "variant_mean": res.variant_mean,
                    "reference_mean": res.reference_mean, "delta": res.delta,
                    "ci_low": res.ci[0] if res.ci else None, "ci_high": res.ci[1] if res.ci else None,
                    "wilcoxon_p": res.wilcoxon_p, "win_rate": res.win_rate, "tie_rate": res.tie_rate,
                    "seed_test": res.seed_test, "seed_delta": res.seed_delta,
                    "seed_ci_low": res.seed_ci[0] if res.seed_ci else None,
                    "seed_ci_high": res.seed_ci[1] if res.seed_ci else None, "seed_p": res.seed_p,
                    "se_images": res.se_images, "se_seeds": res.se_seeds, "dominant": res.dominant,
                    "verdict": res.verdict, "manifest": c.variant.row.manifest})


def write_per_image_csv(comparisons: list[Comparison], path: Path, short: dict[int, str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "variant", "reference", "metric", "image", "variant_value", "reference_value", "delta"])
        for c in comparisons:
            for m, res in c.results.items():
                for name, v, r, d in zip(c.names, res.variant_per_image, res.reference_per_image, res.per_image):
                    w.writerow([c.kind, short[id(c.variant.row)], short[id(c.reference.row)], m, name, v, r, d])


def forest_plot(comparisons: list[Comparison], path: Path, short: dict[int, str], metrics: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(comparisons)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 1.2 + 0.55 * n), squeeze=False)
    labels = [f"{short[id(c.variant.row)]} − {short[id(c.reference.row)]}" for c in comparisons]
    for ax, m in zip(axes[0], metrics):
        for i, c in enumerate(comparisons):
            res, y = c.results[m], n - 1 - i
            if res.seed_ci is not None:
                ax.plot(res.seed_ci, [y - 0.15] * 2, color="tab:orange", lw=1.5,
                        label="95% t-interval over seeds" if i == 0 else None)
            if res.ci is not None:
                ax.plot(res.ci, [y + 0.15] * 2, color="tab:blue", lw=4, alpha=0.7,
                        label="95% bootstrap CI over images" if i == 0 else None)
            ax.plot([res.delta], [y], "ko", ms=5, label="mean Δ" if i == 0 else None)
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_yticks(range(n), labels[::-1], fontsize=8)
        ax.set_ylim(-0.7, n - 0.3)
        ax.set_xlabel(f"Δ {m.upper()}{_UNITS.get(m, '')} (variant − reference)")
        ax.set_title(f"Δ {m.upper()} per comparison")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scatter_plot(comparisons: list[Comparison], path: Path, short: dict[int, str], metric: str = "psnr") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in comparisons if c.kind == "vs control"] or comparisons
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 4.1 * rows), squeeze=False)
    for ax, c in zip(axes.flat, shown):
        res = c.results[metric]
        x, y = res.reference_per_image, res.variant_per_image
        ax.scatter(x, y, s=14, c=np.where(res.per_image > 0, "tab:green", "tab:red"), alpha=0.8)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--")
        ax.set_xlabel(f"{short[id(c.reference.row)]} {metric.upper()}", fontsize=8)
        ax.set_ylabel(f"{short[id(c.variant.row)]} {metric.upper()}", fontsize=8)
        ax.set_title(f"per image ({res.win_rate:.0%} above the diagonal)", fontsize=9)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_report(paths: list[Path], out: Path, baseline: str | None = None,
                metrics: tuple[str, ...] = PRIMARY_METRICS, viewer_images: int = 2, resamples: int = 9999,
                group_by: list[str] | None = None, ignore: list[str] | None = None) -> dict[str, Any]:
    from clipdehaze.compare_html import write_html

    rows, base, comparisons = compare(paths, baseline, metrics, resamples, group_by, ignore)
    short = short_names(rows)
    out.mkdir(parents=True, exist_ok=True)
    blocks = report_blocks(rows, base, comparisons, metrics)
    md = to_markdown(blocks)
    (out / "compare.md").write_text(md)
    write_csv(comparisons, out / "compare.csv", short)
    write_per_image_csv(comparisons, out / "compare_per_image.csv", short)
    forest_plot(comparisons, out / "forest.png", short, metrics)
    scatter_plot(comparisons, out / "scatter.png", short, metrics[0])
    write_html(out / "compare.html", blocks, comparisons, short, metrics[0], out, viewer_images)
    return {"rows": rows, "baseline": base, "comparisons": comparisons, "markdown": md, "out": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="clipdehaze-compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run or multirun folders (searched for metrics.json)")
    ap.add_argument("--baseline", default=None, metavar="NAME",
                    help="the control row (its name as printed, or a unique part of it); default: the CLIP-free row")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default outputs/compare/<first folder>)")
    ap.add_argument("--metrics", nargs="+", default=list(PRIMARY_METRICS), help="per-image columns (higher is better)")
    ap.add_argument("--viewer-images", type=int, default=2, metavar="K",
                    help="images with the largest positive and the largest negative Δ PSNR shown per comparison")
    ap.add_argument("--resamples", type=int, default=9999, help="bootstrap resamples")
    ap.add_argument("--group-by", nargs="+", default=None, metavar="KEY", help="as clipdehaze-table")
    ap.add_argument("--ignore", nargs="+", default=None, metavar="KEY", help="as clipdehaze-table")
    args = ap.parse_args(argv)
    if args.viewer_images < 0 or args.resamples < 1:
        ap.error("--viewer-images must be >= 0 and --resamples >= 1")
    out = args.out or Path("outputs/compare") / args.runs[0].resolve().name
    try:
        result = make_report(args.runs, out, args.baseline, tuple(args.metrics), args.viewer_images, args.resamples,
                             args.group_by, args.ignore)
    except (FileNotFoundError, ValueError) as e:
        print(f"clipdehaze-compare: error: {e}")
        return 2
    print(result["markdown"])
    print(f"wrote {out}/compare.md, compare.csv, compare_per_image.csv, forest.png, scatter.png, compare.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
