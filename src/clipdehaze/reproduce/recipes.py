"""Paper recipes as data, and the experiment options made from them.

Each paper folder holds a recipe table, ``experiments/<paper>/recipes.yaml``: every training config file of the
upstream repositories with its numbers verbatim (``configs/<setting>/<model>.json``: ``batch_size``,
``patch_size``, ``valid_mode``, ``edge_decay``, ``only_h_flip``, ``optimizer``, ``lr``, ``epochs``,
``eval_freq``), where each upstream lives (repository, commit, what its training script does with the numbers),
which data each setting trains and tests on, the paper's tables (rows = recipes) and the released weights whose
hash makes a weights file "published"::

    paper: dehazeformer
    title: ...
    upstreams:                # <key>: {repo, commit, entry, family, loss, saves, [clip], [unread]}
      dehazeformer: {repo: IDKiro/DehazeFormer, commit: <40 hex>, family: dehazeformer, loss: l1_upstream, ...}
    settings:                 # upstream --exp -> {upstream_dataset, train: <data config>, test: <data>, train_images}
      indoor: {upstream_dataset: RESIDE-IN, train: its, test: sots_indoor, train_images: 13990}
    recipes:                  # one per upstream file; `upstream:` defaults to the first one listed
      - {file: configs/indoor/dehazeformer-t.json, config: {batch_size: 32, ...}}
    tables:                   # <table>: {title, rows: [experiment names]}
    releases: []              # [{file, sha256, source}]

Like the generator variants (:mod:`clipdehaze.models.variants`), the tables become Hydra config options when a
command starts (:func:`register_experiment_configs`, called by
:func:`clipdehaze.utils.hydra_utils.register_with_hydra`): ``experiment=<generator>_<train data>`` for a variant's
own file (``dehazeformer_t_its``), ``experiment=<family>_<train data>_default`` for a setting's ``default.json``,
which leaves ``model=`` to the user (upstream's ``train.py`` reads ``configs/<exp>/<model>.json`` and falls back to
``default.json`` only when that file is missing). :func:`experiment_node` says what a recipe sets: the upstream
numbers mapped onto our config keys, plus the fixed parts of upstream's training loop (:data:`LOOP`). An upstream
file that is empty has no numbers and no experiment; ``experiment=<its name>`` stops saying why
(:func:`refuse_unrunnable`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from clipdehaze.utils.resources import project_dir

__all__ = ["LOOP", "Paper", "Recipe", "Table", "experiment_node", "papers", "published_release", "read_paper",
           "recipes", "refuse_unrunnable", "register_experiment_configs"]

RECIPE_FILE = "recipes.yaml"
#: The keys of a config file that upstream's train.py reads (DehazeFormer's, which MixDehazeNet and MixCLDehazeNet
#: kept). Any other key must be declared under the upstream's ``unread`` with the reason nothing reads it.
UPSTREAM_KEYS = ("batch_size", "patch_size", "valid_mode", "edge_decay", "only_h_flip", "optimizer", "lr", "epochs",
                 "eval_freq")
_FILE_KEYS = ("paper", "title", "upstreams", "settings", "recipes", "tables", "releases")
_UPSTREAM_KEYS = ("repo", "commit", "entry", "family", "loss", "saves", "clip", "unread")
_SETTING_KEYS = ("upstream_dataset", "train", "test", "train_images")
_RECIPE_KEYS = ("upstream", "file", "config", "aliases")
_TABLE_KEYS = ("title", "rows")
_RELEASE_KEYS = ("file", "sha256", "source")

#: The fixed parts of the upstream training loops (DehazeFormer's train.py; MixDehazeNet and MixCLDehazeNet keep
#: them), as every generated experiment sets them. ``torch.optim.AdamW(params, lr=...)`` / ``Adam``: torch's other
#: defaults; ``CosineAnnealingLR(T_max=epochs, eta_min=lr * 1e-2)`` stepped once per epoch; ``range(epochs + 1)``
#: epochs; fp16 ``autocast`` with a ``GradScaler``; validation after the epochs whose 0-based index is a multiple
#: of ``eval_freq``.
LOOP = {
    "optimizers": {
        "adamw": {"group": "adamw", "defaults": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
                                                 "amsgrad": False}},
        "adam": {"group": "adam", "defaults": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                                               "amsgrad": False}},
    },
    "eta_min_factor": 1e-2,
    "extra_epochs": 1,
    "precision": "16-mixed",
    "trainer": "gpu",
}


@dataclass(frozen=True)
class Upstream:
    """One upstream repository at one commit and what its training script does with a config file."""

    key: str
    repo: str
    commit: str
    entry: str
    family: str
    loss: str
    saves: str
    clip: str | None = None
    #: config keys the script never reads -> why.
    unread: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Setting:
    """An upstream ``--exp`` value: the data it trains on and the test set its numbers are reported on."""

    name: str
    upstream_dataset: str | None
    train: str
    test: str
    train_images: int


@dataclass(frozen=True)
class Recipe:
    """One upstream training config file (``configs/<setting>/<model>.json``)."""

    paper: str
    upstream: Upstream
    file: str
    setting: Setting
    #: upstream's model name (``dehazeformer-t``), None for ``default.json``.
    model: str | None
    #: the file's numbers verbatim; None when the upstream file is empty.
    config: Mapping[str, Any] | None
    aliases: tuple[str, ...] = ()

    @property
    def generator(self) -> str | None:
        """Our generator (``dehazeformer_t``), None for ``default.json`` (the user names it)."""
        if self.model is None:
            return None
        return f"{self.upstream.family}_{self.model.rsplit('-', 1)[-1].lower()}"

    @property
    def name(self) -> str:
        """The experiment option: ``<generator>_<train data>``, or ``<family>_<train data>_default``."""
        if self.generator is None:
            return f"{self.upstream.family}_{self.setting.train}_default"
        return f"{self.generator}_{self.setting.train}"

    @property
    def runnable(self) -> bool:
        return self.config is not None

    @property
    def saved_as(self) -> str:
        """Where upstream's training script writes this recipe's best weights, relative to its save folder."""
        return self.upstream.saves.format(setting=self.setting.name, model=self.model or "default")

    def describe(self) -> str:
        return f"{self.upstream.repo}@{self.upstream.commit[:7]}:{self.file}"


@dataclass(frozen=True)
class Table:
    """A paper table: a test set and the recipes whose numbers it reports, in the paper's row order."""

    paper: str
    name: str
    title: str
    rows: tuple[str, ...]


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    source: Path
    upstreams: Mapping[str, Upstream]
    settings: Mapping[str, Setting]
    #: experiment name -> recipe (aliases excluded).
    recipes: Mapping[str, Recipe]
    tables: Mapping[str, Table]
    releases: tuple[Mapping[str, str], ...]

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"{self.name} has no table {name!r}; its tables: {', '.join(self.tables)} (from "
                           f"{self.source})") from None


# ----------------------------------------------------------------------------------------------------- reading
def _mapping(value: Any, source: Path, where: str, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{source}: {where} must be a mapping, got {type(value).__name__} {value!r}")
    value = dict(value)
    if keys is not None and (unknown := sorted(set(value) - set(keys))):
        raise ValueError(f"{source}: {where} has unknown keys {unknown}; it holds {', '.join(keys)}")
    return value


def _required(value: dict[str, Any], key: str, source: Path, where: str, kind: type) -> Any:
    v = value.get(key)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise ValueError(f"{source}: {where}.{key} must be a {kind.__name__}, got {v!r}")
    return v


def _check_numbers(config: dict[str, Any], upstream: Upstream, source: Path, where: str) -> None:
    missing = [k for k in UPSTREAM_KEYS if k not in config]
    unknown = sorted(set(config) - set(UPSTREAM_KEYS) - set(upstream.unread))
    if missing or unknown:
        raise ValueError(f"{source}: {where} lacks {missing} / has keys upstream's {upstream.entry} does not read "
                         f"{unknown}; declare such keys under upstreams.{upstream.key}.unread with the reason")
    ints = {"batch_size": 1, "patch_size": 1, "epochs": 1, "eval_freq": 1}
    for key, minimum in ints.items():
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < minimum:
            raise ValueError(f"{source}: {where}.{key}={config[key]!r} must be an integer >= {minimum}")
    for key in ("lr", "edge_decay"):
        if isinstance(config[key], bool) or not isinstance(config[key], (int, float)) or config[key] < 0:
            raise ValueError(f"{source}: {where}.{key}={config[key]!r} must be a non-negative number")
    if config["valid_mode"] not in ("valid", "test"):
        raise ValueError(f"{source}: {where}.valid_mode={config['valid_mode']!r}: upstream's loader knows 'valid' "
                         "(centre crop) and 'test' (full image)")
    if not isinstance(config["only_h_flip"], bool):
        raise ValueError(f"{source}: {where}.only_h_flip={config['only_h_flip']!r} must be true or false")
    if config["optimizer"] not in LOOP["optimizers"]:
        raise ValueError(f"{source}: {where}.optimizer={config['optimizer']!r}: upstream's train.py knows "
                         f"{', '.join(LOOP['optimizers'])}")


_FILE_PATTERN = re.compile(r"configs/(?P<setting>[^/]+)/(?P<model>[^/]+)\.json")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def read_paper(source: Path) -> Paper:
    """Read and check one recipe table; every error names the file and the entry."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(source), resolve=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is reported against the file
        raise ValueError(f"{source}: not a readable recipe table ({e})") from e
    data = _mapping(data, source, "the file", _FILE_KEYS)
    paper = _required(data, "paper", source, "the file", str)
    upstreams = {}
    for key, raw in _mapping(data.get("upstreams"), source, "upstreams").items():
        raw = _mapping(raw, source, f"upstreams.{key}", _UPSTREAM_KEYS)
        for k in ("repo", "commit", "entry", "family", "loss", "saves"):
            _required(raw, k, source, f"upstreams.{key}", str)
        if not _COMMIT.fullmatch(raw["commit"]):
            raise ValueError(f"{source}: upstreams.{key}.commit must be a full 40-hex commit, got {raw['commit']!r}")
        upstreams[key] = Upstream(key=key, **{**raw, "unread": _mapping(raw.get("unread"), source,
                                                                         f"upstreams.{key}.unread")})
    if not upstreams:
        raise ValueError(f"{source}: upstreams must name at least one upstream repository")
    settings = {}
    for name, raw in _mapping(data.get("settings"), source, "settings").items():
        raw = _mapping(raw, source, f"settings.{name}", _SETTING_KEYS)
        for k in ("train", "test"):
            _required(raw, k, source, f"settings.{name}", str)
        _required(raw, "train_images", source, f"settings.{name}", int)
        settings[name] = Setting(name=name, upstream_dataset=raw.get("upstream_dataset"), train=raw["train"],
                                 test=raw["test"], train_images=raw["train_images"])
    recipes: dict[str, Recipe] = {}
    for i, raw in enumerate(data.get("recipes") or []):
        where = f"recipes[{i}]"
        raw = _mapping(raw, source, where, _RECIPE_KEYS)
        upstream = upstreams.get(raw.get("upstream") or next(iter(upstreams)))
        if upstream is None:
            raise ValueError(f"{source}: {where}.upstream={raw['upstream']!r}; known: {', '.join(upstreams)}")
        file = _required(raw, "file", source, where, str)
        m = _FILE_PATTERN.fullmatch(file)
        if not m or m["setting"] not in settings:
            raise ValueError(f"{source}: {where}.file={file!r} must be configs/<setting>/<model>.json with a setting "
                             f"of `settings` ({', '.join(settings)})")
        config = raw.get("config")
        if config is not None:
            config = _mapping(config, source, f"{where}.config")
            _check_numbers(config, upstream, source, f"{where} ({file})")
        recipe = Recipe(paper=paper, upstream=upstream, file=file, setting=settings[m["setting"]],
                        model=None if m["model"] == "default" else m["model"], config=config,
                        aliases=tuple(raw.get("aliases") or ()))
        if recipe.generator is not None:
            from clipdehaze.models.variants import variants

            if recipe.generator not in variants():
                raise ValueError(f"{source}: {where} ({file}) maps upstream model {recipe.model!r} to generator "
                                 f"{recipe.generator!r}, which no variant file defines")
        for name in (recipe.name, *recipe.aliases):
            if name in recipes or any(name in r.aliases for r in recipes.values()):
                raise ValueError(f"{source}: experiment {name!r} is defined twice ({file})")
        recipes[recipe.name] = recipe
    tables = {}
    for name, raw in _mapping(data.get("tables"), source, "tables").items():
        raw = _mapping(raw, source, f"tables.{name}", _TABLE_KEYS)
        rows = tuple(raw.get("rows") or ())
        if unknown := [r for r in rows if r not in recipes]:
            raise ValueError(f"{source}: tables.{name}.rows names {unknown}, which no recipe of this file defines")
        if dropped := [r for r in rows if recipes[r].generator is None]:
            raise ValueError(f"{source}: tables.{name}.rows names {dropped}: a default.json recipe has no model of "
                             "its own; name the variant's recipe")
        tables[name] = Table(paper=paper, name=name, title=str(raw.get("title") or name), rows=rows)
    releases = []
    for i, raw in enumerate(data.get("releases") or []):
        raw = _mapping(raw, source, f"releases[{i}]", _RELEASE_KEYS)
        for k in _RELEASE_KEYS:
            _required(raw, k, source, f"releases[{i}]", str)
        if not re.fullmatch(r"[0-9a-f]{64}", raw["sha256"]):
            raise ValueError(f"{source}: releases[{i}].sha256 must be 64 lowercase hex digits")
        releases.append(raw)
    return Paper(name=paper, title=str(data.get("title") or paper), source=source, upstreams=upstreams,
                 settings=settings, recipes=recipes, tables=tables, releases=tuple(releases))


@functools.lru_cache(maxsize=4)
def _papers(root: Path) -> dict[str, Paper]:
    found: dict[str, Paper] = {}
    names: dict[str, Path] = {}
    for source in sorted(root.glob(f"*/{RECIPE_FILE}")):
        paper = read_paper(source)
        if paper.name != source.parent.name:
            raise ValueError(f"{source}: paper: {paper.name!r} must be the folder's name {source.parent.name!r} "
                             "(clipdehaze-table --paper and clipdehaze-reproduce find it by that name)")
        for recipe in paper.recipes.values():
            for name in (recipe.name, *recipe.aliases):
                if name in names:
                    raise ValueError(f"experiment {name!r} is defined in {names[name]} and in {source}")
                names[name] = source
        found[paper.name] = paper
    return found


def papers(root: Path | None = None) -> dict[str, Paper]:
    """Every paper with a recipe table under ``experiments/`` (the checkout's, or the copy in the wheel)."""
    return _papers(root or project_dir("experiments"))


def recipes() -> dict[str, Recipe]:
    """Experiment name (aliases included) -> recipe, over every paper."""
    out = {}
    for paper in papers().values():
        for recipe in paper.recipes.values():
            out.update({name: recipe for name in (recipe.name, *recipe.aliases)})
    return out


# ----------------------------------------------------------------------------------------------------- experiments
def experiment_node(recipe: Recipe) -> dict[str, Any]:
    """The ``experiment=<name>`` config of a runnable recipe (``# @package _global_``).

    Upstream's numbers map onto our keys: ``batch_size`` -> ``data.batch_size`` (the global batch: upstream's
    ``nn.DataParallel`` splits it over its GPUs; ``trainer=gpu`` trains it on one); ``patch_size`` ->
    ``data.crop_size``; ``valid_mode`` 'valid' (centre crop of the patch) -> ``data.val_crop_size: null``, 'test'
    (full image) -> ``0``; ``edge_decay``; ``only_h_flip`` -> ``data.augment: [hflip]``, else ``[hflip, rot90]``;
    ``optimizer`` and ``lr`` with torch's other defaults; ``epochs`` -> ``T_max`` and ``trainer.max_epochs = epochs
    + 1`` (upstream loops over ``range(epochs + 1)``); ``eval_freq`` -> :class:`clipdehaze.callbacks.EvalFreq`.
    Upstream's validation loader takes the training batch size: ours too on centre crops, one image at a time on
    full images (sizes may differ; the per-image PSNR mean is the same). The data's ``name`` is the test set's, so
    the test metrics and tables read ``sots_indoor`` for a model trained on ITS.
    """
    if recipe.config is None:
        raise ValueError(f"{recipe.describe()} is empty upstream: it has no numbers to make an experiment from")
    c, up, setting = dict(recipe.config), recipe.upstream, recipe.setting
    optimizer = LOOP["optimizers"][c["optimizer"]]
    valid = c["valid_mode"] == "valid"
    defaults: list[Any] = [
        {"override /model": recipe.generator or "???"},
        {"override /data": setting.train},
        {"override /loss": up.loss},
        {"override /optimizer": optimizer["group"]},
        {"override /scheduler": "cosine"},
        {"override /trainer": LOOP["trainer"]},
    ]
    if up.clip:
        defaults.append({"override /clip": up.clip})
    return {
        "defaults": [*defaults, "_self_"],
        "tags": [recipe.paper, setting.name, "recipe"],
        # Provenance, shown by --cfg job and kept in every run's resolved config (metrics.json).
        "recipe": {
            "paper": recipe.paper, "experiment": recipe.name, "repo": up.repo, "commit": up.commit,
            "file": recipe.file, "entry": up.entry, "setting": setting.name,
            "upstream_dataset": setting.upstream_dataset, "model": recipe.model, "config": c,
            "unread": {k: up.unread[k] for k in c if k in up.unread},
        },
        "data": {
            "name": setting.test,
            "batch_size": c["batch_size"],
            "val_batch_size": c["batch_size"] if valid else 1,
            "crop_size": c["patch_size"],
            "val_crop_size": None if valid else 0,
            "augment": ["hflip"] if c["only_h_flip"] else ["hflip", "rot90"],
            "edge_decay": float(c["edge_decay"]),
        },
        "optimizer": {"lr": c["lr"], **optimizer["defaults"]},
        "scheduler": {"scheduler": {"T_max": c["epochs"], "eta_min": c["lr"] * LOOP["eta_min_factor"]},
                      "interval": "epoch", "frequency": 1},
        "trainer": {"max_epochs": c["epochs"] + LOOP["extra_epochs"], "precision": LOOP["precision"],
                    "check_val_every_n_epoch": 1},
        "callbacks": {"eval_freq": {"_target_": "clipdehaze.callbacks.EvalFreq", "eval_freq": c["eval_freq"]}},
    }


def register_experiment_configs() -> None:
    """The recipe experiments as options of the ``experiment`` config group (every runnable recipe of every
    paper, under its name and its aliases)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, recipe in recipes().items():
        if recipe.runnable:
            store.store(group="experiment", name=name, node=experiment_node(recipe), package="_global_",
                        provider="clipdehaze")


def unrunnable_reason(name: str) -> str | None:
    """Why ``experiment=<name>`` names a recipe that cannot run (None when it can, or is no recipe)."""
    recipe = recipes().get(name)
    if recipe is None or recipe.runnable:
        return None
    others = [r.name for r in papers()[recipe.paper].recipes.values()
              if r.runnable and r.setting == recipe.setting and r.upstream == recipe.upstream]
    return (f"experiment={name}: {recipe.describe()} is an empty file upstream, so upstream's {recipe.upstream.entry} "
            f"stops in json.load (JSONDecodeError) and never trains it; there are no numbers to reproduce"
            + (f" (the setting's other recipes: {', '.join(others)})" if others else ""))


def refuse_unrunnable(argv: list[str]) -> None:
    """Stop with one sentence when the command line's ``experiment=`` (or a sweep over it) names an empty
    upstream recipe; Hydra would only say that no such option exists."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+") != "experiment":
            continue
        for name in value.split(","):
            if (why := unrunnable_reason(name.strip())) is not None:
                raise SystemExit(why)


def published_release(sha256: str | None) -> dict[str, str] | None:
    """The release a recipe table lists with this sha256 (``{paper, file, sha256, source}``), else None."""
    if not sha256:
        return None
    for paper in papers().values():
        for release in paper.releases:
            if release["sha256"] == sha256:
                return {"paper": paper.name, **release}
    return None
