"""Published numbers (``experiments/<paper>/published.csv``) and which row each belongs beside.

The file: ``method, generator, dataset, psnr, ssim, params, macs, source``; ``generator`` is our registry name,
``dataset`` our data config's ``name``, params in M and MACs in G. A published number sits beside every row of the
same generator and dataset; a row whose evaluation options change the numbers (a self-ensemble) keeps it, with
the option named next to the difference.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from clipdehaze.runs.identity import Row
from clipdehaze.utils.resources import project_dir

#: ``experiments/``, where ``--paper NAME`` finds ``NAME/published.csv``: the checkout's, or the copy in the wheel.
EXPERIMENTS = project_dir("experiments")


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


def published_key(p: dict[str, Any]) -> tuple[str, str]:
    return (p.get("generator") or p["method"], p["dataset"])


def match_published(rows: list[Row], published: list[dict[str, Any]]
                    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """({row id: its published row}, the published rows no row matched)."""
    by_key = {published_key(p): p for p in published}
    matched = {r.id: by_key[(r.generator, r.dataset)] for r in rows if (r.generator, r.dataset) in by_key}
    used = {published_key(p) for p in matched.values()}
    return matched, [p for p in published if published_key(p) not in used]
