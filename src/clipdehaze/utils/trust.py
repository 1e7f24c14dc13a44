"""What a file may ask to build: the allow-list between stored configs and Hydra ``instantiate``.

A checkpoint loads with ``torch.load(weights_only=True)``, so unpickling runs no code; but its hyper-parameters
are plain dicts whose ``_target_`` strings Hydra imports and calls. A crafted file could name any importable
callable (a file writer, ``torch.load`` of a second, pickled file ...), and Hydra's own block list stops
``os.system`` only. Every config read from a file therefore passes :func:`check_config` first: each ``_target_``
must name a class of the kind its place calls for, defined in that kind's packages:

=============  ===========================================  ==========================================
place          packages                                     base class
=============  ===========================================  ==========================================
``loss``       ``clipdehaze.losses``                        ``torch.nn.Module``
``clip``       ``clipdehaze.models.clip``                   ``torch.nn.Module``
``optimizer``  ``torch.optim``                              ``torch.optim.Optimizer``
``scheduler``  ``torch.optim.lr_scheduler``                 ``torch.optim.lr_scheduler.LRScheduler``
``data``       ``clipdehaze.data``                          ``lightning.LightningDataModule``
=============  ===========================================  ==========================================

The package is checked on the string before anything is imported (importing a module runs its code), and the
class's own ``__module__`` must lie in those packages too, so a class that a module merely imports is refused.
A ``_target_`` anywhere else (generator, metrics ...) is refused: the project builds those by registered name.
Interpolations (``${...}``) are refused in every stored config, also in the parts nothing is built from (a run
config's ``seed``): stored configs are saved resolved, and resolving one from a file could read environment
variables. Of Hydra's other special keys (:data:`SPECIAL_KEYS`) none is allowed: no shipped config uses
``_partial_``, ``_args_``, ``_recursive_`` or ``_convert_``.

An allowed class is still asked for something by its arguments. :func:`check_arguments` refuses, in the sections
that will be built from the file:

* a download (:data:`DOWNLOAD_ARGS` set to anything but false/null, e.g. ``L1WithCR(download=True)``);
* a location (:func:`is_location_arg`: ``root``, ``cache_dir``, ``checkpoint``, ``weights_path``, a path given
  as CLIP ``pretrained`` ...) anywhere but inside the folders the caller names (the data folder, the cache and
  the run of the user's own config), and, where it names none (a checkpoint's hyper-parameters), any location at
  all: the user's config supplies caches and weights files (``clip=local clip.checkpoint=...``), never the file.

Sections the caller replaces with the user's own config (``clip=`` in eval, every section when resuming), and the
training-only ones a module built for inference never builds (``loss``, ``optimizer``, ``scheduler``:
:data:`clipdehaze.lit_module.TRAINING_ONLY_HPARAMS`), are not built from the file, so their arguments are not
checked; their targets still are.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ALLOWED_TARGETS", "DOWNLOAD_ARGS", "SPECIAL_KEYS", "UntrustedConfigError", "check_arguments",
           "check_config", "check_hparam_arguments", "check_hparams", "check_resolved", "is_location_arg"]


class UntrustedConfigError(ValueError):
    """A stored config names something outside the allow-list; the message names the file and the target."""


def _base(kind: str) -> type:
    import torch

    if kind == "optimizer":
        return torch.optim.Optimizer
    if kind == "scheduler":
        return torch.optim.lr_scheduler.LRScheduler
    if kind == "data":
        import lightning

        return lightning.LightningDataModule
    return torch.nn.Module


#: place -> (packages its targets may come from, what the message calls them).
ALLOWED_TARGETS: dict[str, tuple[tuple[str, ...], str]] = {
    "loss": (("clipdehaze.losses",), "a loss class from clipdehaze.losses"),
    "clip": (("clipdehaze.models.clip",), "the CLIP prior class from clipdehaze.models.clip"),
    "optimizer": (("torch.optim",), "an optimizer class from torch.optim"),
    "scheduler": (("torch.optim.lr_scheduler",), "a scheduler class from torch.optim.lr_scheduler"),
    "data": (("clipdehaze.data",), "a data module class from clipdehaze.data"),
}
#: Hydra's keys that change how ``instantiate`` calls a target; a stored config may hold ``_target_`` only.
SPECIAL_KEYS = frozenset({"_partial_", "_args_", "_recursive_", "_convert_"})
#: Arguments that let a built object fetch from the network; a stored config may set them only to false/null.
DOWNLOAD_ARGS = frozenset({"download"})
_WEIGHTS_ONLY = ("To use its weights anyway, build the model from the project's configs: model=<name> "
                 "weights_path=<this file>")
#: What to pass instead of a refused hyper-parameter section (the user's own config then supplies it).
_HPARAM_FIX = {"clip": "Pass clip=<name> (e.g. clip=local clip.checkpoint=<CLIP weights>) to supply the CLIP prior "
                       "yourself"}
_LOCATION_NAMES = frozenset({"root", "path", "file", "checkpoint"})
# Folder names taken inside a data module's root (``hazy``, ``GT``).
_SUBFOLDER_ARGS = frozenset({"input_dir", "target_dir"})
_LOCATION_SUFFIXES = ("_root", "_dir", "_path", "_file", "_list")


def is_location_arg(key: str, value: Any) -> bool:
    """Whether argument ``key=value`` names a file or folder: a key like ``root``, ``checkpoint``, ``*_dir``,
    ``*_path``, ``*_file``, ``*_list``, ``*_root`` with a value, or a CLIP ``pretrained`` that is a path rather
    than an open_clip tag (open_clip reads a path given there)."""
    if value is None:
        return False
    if key == "pretrained":
        text = str(value)
        return "/" in text or os.sep in text or text.startswith(("~", ".")) or os.path.exists(text)
    return key in _LOCATION_NAMES or key.endswith(_LOCATION_SUFFIXES)


def _inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _allowed(target: Any, kind: str) -> bool:
    if not isinstance(target, str):
        return False
    packages = ALLOWED_TARGETS[kind][0]
    module_name, _, name = target.rpartition(".")
    if not module_name or not name.isidentifier() or name.startswith("_") or not _inside(module_name, packages):
        return False
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    obj = getattr(module, name, None)
    return isinstance(obj, type) and _inside(obj.__module__, packages) and issubclass(obj, _base(kind))


def _refused(source: str | os.PathLike, what: str, fix: str) -> UntrustedConfigError:
    return UntrustedConfigError(f"{source}: {what}" + (f". {fix}" if fix else ""))


def check_config(cfg: Any, kind: str | None, source: str | os.PathLike, where: str, fix: str = "") -> None:
    """Refuse ``cfg`` (plain containers read from ``source``) unless every ``_target_`` in it is allowed for
    ``kind`` (a key of :data:`ALLOWED_TARGETS`; None: no target allowed), no other special key is set and no string
    interpolates.

    ``where`` is the key path of ``cfg`` in the file and ``fix`` the way around a refusal, for the message.
    """
    if isinstance(cfg, str):
        if "${" in cfg:
            raise UntrustedConfigError(
                f"{source}: {where} holds an interpolation {cfg!r}; stored configs are saved resolved, so this file "
                "was not written by clipdehaze and is refused")
        return
    if isinstance(cfg, Mapping):
        if "_target_" in cfg and (kind is None or not _allowed(cfg["_target_"], kind)):
            what = ALLOWED_TARGETS[kind][1] if kind else "nothing (it is built by registered name, not by _target_)"
            raise _refused(source, f"refusing to build {cfg['_target_']!r} named at {where}._target_; a stored "
                                   f"config may name only {what}", fix)
        if special := sorted(str(k) for k in cfg if k in SPECIAL_KEYS):
            raise _refused(source, f"refusing {where}.{special[0]}: a stored config may not set Hydra's "
                                   f"{', '.join(sorted(SPECIAL_KEYS))} (no clipdehaze config uses them)", fix)
        for key, value in cfg.items():
            check_config(value, kind, source, f"{where}.{key}", fix)
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_config(value, kind, source, f"{where}[{i}]", fix)


def check_resolved(cfg: Any, source: str | os.PathLike, where: str) -> None:
    """Refuse an interpolation anywhere in ``cfg``, a stored config that is read but not built (a run config's
    ``seed``, ``ema`` ...), naming ``source`` and the key."""
    if isinstance(cfg, str) and "${" in cfg:
        check_config(cfg, None, source, where)
    elif isinstance(cfg, Mapping):
        for key, value in cfg.items():
            check_resolved(value, source, f"{where}.{key}")
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_resolved(value, source, f"{where}[{i}]")


def _location_allowed(key: str, value: Any, roots: Sequence[Path] | None) -> bool:
    if not isinstance(value, (str, os.PathLike)):
        return False
    path = Path(os.path.expanduser(value))
    if key in _SUBFOLDER_ARGS or key.endswith("_list"):
        # Names inside the section's own root (itself checked): allowed when they cannot climb out of it.
        return not path.is_absolute() and ".." not in path.parts or roots is not None and _within(path, roots)
    return roots is not None and _within(path, roots)


def _within(path: Path, roots: Sequence[Path]) -> bool:
    path = Path(os.path.realpath(path if path.is_absolute() else Path.cwd() / path))
    return any(path == root or root in path.parents for root in (Path(os.path.realpath(r)) for r in roots))


def check_arguments(cfg: Any, source: str | os.PathLike, where: str, fix: str = "",
                    locations: Sequence[str | os.PathLike] | None = None) -> None:
    """Refuse downloads (:data:`DOWNLOAD_ARGS` not false/null) and locations (:func:`is_location_arg`) in ``cfg``,
    a config that is about to be built as read from ``source``: a location must lie inside one of ``locations``
    (after ``~``, ``..`` and symlinks are resolved; relative to the working directory), and with ``locations``
    None no location is allowed; only a sub-folder or list name taken inside the section's root (``input_dir``,
    ``*_list``) may be relative, without ``..``."""
    if isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_arguments(value, source, f"{where}[{i}]", fix, locations)
        return
    if not isinstance(cfg, Mapping):
        return
    roots = [Path(r) for r in locations] if locations is not None else None
    for key, value in cfg.items():
        key = str(key)
        if key in DOWNLOAD_ARGS and value not in (False, None):
            raise _refused(source, f"refusing {where}.{key}={value!r}: a stored config may not download anything",
                           fix)
        if is_location_arg(key, value) and not _location_allowed(key, value, roots):
            allowed = ("only inside " + ", ".join(str(r) for r in roots) if roots
                       else "none: the caches and weights files come from your own config")
            raise _refused(source, f"refusing {where}.{key}={value!r}: a stored config may not choose which files "
                                   f"are read or written (locations allowed: {allowed})", fix)
        check_arguments(value, source, f"{where}.{key}", fix, locations)


def check_hparams(hparams: Mapping[str, Any], source: str | os.PathLike) -> None:
    """:func:`check_config` for a training checkpoint's ``hyper_parameters``: each top-level key is the place of
    what it holds (``loss``, ``clip``, ``optimizer``; the scheduler config sits under ``scheduler.scheduler``)."""
    for key, value in hparams.items():
        check_config(value, key if key in ALLOWED_TARGETS and key != "data" else None, source,
                     f"hyper_parameters.{key}", _WEIGHTS_ONLY)


def check_hparam_arguments(hparams: Mapping[str, Any], source: str | os.PathLike,
                           supplied: Collection[str] = ()) -> None:
    """:func:`check_arguments` for the ``hyper_parameters`` sections about to be built from ``source``: all but
    the ``supplied`` ones, which the caller takes from the user's own config."""
    for key, value in hparams.items():
        if key not in supplied:
            check_arguments(value, source, f"hyper_parameters.{key}", _HPARAM_FIX.get(key, _WEIGHTS_ONLY))
