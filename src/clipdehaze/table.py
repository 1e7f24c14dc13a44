"""``clipdehaze-table``: aggregate runs into paper-style tables, one row per scored thing, next to published numbers.

    clipdehaze-table outputs/train/multiruns/<stamp> [more run folders ...] [--paper NAME] [--macs]
                     [--group-by KEY ...] [--ignore KEY ...] [--out DIR]

Finds every ``metrics.json`` below the given folders (train, eval and predict runs). **A row is one scored thing**
(:mod:`clipdehaze.runs.identity`): the weights (a training recipe and which checkpoint of it, or a weights file by
sha256) x the scored images (data name and manifest sha256) x the metric protocol x the evaluation options
(``tta``, ``use_ema``, ``test_clip_control``, tiling) x the model-defining config keys (every key is classified in
:mod:`clipdehaze.runs.keys`; paths, loggers, workers, ``compile``, ``save_test_outputs``... split nothing). Only
seeds are averaged: a training run and the evaluation of its checkpoint on the same images are one row (the
``runs`` column says which kinds it holds), and the test of one set of weights counts once however many runs
scored it. The label names what tells a row apart (``cliphaze_t (cam_density=false)``,
``dehazeformer_t (weights=its.pth@1a2b3c4d, tta=x8)``); each row also has a stable ``id``. A row shows mean ± std
and the 95% confidence interval over seeds (Student t), ``n`` seeds, and names any seed whose metric is NaN/Inf or
missing instead of dropping it. ``--group-by KEY ...`` makes exactly those model-defining keys (fnmatch patterns)
count; ``--ignore KEY ...`` leaves keys out; weights, images, protocol and evaluation options always count.

Each row shows how many images were scored and flags what a reader must know: random generator weights, a random
CLIP prior, a subset of the test split, a seed that names two different weights, a seed without the metric, runs
without a recorded protocol, manifest or weights, and config keys that no declaration classifies. ``--paper NAME``
reads ``experiments/NAME/published.csv`` (the checkout's, or the copy inside the installed package; ``--experiments
DIR`` reads ``DIR/NAME/published.csv``; columns ``method, generator, dataset, psnr, ssim, params, macs, source, table``,
read by :mod:`clipdehaze.runs.published`) and puts a published number beside each
row of the same generator and dataset, with the difference (marked when our row used an evaluation option such as
a self-ensemble); published rows that no run matches are listed separately, and sources become footnotes.
``--macs`` counts each row's generator (its own resolved model config) at 256². Writes ``table.md``, ``table.csv``
(formula-safe), ``table.tex`` (a booktabs ``tabular``, LaTeX-escaped, with image counts and flags) and
``plots.png``. Runs measured under different metric protocols are never averaged together; each protocol is
printed under the table.

Public entry points for other tools: :func:`clipdehaze.runs.collect.collect_runs` (the runs of some folders),
:func:`clipdehaze.runs.identity.aggregate` (their rows), :func:`build_rows` (rows with statistics and published
numbers as flat dicts) and :func:`make_table`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clipdehaze.render import markdown, numbers
from clipdehaze.render.csv import dicts_to_csv
from clipdehaze.render.latex import latex_escape, table as latex_table
from clipdehaze.render.numbers import PRIMARY_METRICS
from clipdehaze.runs.collect import collect_runs
from clipdehaze.runs.identity import Row, aggregate, evaluation_label
from clipdehaze.runs.published import EXPERIMENTS, match_published, read_published

__all__ = ["EXPERIMENTS", "PRIMARY_METRICS", "aggregate", "build_rows", "collect_runs", "latex_escape", "main",
           "make_table", "read_published", "row_macs"]

def build_rows(groups: list[Row], published: list[dict[str, Any]], macs: dict[int, float] | None = None
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one flat dict per row: identity, statistics per metric, the published number and the difference; the
    published rows no row matched). ``macs``: row index -> GMACs."""
    pub_by_id, unmatched = match_published(groups, published)
    logged = set().union(*(g.metric_names for g in groups)) if groups else set()
    metric_names = [m for m in PRIMARY_METRICS if m in logged] + sorted(logged - set(PRIMARY_METRICS))
    rows = []
    for i, g in enumerate(groups):
        pub = pub_by_id.get(g.id)
        note = ", ".join(evaluation_label(g.evaluation))
        row: dict[str, Any] = {
            "id": g.id, "dataset": g.dataset, "method": g.name, "generator": g.generator, "variant": g.label,
            "prior": g.prior, "evaluation": note, "n": len(g.samples), "seeds": numbers.seeds(g.seeds),
            "images": g.images, "manifest": (g.manifest or "")[:12],
            "params_m": g.params / 1e6 if g.params is not None else None, "macs_g": (macs or {}).get(i),
            "protocol": g.protocol, "provenance": g.provenance, "flags": "; ".join(g.flags),
        }
        for m in metric_names:
            s = g.stat(m)
            row.update({m: s.mean, f"{m}_std": s.std, f"{m}_ci95": s.ci95, f"{m}_n": s.n,
                        f"{m}_nonfinite_seeds": numbers.seeds(s.nonfinite_seeds),
                        f"{m}_missing_seeds": numbers.seeds(s.missing_seeds)})
        for m in ("psnr", "ssim"):
            ref = pub.get(m) if pub else None
            row.setdefault(m, None)
            row[f"published_{m}"] = ref
            row[f"delta_{m}"] = row[m] - ref if (ref is not None and row.get(m) is not None) else None
        row["delta_note"] = f"ours with {note}" if pub and note else ""
        row["published_source"] = pub["source"] if pub else None
        row["runs"] = " ".join(r.path for r in g.runs)
        rows.append(row)
    return rows, unmatched


class _Footnotes:
    """Long source strings become numbered footnotes."""

    def __init__(self, max_inline: int = 40) -> None:
        self.max_inline, self.notes = max_inline, []

    def ref(self, text: str | None) -> str:
        if not text:
            return "-"
        if len(text) <= self.max_inline:
            return text
        if text not in self.notes:
            self.notes.append(text)
        return f"[{self.notes.index(text) + 1}]"


def _metric_names(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in rows[0] if f"{k}_ci95" in rows[0]] if rows else []


def _delta(r: dict[str, Any], m: str, digits: int) -> str:
    cell = numbers.fixed(r[f"delta_{m}"], digits, True)
    return cell + (f" ({r['delta_note']})" if r["delta_note"] and r[f"delta_{m}"] is not None else "")


def _stat(r: dict[str, Any], m: str, ci: bool) -> str:
    from clipdehaze.stats import SeedStat

    stat = SeedStat(r[m], r[f"{m}_std"], r[f"{m}_ci95"], r[f"{m}_n"], r[f"{m}_nonfinite_seeds"].split(),
                    r[f"{m}_missing_seeds"].split())
    return numbers.mean_std(stat, m, ci=ci)


def table_blocks(rows: list[dict[str, Any]], unmatched: list[dict[str, Any]], protocols: list[str],
                 title: str) -> list[tuple]:
    """``table.md`` as :mod:`clipdehaze.render.document` blocks."""
    notes = _Footnotes()
    metrics = _metric_names(rows)
    has_pub = any(r["published_psnr"] is not None for r in rows)
    head = ["dataset", "method", "prior", *[numbers.header(m) for m in metrics], "n", "images", "params (M)",
            "MACs (G)", "runs"]
    if has_pub:
        head += ["published PSNR / SSIM", "Δ PSNR", "Δ SSIM", "source"]
    head += ["flags", "id"]
    body = []
    for r in rows:
        cells = [r["dataset"], r["method"], r["prior"], *[_stat(r, m, True) for m in metrics], str(r["n"]),
                 r["images"], numbers.fixed(r["params_m"], 3), numbers.fixed(r["macs_g"], 2), r["provenance"]]
        if has_pub:
            pub = ("-" if r["published_psnr"] is None else
                   f"{numbers.fixed(r['published_psnr'], 2)} / {numbers.fixed(r['published_ssim'], 4)}")
            cells += [pub, _delta(r, "psnr", 2), _delta(r, "ssim", 4), notes.ref(r["published_source"])]
        body.append(cells + [r["flags"], r["id"]])
    blocks: list[tuple] = [
        ("h", 1, title), ("table", head, body),
        ("p", "Each row is one scored thing: one set of weights (a training recipe over its seeds, or one weights "
              "file) on one image set under one protocol and evaluation. mean ± std [95% t-interval] over its n "
              "seeds (a single seed: the value). images: test images scored per run. prior: the CLIP prior control "
              "(real, shuffled, constant, zero; - for no CLIP input). runs: the train / eval / predict runs behind "
              "the row (one set of weights scored twice counts once). id: the row's stable id (clipdehaze-compare "
              "--baseline takes it)."),
        ("p", "Metric protocol of our rows:"), ("ul", list(protocols))]
    if unmatched:
        blocks += [("h", 2, "Published rows without a matching run"),
                   ("table", ["dataset", "method", "PSNR", "SSIM", "params (M)", "MACs (G)", "source"],
                    [[p["dataset"], p["method"], numbers.fixed(p["psnr"], 2), numbers.fixed(p["ssim"], 4),
                      numbers.fixed(p.get("params"), 2), numbers.fixed(p.get("macs"), 2), notes.ref(p["source"])]
                     for p in sorted(unmatched, key=lambda p: (p["dataset"], p["method"]))])]
    if has_pub or unmatched:
        blocks.append(("p", "Published numbers are as reported by their sources (their protocols may differ from "
                            "ours; see experiments/*/README.md). A difference beside a row scored with an evaluation "
                            "option (e.g. tta=x8, a self-ensemble) names it: the published number may not use it."))
    if notes.notes:
        blocks += [("p", f"[{i}] {n}") for i, n in enumerate(notes.notes, 1)]
    return blocks


def to_latex(rows: list[dict[str, Any]], unmatched: list[dict[str, Any]], caption: str) -> str:
    """``table.tex``: a booktabs table with image counts and flags; published rows without a run marked †."""
    has_pub = any(r["published_psnr"] is not None for r in rows)
    metrics = _metric_names(rows)
    header = ["Dataset", "Method", *[numbers.header(m) for m in metrics], "n", "Images", "Params (M)"]
    header += (["Published", "ΔPSNR"] if has_pub else []) + ["Flags"]
    body = []
    for r in rows:
        cells = [r["dataset"], r["method"], *[_stat(r, m, False) for m in metrics], str(r["n"]), r["images"],
                 numbers.fixed(r["params_m"], 2)]
        if has_pub:
            cells += [numbers.fixed(r["published_psnr"], 2), _delta(r, "psnr", 2)]
        body.append(cells + [r["flags"] or "-"])
    for p in unmatched:
        published = {"psnr": numbers.fixed(p["psnr"], 2), "ssim": numbers.fixed(p["ssim"], 4)}
        cells = [p["dataset"], f"{p['method']}†", *[published.get(m, "-") for m in metrics], "-", "-",
                 numbers.fixed(p.get("params"), 2)]
        body.append(cells + (["-", "-"] if has_pub else []) + ["published, no run"])
    return latex_table(caption, header, body, rule_before=len(rows) if unmatched and rows else None)


def row_macs(groups: list[Row]) -> dict[int, float]:
    """GMACs at 256² of each row's generator, built from that row's resolved model config."""
    from clipdehaze.bench import generator_macs
    from clipdehaze.lit_module import architecture_kwargs

    cache: dict[str, float] = {}
    out = {}
    for i, g in enumerate(groups):
        cfg = next((r.model_config for r in g.runs if r.model_config), None)
        kwargs = architecture_kwargs(cfg or {})
        key = json.dumps([g.generator, kwargs], sort_keys=True, default=str)
        if key not in cache:
            cache[key] = generator_macs(g.generator, **kwargs) / 1e9
        out[i] = cache[key]
    return out


def make_table(paths: list[Path], paper: str | None, out: Path, experiments_root: Path = EXPERIMENTS,
               macs: bool = False, group_by: list[str] | None = None, ignore: list[str] | None = None
               ) -> dict[str, Any]:
    from clipdehaze.render.plots import table_plot

    groups = aggregate(collect_runs(paths), group_by=group_by, ignore=ignore)
    published = read_published(paper, experiments_root) if paper else []
    rows, unmatched = build_rows(groups, published, row_macs(groups) if macs else None)
    protocols = sorted({g.protocol for g in groups})
    out.mkdir(parents=True, exist_ok=True)
    title = f"{paper or 'clipdehaze'}: our runs" + (" vs published" if paper else "")
    (out / "table.md").write_text(markdown.render(table_blocks(rows, unmatched, protocols, title)))
    fields = list(rows[0]) if rows else ["dataset", "method"]
    extra = [{"dataset": p["dataset"], "method": p["method"], "generator": p.get("generator"), "psnr": p["psnr"],
              "ssim": p["ssim"], "params_m": p.get("params"), "macs_g": p.get("macs"), "protocol": "as published",
              "source": p["source"]} for p in unmatched]
    (out / "table.csv").write_text(dicts_to_csv(fields + ["source"], [{**r, "source": "ours"} for r in rows] + extra))
    (out / "table.tex").write_text(to_latex(rows, unmatched, title + ". Ours: " + "; ".join(protocols)))
    table_plot(rows, unmatched, out / "plots.png")
    return {"rows": rows, "unmatched": unmatched, "groups": groups, "protocols": protocols, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="clipdehaze-table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run or multirun folders (searched for metrics.json)")
    ap.add_argument("--paper", default=None, help="experiments/<paper>/published.csv to compare against")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default outputs/tables/<paper>)")
    ap.add_argument("--experiments", type=Path, default=EXPERIMENTS, help="folder holding <paper>/published.csv")
    ap.add_argument("--macs", action="store_true", help="count each row's generator MACs at 256² (flop counter)")
    ap.add_argument("--group-by", nargs="+", default=None, metavar="KEY",
                    help="model-defining config keys (fnmatch patterns, e.g. model.fusion 'optimizer.*') that make a "
                         "row; default: every one in which the runs differ (weights, images, protocol and "
                         "evaluation options always count)")
    ap.add_argument("--ignore", nargs="+", default=None, metavar="KEY",
                    help="model-defining config keys (fnmatch patterns) never to split rows by")
    args = ap.parse_args(argv)
    out = args.out or Path("outputs/tables") / (args.paper or "runs")
    try:
        result = make_table(args.runs, args.paper, out, args.experiments, macs=args.macs, group_by=args.group_by,
                            ignore=args.ignore)
    except (FileNotFoundError, ValueError) as e:
        print(f"clipdehaze-table: error: {e}")
        return 2
    print((out / "table.md").read_text())
    print(f"wrote {out}/table.md, table.csv, table.tex, plots.png")
    return 0 if result["rows"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
