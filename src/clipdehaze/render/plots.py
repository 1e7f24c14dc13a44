"""PNG plots of tables and comparisons (matplotlib, Agg). Every label is drawn as the text it is: mathtext is off,
so a ``$`` in a run name neither typesets math nor stops the plot."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from clipdehaze.render.numbers import UNITS


@contextmanager
def _pyplot() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        yield plt


def table_plot(rows: list[dict[str, Any]], unmatched: list[dict[str, Any]], path: Path) -> None:
    """PSNR vs params, PSNR vs MACs (ours and published) and PSNR per dataset with the 95% interval over seeds;
    ``rows`` as :func:`clipdehaze.table.build_rows` makes them."""
    with _pyplot() as plt:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        points = [(r, True) for r in rows] + [({"method": p["method"], "dataset": p["dataset"], "psnr": p["psnr"],
                                                "params_m": p.get("params"), "macs_g": p.get("macs")}, False)
                                              for p in unmatched]
        for ax, key, label in ((axes[0], "params_m", "params (M)"), (axes[1], "macs_g", "MACs (G)")):
            for r, ours in points:
                if r.get(key) is None or r.get("psnr") is None:
                    continue
                ax.scatter(r[key], r["psnr"], marker="o" if ours else "^", c="tab:blue" if ours else "tab:gray")
                ax.annotate(f"{r['method']} ({r['dataset']})", (r[key], r["psnr"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(label)
            ax.set_ylabel("PSNR (dB)")
            ax.set_title(f"PSNR vs {label} (o ours, ^ published)")
        datasets = sorted({r["dataset"] for r in rows})
        methods = sorted({r["method"] for r in rows if r.get("psnr") is not None})
        width = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            xs, ys, es = [], [], []
            for j, d in enumerate(datasets):
                hit = [r for r in rows if r["method"] == m and r["dataset"] == d and r.get("psnr") is not None]
                if hit:
                    xs.append(j + i * width)
                    ys.append(hit[0]["psnr"])
                    es.append(hit[0].get("psnr_ci95") or 0.0)
            axes[2].bar(xs, ys, width=width, yerr=es, label=m, capsize=2)
        axes[2].set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=15)
        axes[2].set_ylabel("PSNR (dB)")
        axes[2].set_title("PSNR per dataset (ours, mean and 95% CI over seeds)")
        if methods:
            axes[2].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def forest_plot(comparisons: list[Any], path: Path, short: dict[str, str], metrics: tuple[str, ...]) -> None:
    """Per comparison and metric: the mean Δ with its image-level and seed-level 95% intervals."""
    with _pyplot() as plt:
        n = len(comparisons)
        fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 1.2 + 0.55 * n), squeeze=False)
        labels = [f"{short[c.variant.row.id]} − {short[c.reference.row.id]}" for c in comparisons]
        for ax, m in zip(axes[0], metrics):
            for i, c in enumerate(comparisons):
                res, y = c.results[m], n - 1 - i
                if res.seed.ci is not None:
                    ax.plot(res.seed.ci, [y - 0.15] * 2, color="tab:orange", lw=1.5,
                            label="95% t-interval over seeds" if i == 0 else None)
                if res.ci is not None:
                    ax.plot(res.ci, [y + 0.15] * 2, color="tab:blue", lw=4, alpha=0.7,
                            label="95% bootstrap CI over images" if i == 0 else None)
                ax.plot([res.delta], [y], "ko", ms=5, label="mean Δ" if i == 0 else None)
            ax.axvline(0, color="grey", lw=1, ls="--")
            ax.set_yticks(range(n), labels[::-1], fontsize=8)
            ax.set_ylim(-0.7, n - 0.3)
            better = "higher" if comparisons[0].results[m].higher_is_better else "lower"
            ax.set_xlabel(f"Δ {m.upper()}{UNITS.get(m, '')} (variant − reference; {better} is better)")
            ax.set_title(f"Δ {m.upper()} per comparison")
        axes[0][0].legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def scatter_plot(comparisons: list[Any], path: Path, short: dict[str, str], metric: str) -> None:
    """Per comparison against the control: each image's reference value against the variant's, green where the
    variant is better."""
    with _pyplot() as plt:
        shown = [c for c in comparisons if c.kind == "vs control"] or comparisons
        cols = min(3, len(shown))
        nrows = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.3 * cols, 4.1 * nrows), squeeze=False)
        for ax, c in zip(axes.flat, shown):
            res = c.results[metric]
            x, y = res.reference_per_image, res.variant_per_image
            better = res.per_image > 0 if res.higher_is_better else res.per_image < 0
            ax.scatter(x, y, s=14, c=np.where(better, "tab:green", "tab:red"), alpha=0.8)
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--")
            ax.set_xlabel(f"{short[c.reference.row.id]} {metric.upper()}", fontsize=8)
            ax.set_ylabel(f"{short[c.variant.row.id]} {metric.upper()}", fontsize=8)
            ax.set_title(f"per image (variant better on {res.better_rate:.0%})", fontsize=9)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
