"""``clipdehaze-compare``: does a variant beat its control on the same test images, by how much, how sure are we?

    clipdehaze-compare outputs/train/multiruns/<stamp> [more run folders ...] [--baseline ROW] [--out DIR]
                       [--metrics psnr ssim] [--viewer-images K] [--resamples N] [--group-by KEY ...] [--ignore KEY ...]

Rows are scored things, exactly as ``clipdehaze-table`` makes them (:func:`clipdehaze.runs.identity.aggregate`:
runs that differ only in seed). The **control** (``--baseline``: a row's id or name as printed, or a unique part of
the name; default: the one row whose generator takes no CLIP input) is compared with every other row, and each row
with the ``real`` prior with its ``shuffled`` / ``constant`` / ``zero`` twin (the same weights recipe but for the
prior control). Any two rows can be compared, e.g. plain and self-ensembled (``tta=x8``) scores of the same
weights: ``--baseline`` the plain row's id. Each comparison pairs the two rows image by image, from every run's
``per_image.csv``, with the statistics of :mod:`clipdehaze.stats`:

* **per-image Δ**: the variant's value minus the reference's, each averaged over its seeds first;
* **mean Δ with a 95% bootstrap CI over images**, the **Wilcoxon signed-rank p** and the **share of images the
  variant improves**, in the metric's direction (NIQE and BRISQUE improve downwards; the metric registry says
  which): how sure we are that *these trained models* differ on images like these;
* **seed level**: the Δ of the seed means with its 95% t-interval over seeds: the paired t-test where the rows share
  an initialisation (prior-control twins; one set of weights scored two ways), Welch's unpaired t-test otherwise
  (two architectures share no initialisation under one seed number); the test is named on every line. How sure we
  are that *another training run* would differ the same way;
* **Holm-adjusted p** beside each raw p, over every comparison and metric of the report;
* **which source of variance dominates**: the standard error of the mean Δ over images against that over seeds.
  When seeds dominate, a tiny image-level p says little: the effect is within the spread of training runs.

Refused, with the names: runs scored on different image sets (the manifest hash of ``metrics.json``) or under
different metric protocols, an image listed twice in a ``per_image.csv``, a seed that names two different weights
in one row, and seeds missing from one of two rows paired by seed. Writes ``compare.md``, ``compare.csv`` (a line
per comparison and metric), ``compare_per_image.csv`` (both formula-safe), ``forest.png`` (Δ with both intervals
per comparison), ``scatter.png`` (per image: control vs variant) and ``compare.html`` (self-contained and inert:
the tables, the plots, and for the images with the largest improvement and regression a viewer hazy | control |
variant | GT with a before/after slider and full resolution on click; the restored images are the runs' own test
outputs, saved with ``save_test_outputs=true``, as the study experiments do).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdehaze.render import markdown, numbers
from clipdehaze.render.csv import dicts_to_csv, to_csv
from clipdehaze.render.document import b, code, em
from clipdehaze.render.numbers import PRIMARY_METRICS
from clipdehaze.runs.collect import collect_runs
from clipdehaze.runs.identity import Row, aggregate, find_row, share_initialisation
from clipdehaze.runs.per_image import (
    PER_IMAGE_CSV,
    ComparisonError,
    Side,
    check_pairable,
    check_same_seeds,
    check_seeds,
    load_side,
)
from clipdehaze.stats import MetricResult, compare_metric, holm

__all__ = ["PER_IMAGE_CSV", "ComparisonError", "Comparison", "compare", "main", "make_report"]

RANDOM_PRIOR_NOTE = [
    b("The CLIP prior of these runs is random"), " (random CLIP weights, e.g. ", code("clip=tiny_random"), "): it "
    "cannot carry information about the images, so ", code("real"), " ≈ ", code("shuffled"), " ≈ ", code("constant"),
    " is the expected result here, and a difference to the CLIP-free control comes from the architecture and "
    "training noise, not from CLIP."]


@dataclass
class Comparison:
    """``variant`` minus ``reference`` on the same images; ``kind``: ``vs control`` or ``real vs <control>``;
    ``paired_seeds``: whether the rows share an initialisation (the seed-level test pairs them)."""

    kind: str
    variant: Side
    reference: Side
    names: list[str]
    paired_seeds: bool
    results: dict[str, MetricResult]


def short_names(rows: list[Row]) -> dict[str, str]:
    """``generator [prior]`` (``[CLIP-free]`` without CLIP input) where that names each row uniquely, else the
    row's name: plot and report labels, by row id."""
    short = {r.id: f"{r.generator} [{'CLIP-free' if r.prior == '-' else r.prior}]" for r in rows}
    if len(set(short.values())) == len(rows):
        return short
    return {r.id: r.name for r in rows}


def find_baseline(rows: list[Row], baseline: str | None) -> Row:
    if baseline is None:
        free = [r for r in rows if r.prior == "-"]
        if len(free) != 1:
            why = "no row is CLIP-free" if not free else f"{len(free)} rows are CLIP-free"
            listing = "; ".join(f"{r.id} = {r.name}" for r in rows)
            raise ComparisonError(f"{why}: name the control with --baseline ROW (an id or a name; rows: {listing})")
        return free[0]
    try:
        return find_row(rows, baseline)
    except ValueError as e:
        raise ComparisonError(f"--baseline {e}") from None


def plan(rows: list[Row], baseline: Row) -> list[tuple[str, Row, Row]]:
    """(kind, variant, reference): every row against the control, then each real-prior row against its twins
    under the other controls (the same weights recipe and initialisation, another prior)."""
    pairs = [("vs control", r, baseline) for r in rows if r is not baseline]
    for real in (r for r in rows if r.prior == "real"):
        for other in rows:
            if (other is not real and other.prior not in ("real", "-") and share_initialisation(other, real)
                    and (other.dataset, other.manifest, other.protocol) == (real.dataset, real.manifest, real.protocol)
                    and _without_test_control(other.evaluation) == _without_test_control(real.evaluation)):
                pairs.append((f"real vs {other.prior}", real, other))
    return pairs


def _without_test_control(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in evaluation.items() if k != "test_clip_control"}


def _direction(metric: str) -> bool:
    higher = numbers.display(metric)[2]
    if higher is None:
        from clipdehaze.metrics.registry import list_metrics

        raise ComparisonError(f"--metrics {metric}: no registered metric of that name says whether higher or lower is "
                              f"better, so no verdict can be read; registered: {', '.join(list_metrics())}")
    return higher


def compare(paths: list[Path], baseline: str | None = None, metrics: tuple[str, ...] = PRIMARY_METRICS,
            resamples: int = 9999, group_by: list[str] | None = None, ignore: list[str] | None = None
            ) -> tuple[list[Row], Row, list[Comparison]]:
    directions = {m: _direction(m) for m in metrics}
    rows = aggregate(collect_runs(paths), group_by=group_by, ignore=ignore)
    if len(rows) < 2:
        raise ComparisonError(f"one row ({rows[0].name}) below {', '.join(map(str, paths))}: a comparison needs a "
                              "variant and its control")
    base = find_baseline(rows, baseline)
    comparisons = []
    sides: dict[str, Side] = {}
    names: tuple[list[str], Path] | None = None
    for kind, v, r in plan(rows, base):
        check_pairable(v, r)
        for row in (r, v):
            check_seeds(row)
        paired = share_initialisation(v, r)
        if paired:
            check_same_seeds(v, r)
        for row in (r, v):
            if row.id not in sides:
                sides[row.id], names = load_side(row, names, metrics)
        sv, sr = sides[v.id], sides[r.id]
        comparisons.append(Comparison(kind, sv, sr, names[0], paired, {
            m: compare_metric(m, sv.values[m], sr.values[m], paired, directions[m], resamples) for m in metrics}))
    results = [res for c in comparisons for res in c.results.values()]
    for res, p in zip(results, holm([res.wilcoxon_p for res in results])):
        res.wilcoxon_p_holm = p
    for res, p in zip(results, holm([res.seed.p for res in results])):
        res.seed_p_holm = p
    return rows, base, comparisons


# ------------------------------------------------------------------------------------------------------- report
def variance_statement(res: MetricResult) -> str:
    unit = numbers.UNITS.get(res.metric, "")
    if res.seed.se is None:
        return ("seed-to-seed variance unknown (fewer than 2 seeds per row): the image-level interval ignores "
                "training randomness")
    if res.se_images is None:
        return "image-level variance unknown (one image)"
    se_s, se_i = numbers.value(res.seed.se, res.metric), numbers.value(res.se_images, res.metric)
    if res.dominant == "seeds":
        return (f"seed-to-seed variance dominates (standard error {se_s}{unit} over seeds vs {se_i}{unit} over "
                "images): the image-level CI and p understate the uncertainty; read the seed-level interval")
    return (f"image-to-image variance dominates (standard error {se_i}{unit} over images vs {se_s}{unit} over "
            "seeds): more test images narrow the interval more than more seeds")


def random_prior(rows: list[Row]) -> bool:
    return any("random CLIP" in r.flags for r in rows)


def _row_cell(row: Row, metric: str) -> str:
    return numbers.mean_std(row.stat(metric), metric, ci=False)


def _p_cell(p: float | None, adjusted: float | None) -> str:
    return "-" if p is None else f"{numbers.pvalue(p)} (Holm {numbers.pvalue(adjusted)})"


def report_blocks(rows: list[Row], base: Row, comparisons: list[Comparison], metrics: tuple[str, ...]) -> list[tuple]:
    """The report as :mod:`clipdehaze.render.document` blocks (rendered to Markdown and HTML)."""
    short = short_names(rows)
    question = "Does the CLIP prior help?" if any(r.prior != "-" for r in rows) else "Paired comparison:"
    blocks: list[tuple] = [("h", 1, f"{question} {rows[0].dataset} (test images: {base.images})")]
    if random_prior(rows):
        blocks.append(("warn", RANDOM_PRIOR_NOTE))
    blocks += [("p", ["Control: ", b(short[base.id]), f" = {base.name} (id {base.id})."]), ("h", 2, "Rows"),
               ("table", ["row", "id", "name", "prior", *[f"{m.upper()} (mean ± std over seeds)" for m in metrics],
                          "seeds", "runs", "flags"],
                [[short[r.id], r.id, r.name, r.prior, *[_row_cell(r, m) for m in metrics], numbers.seeds(r.seeds),
                  r.provenance, "; ".join(r.flags)] for r in rows])]
    for m in metrics:
        table = []
        for c in comparisons:
            res = c.results[m]
            better = numbers.share(res.better_rate) + (f" ({numbers.share(res.tie_rate)} ties)" if res.tie_rate else "")
            table.append([c.kind, short[c.variant.row.id], short[c.reference.row.id], numbers.value(res.delta, m, True),
                          numbers.interval(res.ci, m), _p_cell(res.wilcoxon_p, res.wilcoxon_p_holm), better,
                          res.seed.test or "- (fewer than 2 seeds)", numbers.value(res.seed.delta, m, True),
                          numbers.interval(res.seed.ci, m), _p_cell(res.seed.p, res.seed_p_holm), res.verdict])
        direction = "higher" if c.results[m].higher_is_better else "lower"
        blocks += [("h", 2, f"Δ {m.upper()}{numbers.UNITS.get(m, '')} (variant − reference, per image averaged over "
                            f"seeds; {direction} is better)"),
                   ("table", ["comparison", "variant", "reference", "mean Δ", "95% bootstrap CI (images)",
                              "Wilcoxon p (Holm)", "images improved", "seed-level test", "Δ of seed means",
                              "95% t-interval (seeds)", "seed p (Holm)", "verdict"], table),
                   ("p", "Variance:"),
                   ("ul", [f"{c.kind}, {short[c.variant.row.id]}: {variance_statement(c.results[m])}"
                           for c in comparisons])]
    blocks += [("h", 2, "How to read this"), ("ul", [
        [em("Image level"), " (bootstrap CI, Wilcoxon p, share of images improved): how sure we are that these "
         "trained models differ on images like these. ", em("Seed level"), " (t-interval over seeds): how sure we "
         "are that another training run would differ the same way. A difference that the image level calls certain "
         "but the seed level does not is within the spread of training runs."],
        ["The seed-level test pairs seeds only where both rows started from the same weights (a ",
         code("paired t"), " between prior-control twins or two scorings of one set of weights); rows of "
         "different architectures or recipes share no initialisation under one seed number, and get ",
         code("Welch t"), " on their seed means."],
        f"Holm: each p adjusted over all p-values of its level in this report ({len(comparisons)} comparisons × "
        f"{len(metrics)} metrics), so a conclusion drawn from the adjusted p-values holds for the report as a whole.",
        [code("real vs shuffled"), " isolates the image-specific information of the prior (the same distribution of "
         "CLIP inputs, another image's); ", code("real vs constant"), " whether it matters that the prior varies "
         "with the image; ", code("vs control"), " everything CLIP adds, its part of the architecture included."],
        f"{len(comparisons[0].names)} images paired by file name, one manifest: {base.manifest}.",
        f"Metric protocol: {base.protocol}."])]
    return blocks


_CSV_FIELDS = ["kind", "variant", "reference", "variant_row", "reference_row", "variant_id", "reference_id", "metric",
               "higher_is_better", "n_images", "variant_seeds", "reference_seeds", "variant_mean", "reference_mean",
               "delta", "ci_low", "ci_high", "wilcoxon_p", "wilcoxon_p_holm", "better_rate", "tie_rate", "seed_test",
               "seed_delta", "seed_ci_low", "seed_ci_high", "seed_p", "seed_p_holm", "se_images", "se_seeds",
               "dominant", "verdict", "manifest"]


def _csv_rows(comparisons: list[Comparison], short: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for c in comparisons:
        for m, res in c.results.items():
            out.append({
                "kind": c.kind, "variant": short[c.variant.row.id], "reference": short[c.reference.row.id],
                "variant_row": c.variant.row.name, "reference_row": c.reference.row.name,
                "variant_id": c.variant.row.id, "reference_id": c.reference.row.id, "metric": m,
                "higher_is_better": res.higher_is_better, "n_images": res.n_images,
                "variant_seeds": numbers.seeds(c.variant.seeds), "reference_seeds": numbers.seeds(c.reference.seeds),
                "variant_mean": res.variant_mean, "reference_mean": res.reference_mean, "delta": res.delta,
                "ci_low": res.ci[0] if res.ci else None, "ci_high": res.ci[1] if res.ci else None,
                "wilcoxon_p": res.wilcoxon_p, "wilcoxon_p_holm": res.wilcoxon_p_holm, "better_rate": res.better_rate,
                "tie_rate": res.tie_rate, "seed_test": res.seed.test, "seed_delta": res.seed.delta,
                "seed_ci_low": res.seed.ci[0] if res.seed.ci else None,
                "seed_ci_high": res.seed.ci[1] if res.seed.ci else None, "seed_p": res.seed.p,
                "seed_p_holm": res.seed_p_holm, "se_images": res.se_images, "se_seeds": res.seed.se,
                "dominant": res.dominant, "verdict": res.verdict, "manifest": c.variant.row.manifest})
    return out


def _per_image_rows(comparisons: list[Comparison], short: dict[str, str]) -> list[list[Any]]:
    return [[c.kind, short[c.variant.row.id], short[c.reference.row.id], m, name, float(v), float(r), float(d)]
            for c in comparisons for m, res in c.results.items()
            for name, v, r, d in zip(c.names, res.variant_per_image, res.reference_per_image, res.per_image)]


def make_report(paths: list[Path], out: Path, baseline: str | None = None,
                metrics: tuple[str, ...] = PRIMARY_METRICS, viewer_images: int = 2, resamples: int = 9999,
                group_by: list[str] | None = None, ignore: list[str] | None = None) -> dict[str, Any]:
    from clipdehaze.render.html import write_html
    from clipdehaze.render.plots import forest_plot, scatter_plot

    rows, base, comparisons = compare(paths, baseline, metrics, resamples, group_by, ignore)
    short = short_names(rows)
    out.mkdir(parents=True, exist_ok=True)
    blocks = report_blocks(rows, base, comparisons, metrics)
    md = markdown.render(blocks)
    (out / "compare.md").write_text(md)
    (out / "compare.csv").write_text(dicts_to_csv(_CSV_FIELDS, _csv_rows(comparisons, short)))
    (out / "compare_per_image.csv").write_text(to_csv(
        ["kind", "variant", "reference", "metric", "image", "variant_value", "reference_value", "delta"],
        _per_image_rows(comparisons, short)))
    forest_plot(comparisons, out / "forest.png", short, metrics)
    scatter_plot(comparisons, out / "scatter.png", short, metrics[0])
    write_html(out / "compare.html", blocks, comparisons, short, metrics[0], out, viewer_images)
    return {"rows": rows, "baseline": base, "comparisons": comparisons, "markdown": md, "out": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="clipdehaze-compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run or multirun folders (searched for metrics.json)")
    ap.add_argument("--baseline", default=None, metavar="ROW",
                    help="the control row: its id or name as printed, or a unique part of the name; default: the "
                         "CLIP-free row")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default outputs/compare/<first folder>)")
    ap.add_argument("--metrics", nargs="+", default=list(PRIMARY_METRICS),
                    help="per-image columns; each read in its registered direction (NIQE, BRISQUE: lower is better)")
    ap.add_argument("--viewer-images", type=int, default=2, metavar="K",
                    help="images with the largest improvement and the largest regression (first metric) shown per "
                         "comparison")
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
