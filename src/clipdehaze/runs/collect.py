"""Runs as the tables see them: every ``metrics.json`` below some folders, reduced to what identifies the scored
thing (:class:`Run`) and its numbers.

What a run scored is read from its provenance (:mod:`clipdehaze.provenance`), never guessed from paths:

* **the weights**: a training run's best checkpoint and the evaluation of a checkpoint are *trained* weights,
  identified by their training config (the checkpoint's, ``train_config``) and which checkpoint of that training
  was scored (``best``, ``last``, or the file's name); a published or foreign weights file by its sha256; seeded
  random initialisations by the seed; parameter-free priors (``none``) by nothing.
* **the scored images**: the data config's name and the manifest sha256 of the scored files.
* **the protocol**: the metric protocol line without the self-ensemble part, which is an evaluation option.
* **the evaluation options** (:data:`clipdehaze.runs.keys.EVALUATION_DEFAULTS`): ``tta`` (from the config, or
  from the protocol line of runs that predate the key), the raw weights of an EMA checkpoint (``use_ema=false``,
  recorded as ``weights.ema``), a test prior control other than the training one (``clip_control.test``), and
  ``clipdehaze-predict``'s tiling.
* **the model-defining config keys** (:mod:`clipdehaze.runs.keys`): the architecture keys of the config that built
  the scored network, and for trained weights also the training keys of the config that trained them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdehaze.runs import keys as K
from clipdehaze.utils.files import REPLACED_PREFIX

#: What a protocol line reads when a run recorded none.
UNKNOWN_PROTOCOL = "?"


@dataclass(frozen=True)
class Weights:
    """What weights were scored. ``kind``: ``trained`` | ``file`` | ``random`` | ``none`` | ``unknown``."""

    kind: str
    sha256: str | None = None
    file: str | None = None
    checkpoint: str | None = None

    def identity(self) -> tuple:
        """What two runs must share to have scored the same weights (seeds aside)."""
        if self.kind == "trained":
            return ("trained", self.checkpoint)
        if self.kind == "file":
            return ("file", self.sha256)
        return (self.kind,)


@dataclass
class Run:
    """One ``metrics.json``, reduced to what identity, grouping and display need."""

    path: str
    kind: str
    generator: str
    dataset: str
    manifest: str | None
    protocol: str
    seed: Any
    recipe: dict[str, Any]
    evaluation: dict[str, Any]
    weights: Weights
    metrics: dict[str, float]
    params: int | None = None
    images: int | None = None
    available: int | None = None
    subset: bool = False
    weights_origin: str = "unknown"
    clip: str | None = None
    prior: str = "-"
    model_config: dict[str, Any] | None = None
    unclassified: list[str] = field(default_factory=list)

    @property
    def sample_key(self) -> tuple:
        """Runs of one row with the same key scored the same weights: one sample, counted once (a training run's
        test and the evaluation of its best checkpoint share the sha256)."""
        if self.weights.sha256 and self.weights.kind in ("trained", "file"):
            return ("sha256", self.weights.sha256)
        if self.weights.kind == "none":
            return ("none",)
        if self.weights.kind == "random":  # a seeded initialisation: the seed is the weights
            return ("seed", str(self.seed))
        return ("run", self.path)  # nothing shows two runs scored the same weights


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


def _value(v: Any) -> Any:
    """A config value as a hashable, comparable cell (lists and dicts as canonical JSON)."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def model_keys(config: dict[str, Any] | None, classes: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """(the keys of ``config`` in ``classes`` and the unclassified ones, the unclassified key names)."""
    from clipdehaze.provenance import flatten

    out, unclassified = {}, []
    for k, v in flatten(config or {}).items():
        cls = K.classify(k)
        if cls is None:
            unclassified.append(k)
        if cls is None or cls in classes:
            out[k] = _value(v)
    return out, sorted(unclassified)


def split_protocol(line: str | None, tta: str | None) -> tuple[str, str]:
    """(metric protocol, self-ensemble) of a ``metric_protocol`` line, which appends the self-ensemble's
    description (:data:`clipdehaze.utils.tta.TTA_DESCRIPTIONS`) when one was on."""
    from clipdehaze.utils.tta import TTA_DESCRIPTIONS

    if not line:
        return UNKNOWN_PROTOCOL, tta or "none"
    parts = line.split("; ")
    found = next((mode for mode, text in TTA_DESCRIPTIONS.items() if text and text in parts), None)
    kept = "; ".join(p for p in parts if not (p and p in TTA_DESCRIPTIONS.values()))
    return kept or UNKNOWN_PROTOCOL, tta or found or "none"


def _checkpoint_name(path: str | None, train_config: dict[str, Any] | None) -> str:
    """Which checkpoint of a training run: ``last``, ``best`` (the run's ModelCheckpoint file name pattern), or
    the file's stem; ``final`` for a training run that tested its last weights without a checkpoint."""
    if not path:
        return "final"
    stem = Path(path).stem
    if re.fullmatch(r"last(-v\d+)?", stem):
        return "last"
    template = (((train_config or {}).get("callbacks") or {}).get("model_checkpoint") or {}).get("filename")
    if isinstance(template, str):
        pattern = "".join(".+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[^}]*\})", template) if part)
        if re.fullmatch(pattern + r"(-v\d+)?", stem):
            return "best"
    return stem


def _kind(summary: dict[str, Any]) -> str:
    task = (summary.get("config") or {}).get("task_name")
    if task in ("train", "eval", "predict"):
        return task
    if "predict_seconds" in summary:
        return "predict"
    return "eval" if "train_config" in summary or "ckpt_path" in summary else "train"


def _weights(summary: dict[str, Any], kind: str, trained_by: dict[str, Any] | None) -> Weights:
    record = summary.get("weights") or {}
    origin = record.get("origin", "unknown")
    sha = record.get("sha256")
    path = record.get("path") or (None if kind == "train" else (summary.get("config") or {}).get("ckpt_path"))
    file = Path(path).name if path else None
    if origin == "trained" or (origin == "checkpoint" and trained_by is not None):
        return Weights("trained", sha, file, _checkpoint_name(path, trained_by))
    if origin in ("published", "checkpoint") and sha:
        return Weights("file", sha, file)
    if origin in ("random", "none"):
        return Weights(origin)
    return Weights("unknown", sha, file)


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


def _evaluation(summary: dict[str, Any], config: dict[str, Any], tta: str) -> dict[str, Any]:
    """The evaluation options of a run, each at its :data:`~clipdehaze.runs.keys.EVALUATION_DEFAULTS` value where
    it changed nothing."""
    out = dict(K.EVALUATION_DEFAULTS)
    out["tta"] = tta
    if (summary.get("weights") or {}).get("ema") is False:
        out["use_ema"] = False
    record = summary.get("clip_control") or {}
    if record and record.get("test", "real") != record.get("train", "real"):
        out["test_clip_control"] = record.get("test")
    for key in ("tile", "overlap", "memory_budget_mb"):
        if key in config:
            out[key] = config[key]
    return out


def to_run(summary: dict[str, Any], path: str) -> Run:
    """A ``metrics.json`` (``summary``) read from the folder ``path``."""
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    train_config = summary.get("train_config") if isinstance(summary.get("train_config"), dict) else None
    kind = _kind(summary)
    trained_by = config if kind == "train" else train_config
    weights = _weights(summary, kind, trained_by)
    if weights.kind == "trained":
        recipe, unclassified = model_keys(trained_by, K.MODEL_DEFINING)
        if trained_by is not config:  # a key nobody declared may change the scoring pass too
            extra, unknown = model_keys(config, ())
            recipe.update({k: v for k, v in extra.items() if k not in recipe})
            unclassified = sorted(set(unclassified) | set(unknown))
    else:  # the scoring run's own config built the network; its training keys trained nothing that was scored
        recipe, unclassified = model_keys(config, (K.ARCHITECTURE,))
    protocol, tta = split_protocol(summary.get("metric_protocol"), config.get("tta"))
    dataset = summary.get("dataset") or {}
    data = str(summary.get("data"))
    model_config = next((dict(c["model"]) for c in (train_config, config)
                         if isinstance(c, dict) and isinstance(c.get("model"), dict)), None)
    return Run(
        path=path, kind=kind, generator=summary["generator"], dataset=data, manifest=dataset.get("manifest_sha256"),
        protocol=protocol, seed=summary.get("seed") if weights.kind in ("trained", "random", "unknown") else None,
        recipe=recipe, evaluation=_evaluation(summary, config, tta), weights=weights,
        metrics=_test_metrics(summary.get("metrics", {}), summary.get("data")), params=summary.get("params"),
        images=dataset.get("images", summary.get("images")), available=dataset.get("available"),
        subset=bool(dataset.get("subset")), weights_origin=(summary.get("weights") or {}).get("origin", "unknown"),
        clip=summary.get("clip"), prior=_prior(summary), model_config=model_config, unclassified=unclassified)


def collect_runs(paths: list[Path]) -> list[Run]:
    """Every clipdehaze ``metrics.json`` at or below ``paths`` (files or folders), in path order; JSON files that
    are not run summaries (a bench file) are skipped, unreadable ones are an error naming the file."""
    runs = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such run folder: {root}")
        # A run's files that clipdehaze-train overwrite=true moved aside (replaced-<time>/) are not a run of it.
        files = [root] if root.is_file() else sorted(
            f for f in root.rglob("metrics.json")
            if not any(p.startswith(REPLACED_PREFIX) for p in f.relative_to(root).parts[:-1]))
        for f in files:
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{f}: unreadable metrics.json ({e})") from e
            if not isinstance(data, dict) or "metrics" not in data or "generator" not in data:
                continue
            runs.append(to_run(data, str(f.parent)))
    if not runs:
        raise FileNotFoundError(f"no clipdehaze metrics.json below {', '.join(map(str, paths))}")
    return runs
