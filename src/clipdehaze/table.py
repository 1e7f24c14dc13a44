"""``clipdehaze-table``: aggregate runs into paper-style tables, one row per variant, next to published numbers.

    clipdehaze-table outputs/train/multiruns/<stamp> [more run folders ...] [--paper NAME] [--macs]
                     [--group-by KEY ...] [--ignore KEY ...] [--out DIR]

Finds every ``metrics.json`` below the given folders (train and eval runs). **A row is a variant**: runs are
grouped by generator, dataset identity (the data config's name plus the manifest hash of the scored files, so two
folders never merge), metric protocol, and every resolved config value in which the runs differ, except the seed
and the keys that only say where a run happened (``clipdehaze.provenance.is_run_location_key``: paths, loggers,
workers...). The differing values label the row (``cliphaze_t (cam_density=false)``). Only runs that differ in
seed land in one row: it shows mean ± std and the 95% confidence interval over seeds (Student t), ``n`` finite
seeds, and names any seed whose metric is NaN/Inf instead of dropping it silently. An evaluated checkpoint counts
with its training run's config and seed. ``--group-by KEY ...`` makes exactly those keys (fnmatch patterns) the
variant keys; ``--ignore KEY ...`` removes keys from the automatic choice.

Each row shows how many images were scored and flags runs with random generator weights, a random CLIP prior, or
a subset of the test split. ``--paper NAME`` reads ``experiments/NAME/published.csv`` (the checkout's, or the
copy inside the installed package; ``--experiments DIR`` reads ``DIR/NAME/published.csv``) (``method, generator,
dataset, psnr, ssim, params, macs, source``; ``generator`` is our registry name, ``dataset`` our data config's
``name``; params in M, MACs in G) and puts a published number beside each row of the same generator and dataset,
with the difference; published rows that no run matches are listed separately, and sources become footnotes.
``--macs`` counts each row's generator (its own resolved model config) at 256². Writes ``table.md``,
``table.csv``, ``table.tex`` (a booktabs ``tabular``, LaTeX-escaped) and ``plots.png``. Runs measured under
different metric protocols are never averaged together; each protocol is printed under the table.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdehaze.provenance import flatten, is_run_location_key
from clipdehaze.utils.files import REPLACED_PREFIX
from clipdehaze.utils.resources import project_dir

#: ``experiments/``, where ``--paper NAME`` finds ``NAME/published.csv``: the checkout's, or the copy in the wheel.
EXPERIMENTS = project_dir("experiments")

#: Metrics shown first, in this order; any other ``test/<metric>`` a run logged follows (labels, digits and
#: direction from :mod:`clipdehaze.metrics.registry`).
PRIMARY_METRICS = ("psnr", "ssim")
#: Config keys that carry the seed (what a row averages over).
SEED_KEYS = ("seed", "data.seed")


@dataclass
class Run:
    """One ``metrics.json``, reduced to what grouping and display need."""

    path: str
    generator: str
    dataset: str
    manifest: str | None
    protocol: str
    seed: Any
    config: dict[str, Any]
    metrics: dict[str, float]
    params: int | None
    images: int | None
    available: int | None
    subset: bool
    weights_origin: str
    clip: str | None
    model_config: dict[str, Any] | None
    prior: str = "-"


def _test_metrics(metrics: dict[str, Any], dataset: str | None) -> dict[str, float]:
    """``test/<m>_<dataset>`` (or ``test/<m>``) -> ``{m: value}``; a ``null`` (how metrics.json stores NaN/Inf) is NaN,
    so the row names that seed instead of losing it."""
    out = {}
    for key, value in metrics.items():
        if value is None:
            value = math.nan
        if not key.startswith("test/") or not isinstance(value, (int, float)):
            continue
        name = key[len("test/"):]
        if dataset and name.endswith(f"_{dataset}"):
            name = name[: -len(dataset) - 1]
        elif "_" in name and dataset:
            continue  # another dataset's key
        out[name] = float(value)
    return out


def _variant_config(summary: dict[str, Any]) -> dict[str, Any]:
    """Flattened config that identifies the variant: an eval run's own keys (``eval.*``) plus its checkpoint's
    training config (``train.*``); a train run's keys as they are. Run-location and seed keys removed."""
    def clean(cfg: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
        flat = flatten(cfg or {})
        return {prefix + k: json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
                for k, v in flat.items() if not is_run_location_key(k) and k not in SEED_KEYS}

    if "train_config" in summary:
        return {**clean(summary.get("config"), "eval."), **clean(summary["train_config"], "train.")}
    return clean(summary.get("config"))


def _model_config(summary: dict[str, Any]) -> dict[str, Any] | None:
    for cfg in (summary.get("train_config"), summary.get("config")):
        if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
            return dict(cfg["model"])
    return None


def _prior(summary: dict[str, Any]) -> str:
    """The ``prior`` cell: the CLIP prior control (:mod:`clipdehaze.models.clip.control`), ``real``, ``shuffled``,
    ``train real / test shuffled``..., or ``-`` for a generator without CLIP input. A run from before prior controls
    existed had the real prior whenever it built a CLIP."""
    if "clip_control" not in summary:
        return "real" if summary.get("clip") else "-"
    record = summary["clip_control"]
    if not record:
        return "-"
    train, test = record.get("train", "real"), record.get("test", "real")
    return train if train == test else f"train {train} / test {test}"


def to_run(summary: dict[str, Any], path: str) -> Run:
    dataset = summary.get("dataset") or {}
    data = str(summary.get("data"))
    return Run(
        path=path, generator=summary["generator"], dataset=data, manifest=dataset.get("manifest_sha256"),
        protocol=summary.get("metric_protocol", "?"), seed=summary.get("seed"), config=_variant_config(summary),
        metrics=_test_metrics(summary.get("metrics", {}), summary.get("data")), params=summary.get("params"),
        images=dataset.get("images", summary.get("images")), available=dataset.get("available"),
        subset=bool(dataset.get("subset")), weights_origin=(summary.get("weights") or {}).get("origin", "unknown"),
        clip=summary.get("clip"), model_config=_model_config(summary), prior=_prior(summary))


def collect_runs(paths: list[Path]) -> list[Run]:
    runs = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"no such run folder: {root}")
        # A run's files that clipdehaze-train overwrite=true moved aside (replaced-<time>/) are not a run of it.
        files = [root] if root.is_file() else sorted(
            f for f in root.rglob("metrics.json") if not any(p.startswith(REPLACED_PREFIX)
                                                              for p in f.relative_to(root).parts[:-1]))
        for f in files:
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{f}: unreadable metrics.json ({e})") from e
            if not isinstance(data, dict) or "metrics" not in data or "generator" not in data:
                continue  # not a clipdehaze run summary (e.g. a bench file)
            runs.append(to_run(data, str(f.parent)))
    if not runs:
        raise FileNotFoundError(f"no clipdehaze metrics.json below {', '.join(map(str, paths))}")
    return runs


# ------------------------------------------------------------------------------------------------------- grouping
@dataclass
class Stat:
    """Mean, sample std and 95% t-interval half-width over the finite seeds; the non-finite ones by seed."""

    mean: float | None
    std: float | None
    ci95: float | None
    n: int
    nonfinite_seeds: list[Any]

    @classmethod
    def of(cls, values: list[tuple[Any, float | None]]) -> "Stat":
        finite = [v for _, v in values if v is not None and math.isfinite(v)]
        bad = [s for s, v in values if v is not None and not math.isfinite(v)]
        if not finite:
            return cls(None, None, None, 0, bad)
        n = len(finite)
        mean = statistics.fmean(finite)
        std = statistics.stdev(finite) if n > 1 else None
        ci = None
        if n > 1:
            from scipy import stats

            ci = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        return cls(mean, std, ci, n, bad)


@dataclass
class Row:
    generator: str
    dataset: str
    manifest: str | None
    protocol: str
    variant: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    def stat(self, metric: str) -> Stat:
        return Stat.of([(r.seed, r.metrics.get(metric)) for r in self.runs])

    @property
    def params(self) -> int | None:
        values = {r.params for r in self.runs if r.params is not None}
        return values.pop() if len(values) == 1 else None

    @property
    def flags(self) -> list[str]:
        out = []
        if any(r.weights_origin == "random" for r in self.runs):
            out.append("random weights")
        if any(r.clip and "random(" in r.clip for r in self.runs):
            out.append("random CLIP")
        if any(r.subset for r in self.runs):
            sizes = sorted({f"{r.images}/{r.available}" for r in self.runs if r.subset})
            out.append(f"subset {', '.join(sizes)}")
        seeds = [s for s in self.seeds]
        if len(set(map(str, seeds))) < len(seeds):
            out.append("repeated seed")
        return out

    @property
    def images(self) -> str:
        values = sorted({r.images for r in self.runs if r.images is not None})
        return "/".join(map(str, values)) if values else "-"

    @property
    def prior(self) -> str:
        """The CLIP prior control of the row's runs (``-``: no CLIP input)."""
        return ", ".join(sorted({r.prior for r in self.runs}))


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's last dotted component when that is unique among ``keys``, else the full key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return "null" if v is None else str(v)


def _matches(key: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def aggregate(runs: list[Run], group_by: list[str] | None = None, ignore: list[str] | None = None) -> list[Row]:
    """Rows of runs that differ only in seed (and run location); see the module docstring."""
    buckets: dict[tuple, list[Run]] = {}
    for r in runs:
        buckets.setdefault((r.generator, r.dataset, r.manifest, r.protocol), []).append(r)
    rows: list[Row] = []
    absent = "<absent>"
    for (generator, dataset, manifest, protocol), members in buckets.items():
        keys = sorted(set().union(*(r.config for r in members)))
        if group_by:
            variant_keys = [k for k in keys if _matches(k, group_by)]
        else:
            variant_keys = [k for k in keys if len({json.dumps(r.config.get(k, absent), default=str)
                                                     for r in members}) > 1]
        variant_keys = [k for k in variant_keys if not _matches(k, ignore or [])]
        short = _short_keys(variant_keys)
        groups: dict[str, Row] = {}
        for r in members:
            variant = {k: r.config.get(k, absent) for k in variant_keys}
            key = json.dumps(variant, sort_keys=True, default=str)
            if key not in groups:
                label = ", ".join(f"{short[k]}={_fmt_value(v)}" for k, v in variant.items())
                groups[key] = Row(generator, dataset, manifest, protocol, variant, label=label)
            groups[key].runs.append(r)
        rows += groups.values()
    return sorted(rows, key=lambda g: (g.dataset, g.manifest or "", g.generator, g.label))


# ------------------------------------------------------------------------------------------------------- published
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


def _published_key(p: dict[str, Any]) -> tuple[str, str]:
    return (p.get("generator") or p["method"], p["dataset"])


# ------------------------------------------------------------------------------------------------------- rows
def build_rows(groups: list[Row], published: list[dict[str, Any]], macs: dict[int, float] | None = None
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(our rows with the matching published number, the published rows no run matched)."""
    pub_by_key = {_published_key(p): p for p in published}
    matched: set[tuple[str, str]] = set()
    logged = {m for g in groups for r in g.runs for m in r.metrics}
    metric_names = [m for m in PRIMARY_METRICS if m in logged] + sorted(logged - set(PRIMARY_METRICS))
    rows = []
    for i, g in enumerate(groups):
        pub = pub_by_key.get((g.generator, g.dataset))
        if pub:
            matched.add((g.generator, g.dataset))
        row: dict[str, Any] = {
            "dataset": g.dataset, "method": g.generator + (f" ({g.label})" if g.label else ""),
            "generator": g.generator, "variant": g.label, "prior": g.prior, "n": len(g.runs),
            "seeds": " ".join(map(str, g.seeds)),
            "images": g.images, "manifest": (g.manifest or "")[:12],
            "params_m": g.params / 1e6 if g.params is not None else None,
            "macs_g": (macs or {}).get(i), "protocol": g.protocol, "flags": "; ".join(g.flags),
        }
        for m in metric_names:
            s = g.stat(m)
            row.update({m: s.mean, f"{m}_std": s.std, f"{m}_ci95": s.ci95, f"{m}_n": s.n,
                        f"{m}_nonfinite_seeds": " ".join(map(str, s.nonfinite_seeds))})
        for m in ("psnr", "ssim"):
            ref = pub.get(m) if pub else None
            row.setdefault(m, None)
            row[f"published_{m}"] = ref
            row[f"delta_{m}"] = row[m] - ref if (ref is not None and row.get(m) is not None) else None
        row["published_source"] = pub["source"] if pub else None
        row["runs"] = " ".join(r.path for r in g.runs)
        rows.append(row)
    unmatched = [p for p in published if _published_key(p) not in matched]
    return rows, unmatched


def _f(v: float | None, digits: int, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _display(metric: str) -> tuple[str, int, bool | None]:
    from clipdehaze.metrics.registry import metric_display

    return metric_display(metric)


def _header(metric: str) -> str:
    label, _, higher = _display(metric)
    return label + {True: " ↑", False: " ↓", None: ""}[higher]


def _stat_cell(row: dict[str, Any], m: str, pm: str = "±") -> str:
    digits = _display(m)[1]
    mean, n = row.get(m), row.get(f"{m}_n", 0)
    if mean is None:
        cell = "-"
    elif n > 1:
        cell = (f"{mean:.{digits}f} {pm} {row[f'{m}_std']:.{digits}f} "
                f"[{mean - row[f'{m}_ci95']:.{digits}f}, {mean + row[f'{m}_ci95']:.{digits}f}]")
    else:
        cell = f"{mean:.{digits}f}"
    if row.get(f"{m}_nonfinite_seeds"):
        cell += f" (non-finite: seed {row[f'{m}_nonfinite_seeds']})"
    return cell


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


def to_markdown(rows: list[dict[str, Any]], unmatched: list[dict[str, Any]], protocols: list[str],
                title: str) -> str:
    notes = _Footnotes()
    metrics = _metric_names(rows)
    has_pub = any(r["published_psnr"] is not None for r in rows)
    head = ["dataset", "method", "prior", *[_header(m) for m in metrics], "n",
            "images", "params (M)", "MACs (G)"]
    if has_pub:
        head += ["published PSNR / SSIM", "Δ PSNR", "Δ SSIM", "source"]
    head += ["flags"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dataset"], r["method"], r["prior"], *[_stat_cell(r, m) for m in metrics], str(r["n"]),
                 r["images"], _f(r["params_m"], 3), _f(r["macs_g"], 2)]
        if has_pub:
            pub = ("-" if r["published_psnr"] is None else
                   f"{_f(r['published_psnr'], 2)} / {_f(r['published_ssim'], 4)}")
            cells += [pub, _f(r["delta_psnr"], 2, True), _f(r["delta_ssim"], 4, True),
                      notes.ref(r["published_source"])]
        cells.append(r["flags"] or "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each row is one variant; mean ± std [95% t-interval] over its n seeds (a single seed: the value). "
              "images: test images scored per run. prior: the CLIP prior control (real, shuffled, constant, zero; "
              "- for no CLIP input).", "", "Metric protocol of our rows:",
              *[f"- {p}" for p in protocols]]
    if unmatched:
        lines += ["", "## Published rows without a matching run", "",
                  "| dataset | method | PSNR | SSIM | params (M) | MACs (G) | source |", "|---|---|---|---|---|---|---|"]
        for p in sorted(unmatched, key=lambda p: (p["dataset"], p["method"])):
            lines.append(f"| {p['dataset']} | {p['method']} | {_f(p['psnr'], 2)} | {_f(p['ssim'], 4)} | "
                         f"{_f(p.get('params'), 2)} | {_f(p.get('macs'), 2)} | {notes.ref(p['source'])} |")
    if has_pub or unmatched:
        lines += ["", "Published numbers are as reported by their sources (their protocols may differ from ours; see "
                  "experiments/*/README.md)."]
    if notes.notes:
        lines += ["", *[f"[{i}] {n}" for i, n in enumerate(notes.notes, 1)]]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX that typesets as the same characters (``cam_density=false``, ``50%``, sources...)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text)).replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def to_latex(rows: list[dict[str, Any]], unmatched: list[dict[str, Any]], caption: str) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); every text cell escaped."""
    has_pub = any(r["published_psnr"] is not None for r in rows)
    metrics = _metric_names(rows)
    cols = ["Dataset", "Method", *[latex_escape(_header(m)).replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
                                   for m in metrics], "$n$", "Params (M)"] + (["Published", r"$\Delta$PSNR"] if has_pub else [])
    out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}",
           "\\begin{tabular}{ll" + "c" * (len(cols) - 2) + "}", "\\toprule", " & ".join(cols) + " \\\\", "\\midrule"]

    def stat(r: dict[str, Any], m: str) -> str:
        digits = _display(m)[1]
        if r.get(m) is None:
            return "-"
        if r.get(f"{m}_n", 0) > 1:
            return f"{r[m]:.{digits}f} $\\pm$ {r[f'{m}_std']:.{digits}f}"
        return f"{r[m]:.{digits}f}"

    for r in rows:
        cells = [latex_escape(r["dataset"]), latex_escape(r["method"]), *[stat(r, m) for m in metrics],
                 str(r["n"]), _f(r["params_m"], 2)]
        if has_pub:
            cells += [_f(r["published_psnr"], 2), _f(r["delta_psnr"], 2, True)]
        out.append(" & ".join(cells) + " \\\\")
    if unmatched:
        out.append("\\midrule")
        for p in unmatched:
            published = {"psnr": _f(p["psnr"], 2), "ssim": _f(p["ssim"], 4)}
            cells = [latex_escape(p["dataset"]), latex_escape(p["method"]) + "$^\\dagger$",
                     *[published.get(m, "-") for m in metrics], "-", _f(p.get("params"), 2)] + (["-", "-"] if has_pub else [])
            out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def write_csv(rows: list[dict[str, Any]], unmatched: list[dict[str, Any]], path: Path) -> None:
    fields = list(rows[0]) if rows else ["dataset", "method"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields + ["source"], extrasaction="ignore")
        w.writeheader()
        w.writerows([{**r, "source": "ours"} for r in rows])
        for p in unmatched:
            w.writerow({"dataset": p["dataset"], "method": p["method"], "generator": p.get("generator"),
                        "psnr": p["psnr"], "ssim": p["ssim"], "params_m": p.get("params"), "macs_g": p.get("macs"),
                        "protocol": "as published", "source": p["source"]})


def plot(rows: list[dict[str, Any]], unmatched: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    methods = sorted({r["method"] for r in rows if r["psnr"] is not None})
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, d in enumerate(datasets):
            hit = [r for r in rows if r["method"] == m and r["dataset"] == d and r["psnr"] is not None]
            if hit:
                xs.append(j + i * width)
                ys.append(hit[0]["psnr"])
                es.append(hit[0]["psnr_ci95"] or 0.0)
        axes[2].bar(xs, ys, width=width, yerr=es, label=m, capsize=2)
    axes[2].set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=15)
    axes[2].set_ylabel("PSNR (dB)")
    axes[2].set_title("PSNR per dataset (ours, mean and 95% CI over seeds)")
    if methods:
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def row_macs(groups: list[Row]) -> dict[int, float]:
    """GMACs at 256² of each row's generator, built from that row's resolved model config."""
    from clipdehaze.bench import generator_macs

    cache: dict[str, float] = {}
    out = {}
    for i, g in enumerate(groups):
        cfg = next((r.model_config for r in g.runs if r.model_config), None)
        from clipdehaze.lit_module import architecture_kwargs

        kwargs = architecture_kwargs(cfg or {})
        key = json.dumps([g.generator, kwargs], sort_keys=True, default=str)
        if key not in cache:
            cache[key] = generator_macs(g.generator, **kwargs) / 1e9
        out[i] = cache[key]
    return out


def make_table(paths: list[Path], paper: str | None, out: Path, experiments_root: Path = EXPERIMENTS,
               macs: bool = False, group_by: list[str] | None = None, ignore: list[str] | None = None
               ) -> dict[str, Any]:
    runs = collect_runs(paths)
    groups = aggregate(runs, group_by=group_by, ignore=ignore)
    published = read_published(paper, experiments_root) if paper else []
    rows, unmatched = build_rows(groups, published, row_macs(groups) if macs else None)
    protocols = sorted({g.protocol for g in groups})
    out.mkdir(parents=True, exist_ok=True)
    title = f"{paper or 'clipdehaze'}: our runs" + (" vs published" if paper else "")
    (out / "table.md").write_text(to_markdown(rows, unmatched, protocols, title))
    write_csv(rows, unmatched, out / "table.csv")
    (out / "table.tex").write_text(to_latex(rows, unmatched, title + ". Ours: " + "; ".join(protocols)))
    plot(rows, unmatched, out / "plots.png")
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
                    help="config keys (fnmatch patterns, e.g. model.fusion 'optimizer.*') that make a row; default: "
                         "every key in which the runs differ")
    ap.add_argument("--ignore", nargs="+", default=None, metavar="KEY",
                    help="config keys (fnmatch patterns) never to split rows by")
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
