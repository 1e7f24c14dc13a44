"""A paper table in the paper's layout: one row per recipe in the paper's order, our number beside the published
one with the difference, the protocol lines, and the rows not yet run.

Runs are read with :func:`clipdehaze.table.collect_runs` (every ``metrics.json`` below the given folders: training
runs and ``clipdehaze-eval`` runs alike) and published numbers with :func:`clipdehaze.table.read_published`
(``experiments/<paper>/published.csv``: ``method, generator, dataset, psnr, ssim, params, macs, source[, table]``).
A run belongs to a row when it trained or scored the row's generator on the row's test set (``data.name``, which
the recipes set to the test set's name); several runs of a row (seeds) are averaged, ``n`` says how many.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipdehaze.reproduce.recipes import Paper, Table


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.fmean(values) if values else None


def _f(v: float | None, digits: int, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def table_rows(paper: Paper, table: Table, runs: Sequence[Any], published: Sequence[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """One dict per row of ``table``: the recipe, our runs' means, the published numbers and the differences."""
    pub = {(p.get("generator"), p.get("dataset")): p for p in published}
    rows = []
    for name in table.rows:
        recipe = paper.recipes[name]
        test = recipe.setting.test
        mine = [r for r in runs if r.generator == recipe.generator and r.dataset == test]
        p = pub.get((recipe.generator, test))
        ours = {m: _mean([r.metrics.get(m) for r in mine]) for m in ("psnr", "ssim")}
        params = {r.params for r in mine if r.params is not None}
        rows.append({
            "experiment": name, "recipe": recipe, "method": (p or {}).get("method") or recipe.generator,
            "runnable": recipe.runnable, "runs": mine, "n": len(mine),
            "psnr": ours["psnr"], "ssim": ours["ssim"],
            "params_m": params.pop() / 1e6 if len(params) == 1 else None,
            "origins": sorted({r.weights_origin for r in mine}),
            "images": sorted({f"{r.images}/{r.available}" if r.subset else str(r.images) for r in mine}),
            "published": p,
            "delta_psnr": ours["psnr"] - p["psnr"] if p and p.get("psnr") is not None and ours["psnr"] is not None
            else None,
            "delta_ssim": ours["ssim"] - p["ssim"] if p and p.get("ssim") is not None and ours["ssim"] is not None
            else None,
        })
    return rows


def to_markdown(paper: Paper, table: Table, rows: list[dict[str, Any]], published_note: str) -> str:
    first = paper.recipes[table.rows[0]]
    up = first.upstream
    lines = [f"# {paper.title}: {table.title}", "",
             f"`clipdehaze-reproduce {paper.name} --table {table.name}`; recipes: {up.repo}@{up.commit[:7]} "
             f"configs/{first.setting.name}/<model>.json (experiments/{paper.name}/recipes.yaml)", "",
             "| method | recipe | ours PSNR | ours SSIM | published PSNR | published SSIM | Δ PSNR | Δ SSIM | params (M) "
             "ours / published | MACs (G) published | n | weights | images |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for r in rows:
        p = r["published"] or {}
        source = ""
        if p:
            note = p["source"] + (f" (paper table: {p['table']})" if p.get("table") else "")
            if note not in notes:
                notes.append(note)
            source = f" [{notes.index(note) + 1}]"
        lines.append(
            f"| {r['method']}{source} | `{r['experiment']}` | {_f(r['psnr'], 2)} | {_f(r['ssim'], 4)} | "
            f"{_f(p.get('psnr'), 2)} | {_f(p.get('ssim'), 4)} | {_f(r['delta_psnr'], 2, True)} | "
            f"{_f(r['delta_ssim'], 4, True)} | {_f(r['params_m'], 3)} / {_f(p.get('params'), 2)} | "
            f"{_f(p.get('macs'), 2)} | {r['n']} | {', '.join(r['origins']) or '-'} | {', '.join(r['images']) or '-'} |")
    protocols = sorted({run.protocol for r in rows for run in r["runs"]})
    lines += ["", "Protocol of our numbers: " + ("; ".join(protocols) if protocols else "no run yet") + ".",
              "Published numbers: as their sources report them (numbered below); " + published_note + ".",
              "n: runs averaged (seeds); weights: trained here, or a weights file's origin (published = its sha256 "
              "is a release the recipe table lists; external = any other file); images: test images scored "
              "(scored/available when a subset)."]
    waiting = [r for r in rows if not r["runs"]]
    if waiting:
        lines += ["", "## Rows not yet run", ""]
        for r in waiting:
            recipe = r["recipe"]
            why = ("" if r["runnable"] else " -- not runnable: the upstream file is empty (no numbers; upstream's "
                   "train.py stops in json.load)")
            lines.append(f"- `{r['experiment']}` ({recipe.describe()}){why}")
    if notes:
        lines += ["", *[f"[{i}] {n}" for i, n in enumerate(notes, 1)]]
    return "\n".join(lines) + "\n"


def render(paper: Paper, table: Table, run_dirs: Sequence[Path], out: Path, experiments: Path | None = None
           ) -> tuple[str, list[dict[str, Any]]]:
    """Render ``table`` from the runs below ``run_dirs`` into ``out/table.md``; returns (markdown, rows)."""
    from clipdehaze.table import EXPERIMENTS, collect_runs, read_published

    runs: list[Any] = []
    existing = [d for d in run_dirs if Path(d).exists()]
    if existing:
        try:
            runs = collect_runs(list(existing))
        except FileNotFoundError:
            runs = []
    root = experiments or EXPERIMENTS
    if (root / paper.name / "published.csv").is_file():
        published = read_published(paper.name, root)
        note = f"from {root / paper.name / 'published.csv'}"
    else:
        published, note = [], f"{root / paper.name / 'published.csv'} does not exist yet (pending)"
    rows = table_rows(paper, table, runs, published)
    text = to_markdown(paper, table, rows, note)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    return text, rows
