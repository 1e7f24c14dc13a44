"""The per-image results of rows, as the matrices a paired comparison needs, and the checks that make pairing by
image and by seed sound: one image set, one protocol, no image scored twice, no seed counted twice."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipdehaze.artefacts import PER_IMAGE_CSV
from clipdehaze.runs.collect import Run
from clipdehaze.runs.identity import Row, Sample


class ComparisonError(ValueError):
    """Rows that cannot be paired, or per-image files that cannot be read; the message says which and why."""


def read_per_image(run: Run, metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """``{image name: {metric: value}}`` of one run's ``per_image.csv``; a missing file or column, an image listed
    twice or a non-finite value is a ComparisonError naming the file."""
    from clipdehaze.render.csv import read_dicts

    path = Path(run.path) / PER_IMAGE_CSV
    if not path.is_file():
        raise ComparisonError(f"{path}: no per-image results (runs written before clipdehaze wrote {PER_IMAGE_CSV}, "
                              "or a run with test=false); rerun its test with clipdehaze-eval ckpt_path=<checkpoint>")
    try:
        with open(path, newline="") as f:
            rows = read_dicts(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ComparisonError(f"{path}: unreadable ({e})") from e
    if not rows:
        raise ComparisonError(f"{path}: no images")
    missing = [c for c in ("name", *metrics) if c not in rows[0]]
    if missing:
        raise ComparisonError(f"{path}: no column {', '.join(missing)} (has {', '.join(rows[0])}); choose --metrics "
                              "among the columns every run has")
    names = [r["name"] for r in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ComparisonError(f"{path}: images listed more than once: {', '.join(map(repr, twice[:5]))}; pairing by "
                              "name needs one value per image (two files of one name in the scored set?)")
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
    return (f"{row.name!r} {row.images} images of {row.dataset} (manifest {(row.manifest or 'unknown')[:12]}, "
            f"{where})")


def check_pairable(a: Row, b: Row) -> None:
    """Raise a ComparisonError saying why two rows were not scored on the same images under the same protocol."""
    if a.manifest is None or b.manifest is None:
        which = a.name if a.manifest is None else b.name
        raise ComparisonError(f"cannot pair {a.name!r} with {b.name!r}: the metrics.json of {which!r} records no "
                              "manifest of its scored images, so nothing shows they are the same images; re-evaluate "
                              "it with the current clipdehaze-eval")
    if (a.dataset, a.manifest) != (b.dataset, b.manifest):
        raise ComparisonError(f"cannot pair {a.name!r} with {b.name!r}: they were scored on different image sets: "
                              f"{_describe_set(a)} vs {_describe_set(b)}. A paired comparison needs the same test "
                              "images (same files and sizes); compare one image set at a time")
    if a.protocol != b.protocol:
        raise ComparisonError(f"cannot pair {a.name!r} with {b.name!r}: different metric protocols "
                              f"({a.protocol!r} vs {b.protocol!r})")


def check_seeds(row: Row) -> None:
    """A row whose seed names two different weights cannot be averaged by seed: refuse, naming the runs."""
    repeated = row.repeated_seeds
    if repeated:
        seed, paths = next(iter(repeated.items()))
        raise ComparisonError(f"{row.name!r}: seed {seed} names different weights in {len(paths)} runs "
                              f"({', '.join(paths)}); keep one run per seed (or split them with --group-by)")


def check_same_seeds(a: Row, b: Row) -> None:
    """Rows paired by seed must hold the same seeds; refuse naming the seeds only one of them ran."""
    sa, sb = {str(s) for s in a.seeds}, {str(s) for s in b.seeds}
    if sa != sb:
        raise ComparisonError(f"{a.name!r} and {b.name!r} share an initialisation and pair by seed, but seeds "
                              f"{sorted(sa - sb)} ran only in the first and {sorted(sb - sa)} only in the second; run "
                              "the missing seeds or leave the extra runs out")


@dataclass
class Side:
    """One row of a comparison as matrices: ``values[metric]`` is (samples, images), images in the comparison's
    name order, samples in ``seeds`` order (the run of each sample whose numbers the row uses)."""

    row: Row
    seeds: list[Any]
    values: dict[str, np.ndarray]
    runs: list[Run]


def seed_order(seed: Any) -> tuple:
    """Numbers in numeric order, then anything else as text (None last)."""
    if isinstance(seed, (int, float)) and not isinstance(seed, bool):
        return (0, seed, "")
    return (1, 0, str(seed))


def load_side(row: Row, names: tuple[list[str], Path] | None, metrics: tuple[str, ...]
              ) -> tuple[Side, tuple[list[str], Path]]:
    """A row's per-image values, samples in seed order (so two rows with the same seeds line up); ``names``: (the
    image names every run must have scored, the file they come from), None for the first row loaded."""
    samples: list[Sample] = sorted(row.samples, key=lambda s: seed_order(s.seed))
    per_run = [(s.runs[0], read_per_image(s.runs[0], metrics)) for s in samples]
    if names is None:
        names = (sorted(per_run[0][1]), Path(per_run[0][0].path) / PER_IMAGE_CSV)
    expected, source = names
    for r, table in per_run:
        if sorted(table) != expected:
            here, there = sorted(set(table) - set(expected)), sorted(set(expected) - set(table))
            raise ComparisonError(f"{Path(r.path) / PER_IMAGE_CSV}: its images differ from those of {source} despite "
                                  f"one manifest (only here: {here[:5]}, only there: {there[:5]}); rerun its test")
    values = {m: np.array([[t[n][m] for n in expected] for _, t in per_run]) for m in metrics}
    return Side(row, [s.seed for s in samples], values, [r for r, _ in per_run]), names
