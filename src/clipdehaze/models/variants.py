"""Generator variants as data, and :func:`create_generator`.

Every architecture file has a variant file beside it (``generators/dehazeformer.py`` + ``generators/dehazeformer.yaml``)
holding the numbers of its published sizes, the way open_clip keeps its model configs as JSON::

    module: clipdehaze.models.generators.dehazeformer   # the architecture file (it registers the families)
    families:                                           # generator families built from these variants
      dehazeformer: {}                                  # {settings a composed run adds}, see below
    common: {embed_dims: [24, 48, 96, 48, 24], ...}     # constructor arguments every variant shares
    variants:                                           # one generator <family>_<variant> each
      t: {depths: [4, 4, 4, 2, 2], ...}
      test: {...}

``create_generator("dehazeformer_t", **kwargs)`` imports ``module`` (which registers the family's class with
:func:`~clipdehaze.models.registry.register_generator`) and calls it with ``common``, then ``variants.t``, then
``kwargs``. A file without ``variants`` defines one generator named after each family. The settings under a family
are what a composed run puts into ``model`` beyond the numbers: switches shown so ``--cfg job`` lists them, and
values read from other config groups (``clip_dim: ${clip_dim:${clip.model_name}}``); Python callers pass those as
keyword arguments.

The ``model`` config group of the Hydra entry points is made from these files
(:func:`clipdehaze.utils.hydra_utils.register_model_configs`): option ``model=dehazeformer_t`` is
``{name: dehazeformer_t, **common, **variants.t, **families.dehazeformer}``.

Variant files are read from this package's ``generators/`` folder and from every folder listed in the environment
variable ``CLIPDEHAZE_GENERATOR_PATH`` (``os.pathsep``-separated), for generators kept outside the package; their
``module`` must then be importable (e.g. on ``PYTHONPATH``). A checkpoint names only its generator; the code that
builds it comes from these files, never from the checkpoint.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from clipdehaze.models.contract import contract_gaps
from clipdehaze.models.registry import registered_builder

__all__ = ["GENERATOR_PATH_ENV", "Variant", "create_generator", "list_generators", "variant", "variant_factories",
           "variants"]

GENERATOR_PATH_ENV = "CLIPDEHAZE_GENERATOR_PATH"
_BUILTIN_DIR = Path(__file__).with_name("generators")
_FILE_KEYS = ("module", "families", "common", "variants")


@dataclass(frozen=True)
class Variant:
    """One generator name and what it means."""

    name: str
    family: str
    module: str
    source: Path
    #: Constructor arguments: the file's ``common`` updated by the variant's own.
    arguments: dict[str, Any] = field(default_factory=dict)
    #: What a composed run adds (``families.<family>`` of the file); may hold interpolations.
    run_settings: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> dict[str, Any]:
        """The ``model`` config of option ``model=<name>``."""
        return {"name": self.name, **self.arguments, **self.run_settings}


def _mapping(value: Any, source: Path, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{source}: {where} must be a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def _read_file(source: Path) -> list[Variant]:
    try:
        data = OmegaConf.to_container(OmegaConf.load(source), resolve=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is reported against the file
        raise ValueError(f"{source}: not a readable variant file ({e})") from e
    data = _mapping(data, source, "the file")
    if unknown := sorted(set(data) - set(_FILE_KEYS)):
        raise ValueError(f"{source}: unknown keys {unknown}; a variant file holds {', '.join(_FILE_KEYS)}")
    module = data.get("module")
    if not isinstance(module, str) or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"{source}: module must name the architecture file to import (e.g. "
                         f"clipdehaze.models.generators.{source.stem}), got {module!r}")
    families = _mapping(data.get("families"), source, "families")
    if not families:
        raise ValueError(f"{source}: families must name at least one generator family (e.g. {source.stem}: {{}})")
    common = _mapping(data.get("common"), source, "common")
    sizes = {str(k): _mapping(v, source, f"variants.{k}") for k, v in _mapping(data.get("variants"), source,
                                                                              "variants").items()}
    out = []
    for family, settings in families.items():
        if not str(family).isidentifier():
            raise ValueError(f"{source}: family name {family!r} must be a Python identifier")
        settings = _mapping(settings, source, f"families.{family}")
        named = {f"{family}_{size}": numbers for size, numbers in sizes.items()} if sizes else {family: {}}
        out += [Variant(name, family, module, source, {**common, **numbers}, settings)
                for name, numbers in named.items()]
    return out


def _search_dirs() -> tuple[Path, ...]:
    extra = os.environ.get(GENERATOR_PATH_ENV, "")
    return (_BUILTIN_DIR, *(Path(p) for p in extra.split(os.pathsep) if p))


@functools.lru_cache(maxsize=8)
def _variants(dirs: tuple[Path, ...]) -> dict[str, Variant]:
    found: dict[str, Variant] = {}
    family_files: dict[str, Path] = {}
    for folder in dirs:
        if not folder.is_dir():
            raise FileNotFoundError(f"{GENERATOR_PATH_ENV} lists {folder}, which is not a folder")
        for source in sorted(folder.glob("*.yaml")):
            for v in _read_file(source):
                if family_files.setdefault(v.family, source) != source:
                    raise ValueError(f"generator family {v.family!r} is defined twice: in {family_files[v.family]} "
                                     f"and in {source}")
                if v.name in found:
                    raise ValueError(f"generator {v.name!r} is defined twice: in {found[v.name].source} and in "
                                     f"{source}")
                found[v.name] = v
    return found


def variants() -> dict[str, Variant]:
    """Every generator name the variant files define (built-in ones and those on ``CLIPDEHAZE_GENERATOR_PATH``)."""
    return _variants(_search_dirs())


def list_generators() -> list[str]:
    """Sorted names of every generator."""
    return sorted(variants())


def variant(name: str) -> Variant:
    try:
        return variants()[name]
    except KeyError:
        raise KeyError(f"unknown generator {name!r}; registered generators: {', '.join(list_generators())}") from None


def create_generator(name: str, **kwargs: Any):
    """Build generator ``name`` (e.g. ``dehazeformer_t``): its variant's constructor arguments updated by
    ``kwargs``. The result keeps the :class:`~clipdehaze.models.contract.Generator` contract and carries
    ``generator_name``."""
    v = variant(name)
    try:
        importlib.import_module(v.module)  # registers the family (a dictionary look-up once imported)
    except ImportError as e:
        raise ImportError(f"{v.source}: cannot import module {v.module!r}, which builds generator {name!r} ({e})"
                          ) from e
    builder = registered_builder(v.family)
    if builder is None:
        raise LookupError(f"{v.source}: module {v.module} registers no generator family {v.family!r}; decorate its "
                          f"network class with @register_generator({v.family!r})")
    model = builder(**{**v.arguments, **kwargs})
    if gaps := contract_gaps(model):
        raise TypeError(f"generator {name!r} ({type(model).__module__}.{type(model).__qualname__}) lacks {gaps} of "
                        "the generator contract (clipdehaze.models.contract.Generator); subclass GeneratorBase for "
                        "the defaults")
    model.generator_name = name
    return model


def variant_factories(module: str) -> Callable[[str], Callable[..., Any]]:
    """A module-level ``__getattr__`` for architecture file ``module``: each variant its families define becomes a
    factory function of that name (``from ...dehazeformer import dehazeformer_t``; ``dehazeformer_t(**kwargs)`` is
    ``create_generator("dehazeformer_t", **kwargs)``)."""

    made: dict[str, Callable[..., Any]] = {}  # one object per name: pickle finds the factory it pickles by name

    def __getattr__(attr: str) -> Callable[..., Any]:
        if attr in made:
            return made[attr]
        if attr.startswith("_"):
            raise AttributeError(f"module {module!r} has no attribute {attr!r}")
        try:
            v = variants().get(attr)
        except (OSError, ValueError, LookupError, ImportError) as e:
            # hasattr() and other attribute probes expect AttributeError; the cause says which file is wrong.
            raise AttributeError(f"module {module!r} has no attribute {attr!r} ({e})") from e
        if v is None or v.module != module:
            raise AttributeError(f"module {module!r} has no attribute {attr!r}")

        def factory(**kwargs: Any):
            return create_generator(attr, **kwargs)

        factory.__name__ = factory.__qualname__ = attr
        factory.__module__ = module
        factory.__doc__ = f"Generator {attr!r} ({v.source.name}); keyword arguments override its settings."
        made[attr] = factory
        return factory

    return __getattr__
