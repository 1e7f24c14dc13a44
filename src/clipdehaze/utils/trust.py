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
Interpolations (``${...}``) are refused as well: stored configs are saved resolved, and resolving one from a
file could read environment variables.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["ALLOWED_TARGETS", "UntrustedConfigError", "check_config", "check_hparams"]


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


def check_config(cfg: Any, kind: str | None, source: str | os.PathLike, where: str, fix: str = "") -> None:
    """Refuse ``cfg`` (plain containers read from ``source``) unless every ``_target_`` in it is allowed for
    ``kind`` (a key of :data:`ALLOWED_TARGETS`; None: no target allowed) and no string interpolates.

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
            raise UntrustedConfigError(
                f"{source}: refusing to build {cfg['_target_']!r} named at {where}._target_; a stored config may "
                f"name only {what}" + (f". {fix}" if fix else ""))
        for key, value in cfg.items():
            check_config(value, kind, source, f"{where}.{key}", fix)
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_config(value, kind, source, f"{where}[{i}]", fix)


def check_hparams(hparams: Mapping[str, Any], source: str | os.PathLike) -> None:
    """:func:`check_config` for a training checkpoint's ``hyper_parameters``: each top-level key is the place of
    what it holds (``loss``, ``clip``, ``optimizer``; the scheduler config sits under ``scheduler.scheduler``)."""
    fix = "To use its weights anyway, build the model from the project's configs: model=<name> weights_path=<this file>"
    for key, value in hparams.items():
        check_config(value, key if key in ALLOWED_TARGETS and key != "data" else None, source,
                     f"hyper_parameters.{key}", fix)
