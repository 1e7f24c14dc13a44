"""Explicit generator registry.

Each architecture file decorates its factory functions (``dehazeformer_t``, ``mixdehazenet_s`` ...) with
:func:`register_generator`; ``clipdehaze.models.generators`` imports every architecture file by name (no
directory scanning), so one broken file fails loudly at import instead of silently vanishing.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_GENERATORS: dict[str, Callable[..., nn.Module]] = {}


def register_generator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    name = fn.__name__
    if name in _GENERATORS and _GENERATORS[name] is not fn:
        raise ValueError(f"generator {name!r} registered twice")
    _GENERATORS[name] = fn
    return fn


def _ensure_loaded() -> None:
    import clipdehaze.models.generators  # noqa: F401  (registers every architecture)


def list_generators() -> list[str]:
    """Sorted names of every registered generator factory."""
    _ensure_loaded()
    return sorted(_GENERATORS)


def create_generator(name: str, **kwargs) -> nn.Module:
    """Build a generator by registered name; ``kwargs`` override the variant's defaults."""
    _ensure_loaded()
    try:
        factory = _GENERATORS[name]
    except KeyError:
        valid = ", ".join(sorted(_GENERATORS))
        raise KeyError(f"unknown generator {name!r}; registered generators: {valid}") from None
    model = factory(**kwargs)
    model.generator_name = name
    return model


def clip_inputs_of(model: nn.Module) -> tuple[str, ...]:
    """Names of the keyword inputs a generator wants from the CLIP prior (empty for CLIP-free nets)."""
    return tuple(getattr(model, "clip_inputs", ()))
