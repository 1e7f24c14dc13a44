"""Rows: a row is one scored thing, and runs that scored it are its samples.

**Identity.** Two runs land in one row exactly when they share the generator, the scored images (data name and
manifest sha256), the metric protocol, the CLIP prior's model id, the weights (:meth:`Weights.identity`: the same
training recipe and checkpoint choice, the same file by sha256, or both random / parameter-free), the evaluation
options and every model-defining config key (:mod:`clipdehaze.runs.keys`). What is left to differ is the seed
(a row averages over seeds) and what the keys module calls execution or location.

**Samples.** Runs of one row that scored the same weights (the same sha256: a training run's test and an evaluation
of its best checkpoint) are one sample, counted once; its value is the first run's, and the row is flagged when the
runs disagree. ``n`` counts samples.

**Labels and ids.** A row's label names what tells it apart from the other rows of its generator, images and
protocol: the model-defining keys whose values differ between them (``cam_density=false``), a weights file
(``weights=its.pth@1a2b3c4d``), the checkpoint of a training where they differ in it (``checkpoint=last``), the
CLIP prior's model where nothing else tells two rows apart, and every evaluation option
that is not at its default (``tta=x8``, ``use_ema=false``, ``test_clip_control=shuffled``), so a self-ensembled
result never reads as a plain one. ``name`` is generator plus label, made unique across the rows by the row's ``id``
where two would read the same; ``id`` is 8 hex digits of the sha256 of the full identity, stable whatever other
runs are collected.

``group_by`` / ``ignore`` (fnmatch patterns) choose which model-defining keys count; weights, images, protocol and
evaluation options always do.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from clipdehaze.runs import keys as K
from clipdehaze.runs.collect import UNKNOWN_PROTOCOL, Run, Weights
from clipdehaze.stats import SeedStat, seed_stat

ABSENT = "<absent>"


@dataclass
class Sample:
    """The runs of a row that scored the same weights."""

    seed: Any
    runs: list[Run]

    def value(self, metric: str) -> float | None:
        """The metric of the first run that logged it (None: no run did)."""
        return next((r.metrics[metric] for r in self.runs if metric in r.metrics), None)

    def disagrees(self, metric: str) -> bool:
        values = [r.metrics[metric] for r in self.runs if metric in r.metrics]
        return any(not math.isclose(v, values[0], rel_tol=1e-9, abs_tol=1e-12) and not (math.isnan(v) and
                                                                                         math.isnan(values[0]))
                   for v in values[1:])


@dataclass
class Row:
    """One scored thing (see the module docstring); ``variant`` holds the model-defining keys that label it."""

    id: str
    generator: str
    dataset: str
    manifest: str | None
    protocol: str
    clip: str | None
    weights: Weights
    evaluation: dict[str, Any]
    recipe: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    variant: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    name: str = ""

    @property
    def samples(self) -> list[Sample]:
        out: dict[tuple, Sample] = {}
        for r in self.runs:
            out.setdefault(r.sample_key, Sample(r.seed, [])).runs.append(r)
        return list(out.values())

    @property
    def seeds(self) -> list[Any]:
        return [s.seed for s in self.samples]

    @property
    def metric_names(self) -> set[str]:
        return {m for r in self.runs for m in r.metrics}

    def stat(self, metric: str) -> SeedStat:
        return seed_stat([(s.seed, s.value(metric)) for s in self.samples])

    @property
    def params(self) -> int | None:
        values = {r.params for r in self.runs if r.params is not None}
        return values.pop() if len(values) == 1 else None

    @property
    def images(self) -> str:
        values = sorted({r.images for r in self.runs if r.images is not None})
        return "/".join(map(str, values)) if values else "-"

    @property
    def prior(self) -> str:
        """The CLIP prior control of the row's runs (``-``: no CLIP input)."""
        return ", ".join(sorted({r.prior for r in self.runs}))

    @property
    def provenance(self) -> str:
        """Which kinds of run the row holds: ``2 train + 1 eval``."""
        counts = Counter(r.kind for r in self.runs)
        return " + ".join(f"{counts[k]} {k}" for k in ("train", "eval", "predict") if counts[k])

    @property
    def repeated_seeds(self) -> dict[str, list[str]]:
        """Seeds that name two samples (two different weights under one seed): seed -> the runs."""
        if self.weights.kind in ("file", "none"):  # one set of weights: a seed number means nothing
            return {}
        by_seed: dict[str, list[Sample]] = {}
        for s in self.samples:
            by_seed.setdefault(str(s.seed), []).append(s)
        return {seed: [r.path for s in group for r in s.runs] for seed, group in by_seed.items() if len(group) > 1}

    def missing(self, metric: str) -> list[Sample]:
        return [s for s in self.samples if s.value(metric) is None]

    @property
    def flags(self) -> list[str]:
        """What a reader must know before trusting the row's numbers."""
        out = []
        if self.weights.kind == "random":
            out.append("random weights")
        if self.clip and "random(" in self.clip:
            out.append("random CLIP")
        if any(r.subset for r in self.runs):
            sizes = sorted({f"{r.images}/{r.available}" for r in self.runs if r.subset})
            out.append(f"subset {', '.join(sizes)}")
        for seed in self.repeated_seeds:
            out.append(f"repeated seed {seed}")
        for m in sorted(self.metric_names):
            missing = self.missing(m)
            if missing:
                where = ", ".join(f"seed {s.seed}" if s.seed is not None else s.runs[0].path for s in missing)
                out.append(f"no {m} in {where}")
            if any(s.disagrees(m) for s in self.samples):
                out.append(f"runs of the same weights disagree on {m}")
        if self.protocol == UNKNOWN_PROTOCOL:
            out.append("no metric protocol recorded")
        if self.manifest is None:
            out.append("no image manifest recorded")
        if self.weights.kind == "unknown":
            out.append("weights not recorded")
        unclassified = sorted({k for r in self.runs for k in r.unclassified})
        if unclassified:
            out.append(f"unclassified config keys: {', '.join(unclassified)}")
        return out


def _matches(key: str, patterns: list[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns or [])


def _recipe(run: Run, group_by: list[str] | None, ignore: list[str] | None) -> dict[str, Any]:
    return {k: v for k, v in run.recipe.items()
            if (group_by is None or _matches(k, group_by)) and not _matches(k, ignore)}


def _key(run: Run, recipe: dict[str, Any]) -> str:
    return json.dumps([run.generator, run.dataset, run.manifest, run.protocol, run.clip, run.weights.identity(),
                       sorted(run.evaluation.items(), key=lambda kv: kv[0]), sorted(recipe.items())],
                      default=str)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return "null" if v is None else str(v)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's last dotted component when that is unique among ``keys``, else the full key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _label_parts(row: Row, variant_keys: list[str], checkpoint_differs: bool) -> list[str]:
    short = _short_keys(variant_keys)
    parts = [f"{short[k]}={_fmt(row.recipe.get(k, ABSENT))}" for k in variant_keys]
    if row.weights.kind == "file":
        parts.append(f"weights={row.weights.file or 'file'}@{(row.weights.sha256 or '')[:8]}")
    if checkpoint_differs:
        parts.append(f"checkpoint={row.weights.checkpoint}")
    return parts + evaluation_label(row.evaluation)


def evaluation_label(evaluation: dict[str, Any]) -> list[str]:
    """``key=value`` for each evaluation option not at its default (``tta=x8``)."""
    return [f"{k}={_fmt(v)}" for k, v in evaluation.items() if v != K.EVALUATION_DEFAULTS.get(k)]


def aggregate(runs: list[Run], group_by: list[str] | None = None, ignore: list[str] | None = None) -> list[Row]:
    """The rows of ``runs`` (see the module docstring), sorted by dataset, manifest, generator and label."""
    rows: dict[str, Row] = {}
    for r in runs:
        recipe = _recipe(r, group_by, ignore)
        key = _key(r, recipe)
        if key not in rows:
            rows[key] = Row(id=hashlib.sha256(key.encode()).hexdigest(), generator=r.generator, dataset=r.dataset,
                            manifest=r.manifest, protocol=r.protocol, clip=r.clip, weights=r.weights,
                            evaluation=dict(r.evaluation), recipe=recipe)
        rows[key].runs.append(r)
    out = list(rows.values())
    families: dict[tuple, list[Row]] = {}
    for row in out:
        families.setdefault((row.generator, row.dataset, row.manifest, row.protocol, row.weights.kind), []).append(row)
    for family in families.values():
        keys = sorted(set().union(*(row.recipe for row in family)))
        variant_keys = [k for k in keys if len({json.dumps(row.recipe.get(k, ABSENT), default=str)
                                                 for row in family}) > 1]
        checkpoint_differs = len({row.weights.checkpoint for row in family}) > 1
        parts = {row.id: _label_parts(row, variant_keys, checkpoint_differs) for row in family}
        seen = Counter(tuple(p) for p in parts.values())
        for row in family:
            row.variant = {k: row.recipe.get(k, ABSENT) for k in variant_keys}
            # The CLIP prior's model only where nothing else tells two rows apart.
            clip = [f"clip={row.clip}"] if seen[tuple(parts[row.id])] > 1 else []
            row.label = ", ".join(parts[row.id] + clip)
    _name(out)
    return sorted(out, key=lambda g: (g.dataset, g.manifest or "", g.generator, g.label, g.id))


def _name(rows: list[Row]) -> None:
    """``generator (label)``, unique across ``rows`` (ids where two would read the same), and 8-digit ids (more
    where 8 collide)."""
    width = 8
    while len({r.id[:width] for r in rows}) < len(rows):
        width += 4
    for r in rows:
        r.id = r.id[:width]
    names = Counter(r.generator + (f" ({r.label})" if r.label else "") for r in rows)
    for r in rows:
        base = r.generator + (f" ({r.label})" if r.label else "")
        r.name = base if names[base] == 1 else f"{base} [{r.id}]"


def share_initialisation(a: Row, b: Row) -> bool:
    """Whether a seed of ``a`` and the same seed of ``b`` started from the same weights, so their seeds pair: the
    same generator and weights (one file; or trained from the same recipe up to
    :data:`~clipdehaze.runs.keys.SAME_INITIALISATION_KEYS` and the same checkpoint choice; or random inits of one
    architecture), whatever the evaluation options. Prior-control twins and plain vs self-ensembled runs of the
    same weights share it; two architectures never do."""
    if a.generator != b.generator or a.weights.identity() != b.weights.identity():
        return False
    if a.weights.kind in ("file", "none"):
        return True
    recipes = set()
    for row in (a, b):
        for run in row.runs:
            recipes.add(json.dumps(sorted((k, v) for k, v in run.recipe.items()
                                          if k not in K.SAME_INITIALISATION_KEYS), default=str))
    return len(recipes) == 1


def find_row(rows: list[Row], wanted: str) -> Row:
    """The row whose id or name is ``wanted``, else the one row whose name contains it; a ValueError listing every
    row's id and name otherwise."""
    hits = ([r for r in rows if wanted in (r.id, r.name)]
            or [r for r in rows if wanted in r.name])
    if len(hits) != 1:
        listing = "; ".join(f"{r.id} = {r.name} ({r.dataset})" for r in rows)
        raise ValueError(f"{wanted!r} matches {len(hits)} rows; name one by its id or full name: {listing}")
    return hits[0]
