"""``clipdehaze-table``: aggregate runs into paper-style tables next to the published numbers.

    clipdehaze-table outputs/train/multiruns/<stamp> [more run dirs ...] --paper mixcldehazenet [--out DIR]

Finds every ``metrics.json`` below the given folders (train or eval runs), groups them by (generator, dataset,
metric protocol), and reports mean ± std over seeds. ``--paper NAME`` reads ``experiments/NAME/published.csv``
(columns ``method, dataset, psnr, ssim, params, macs, source`` and optionally ``generator``, our registry name
of the same method; ``dataset`` is our data config's ``name``, so published rows group with ours; params in M and
MACs in G, plain numbers) and places each published row next to ours with the difference. Writes ``table.md``,
``table.csv``, ``table.tex`` and ``plots.png`` (PSNR vs params and vs MACs; PSNR bars per dataset).
Runs measured under different metric protocols are never averaged together: the protocol is part of the key
and printed under the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@dataclass
class Group:
    generator: str
    dataset: str
    protocol: str
    params: int | None = None
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    @staticmethod
    def _mean_std(vals: list[float]) -> tuple[float | None, float | None]:
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        if not vals:
            return None, None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    @property
    def psnr_stats(self):
        return self._mean_std(self.psnr)

    @property
    def ssim_stats(self):
        return self._mean_std(self.ssim)


def _metric(metrics: dict[str, float], name: str, dataset: str | None) -> float | None:
    for key in (f"test/{name}_{dataset}", f"test/{name}"):
        if key in metrics:
            return float(metrics[key])
    return None


def collect_runs(paths: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"no such run folder: {root}")
        files = [root] if root.is_file() else sorted(root.rglob("metrics.json"))
        for f in files:
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{f}: unreadable metrics.json ({e})") from e
            if not isinstance(data, dict) or "metrics" not in data or "generator" not in data:
                continue  # not a clipdehaze run summary (e.g. a bench file)
            data["_path"] = str(f.parent)
            runs.append(data)
    if not runs:
        raise FileNotFoundError(f"no clipdehaze metrics.json below {', '.join(map(str, paths))}")
    return runs


def aggregate(runs: list[dict[str, Any]]) -> list[Group]:
    groups: dict[tuple[str, str, str], Group] = {}
    for r in runs:
        key = (r["generator"], str(r.get("data")), r.get("metric_protocol", "?"))
        g = groups.setdefault(key, Group(*key, params=r.get("params")))
        g.psnr.append(_metric(r["metrics"], "psnr", r.get("data")))
        g.ssim.append(_metric(r["metrics"], "ssim", r.get("data")))
        g.seeds.append(r.get("seed"))
        g.runs.append(r["_path"])
    return sorted(groups.values(), key=lambda g: (g.dataset, g.generator))


def read_published(paper: str, root: Path = EXPERIMENTS) -> list[dict[str, Any]]:
    path = root / paper / "published.csv"
    if not path.is_file():
        known = sorted(p.parent.name for p in root.glob("*/published.csv"))
        raise FileNotFoundError(f"{path} not found; papers with published numbers: {', '.join(known) or 'none'}")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r.get("method", "").startswith("#")]
    required = {"method", "dataset", "psnr", "ssim", "source"}
    missing = required - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    for r in rows:
        for k in ("psnr", "ssim", "params", "macs"):
            v = (r.get(k) or "").strip()
            try:
                r[k] = float(v) if v else None
            except ValueError:
                raise ValueError(f"{path}: {r['method']} on {r['dataset']}: {k}={v!r} is not a number "
                                 "(params in M and MACs in G, without a unit suffix)") from None
    return rows


def _pm(mean: float | None, std: float | None, digits: int, n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def build_rows(groups: list[Group], published: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (ours or published) entry; ours carry the difference to the matching published row."""
    pub_by_key = {(p.get("generator") or p["method"], p["dataset"]): p for p in published}
    rows = []
    for g in groups:
        pm, ps = g.psnr_stats
        sm, ss = g.ssim_stats
        pub = pub_by_key.get((g.generator, g.dataset))
        rows.append({
            "method": g.generator, "dataset": g.dataset, "source": "ours", "n": len(g.runs),
            "psnr": pm, "psnr_std": ps, "ssim": sm, "ssim_std": ss,
            "params_m": g.params / 1e6 if g.params is not None else None, "macs_g": None, "protocol": g.protocol,
            "published_psnr": pub["psnr"] if pub else None, "published_ssim": pub["ssim"] if pub else None,
            "delta_psnr": (pm - pub["psnr"]) if (pub and pm is not None and pub["psnr"] is not None) else None,
            "delta_ssim": (sm - pub["ssim"]) if (pub and sm is not None and pub["ssim"] is not None) else None,
        })
    for p in published:
        rows.append({"method": p["method"], "dataset": p["dataset"], "source": p["source"], "n": None,
                     "psnr": p["psnr"], "psnr_std": None, "ssim": p["ssim"], "ssim_std": None,
                     "params_m": p.get("params"), "macs_g": p.get("macs"), "protocol": "as published",
                     "published_psnr": None, "published_ssim": None, "delta_psnr": None, "delta_ssim": None})
    return rows


def _f(v: float | None, digits: int, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def to_markdown(rows: list[dict[str, Any]], protocols: list[str], title: str) -> str:
    lines = [f"# {title}", "", "| dataset | method | PSNR (dB) | SSIM | params (M) | MACs (G) | published PSNR / SSIM "
             "| Δ PSNR | Δ SSIM | runs | source |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["source"] != "ours", r["method"])):
        n = r["n"] or 1
        pub = ("-" if r["published_psnr"] is None else
               f"{_f(r['published_psnr'], 2)} / {_f(r['published_ssim'], 3)}")
        lines.append(
            f"| {r['dataset']} | {r['method']} | {_pm(r['psnr'], r['psnr_std'], 2, n)} | "
            f"{_pm(r['ssim'], r['ssim_std'], 4, n)} | {_f(r['params_m'], 3)} | {_f(r['macs_g'], 2)} | {pub} | "
            f"{_f(r['delta_psnr'], 2, True)} | {_f(r['delta_ssim'], 4, True)} | {r['n'] or '-'} | {r['source']} |")
    lines += ["", "Metric protocol of our rows (mean ± std over seeds):", *[f"- {p}" for p in protocols],
              "- published rows: as reported by their sources (protocols may differ; see experiments/*/README.md)", ""]
    return "\n".join(lines)


def to_latex(rows: list[dict[str, Any]], caption: str) -> str:
    out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{caption}}}", "\\begin{tabular}{llccrr}",
           "\\toprule", "Dataset & Method & PSNR & SSIM & Params (M) & $\\Delta$PSNR \\\\", "\\midrule"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["source"] != "ours", r["method"])):
        n = r["n"] or 1
        psnr = _pm(r["psnr"], r["psnr_std"], 2, n).replace("±", "$\\pm$")
        ssim = _pm(r["ssim"], r["ssim_std"], 4, n).replace("±", "$\\pm$")
        name = r["method"].replace("_", "\\_") + ("" if r["source"] == "ours" else "$^\\dagger$")
        out.append(f"{r['dataset'].replace('_', chr(92) + '_')} & {name} & {psnr} & {ssim} & "
                   f"{_f(r['params_m'], 2)} & {_f(r['delta_psnr'], 2, True)} \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, label in ((axes[0], "params_m", "params (M)"), (axes[1], "macs_g", "MACs (G)")):
        for r in rows:
            if r[key] is None or r["psnr"] is None:
                continue
            ours = r["source"] == "ours"
            ax.scatter(r[key], r["psnr"], marker="o" if ours else "^", c="tab:blue" if ours else "tab:gray")
            ax.annotate(f"{r['method']} ({r['dataset']})", (r[key], r["psnr"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"PSNR vs {label} (o ours, ^ published)")
    datasets = sorted({r["dataset"] for r in rows if r["source"] == "ours"})
    ours = [r for r in rows if r["source"] == "ours" and r["psnr"] is not None]
    methods = sorted({r["method"] for r in ours})
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, d in enumerate(datasets):
            hit = [r for r in ours if r["method"] == m and r["dataset"] == d]
            if hit:
                xs.append(j + i * width)
                ys.append(hit[0]["psnr"])
                es.append(hit[0]["psnr_std"] or 0.0)
        axes[2].bar(xs, ys, width=width, yerr=es, label=m, capsize=2)
    axes[2].set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=15)
    axes[2].set_ylabel("PSNR (dB)")
    axes[2].set_title("PSNR per dataset (ours, mean ± std)")
    if methods:
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_table(paths: list[Path], paper: str | None, out: Path, experiments_root: Path = EXPERIMENTS,
               macs: bool = False) -> dict[str, Any]:
    runs = collect_runs(paths)
    groups = aggregate(runs)
    published = read_published(paper, experiments_root) if paper else []
    rows = build_rows(groups, published)
    if macs:
        from clipdehaze.bench import generator_macs

        cache: dict[str, float] = {}
        for r in rows:
            if r["source"] == "ours":
                if r["method"] not in cache:
                    cache[r["method"]] = generator_macs(r["method"]) / 1e9
                r["macs_g"] = cache[r["method"]]
    protocols = sorted({g.protocol for g in groups})
    out.mkdir(parents=True, exist_ok=True)
    title = f"{paper or 'clipdehaze'}: our runs" + (" vs published" if paper else "")
    (out / "table.md").write_text(to_markdown(rows, protocols, title))
    write_csv(rows, out / "table.csv")
    (out / "table.tex").write_text(to_latex(rows, title + ". Ours: " + "; ".join(protocols)))
    plot(rows, out / "plots.png")
    return {"rows": rows, "protocols": protocols, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="clipdehaze-table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run or multirun folders (searched for metrics.json)")
    ap.add_argument("--paper", default=None, help="experiments/<paper>/published.csv to compare against")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default outputs/tables/<paper>)")
    ap.add_argument("--experiments", type=Path, default=EXPERIMENTS, help="folder holding <paper>/published.csv")
    ap.add_argument("--macs", action="store_true", help="count our generators' MACs at 256² (flop counter)")
    args = ap.parse_args(argv)
    out = args.out or Path("outputs/tables") / (args.paper or "runs")
    result = make_table(args.runs, args.paper, out, args.experiments, macs=args.macs)
    print((out / "table.md").read_text())
    print(f"wrote {out}/table.md, table.csv, table.tex, plots.png")
    return 0 if result["rows"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
