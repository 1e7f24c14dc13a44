"""The generator registry: family name -> the callable that builds it. A leaf module: it imports no model.

An architecture file registers its network class (or a factory function) under the family name its variant file
uses (``dehazeformer.yaml`` names family ``dehazeformer``)::

    @register_generator("dehazeformer")
    class DehazeFormer(GeneratorBase): ...

Registration happens when the architecture file is imported; :func:`clipdehaze.models.create_generator` imports
the file that a family's variant file names (``module:``) before looking the family up here, so nothing imports
every architecture up front and nothing here knows any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["register_generator", "registered_builder"]

Builder = TypeVar("Builder", bound=Callable[..., Any])

_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_generator(family: str) -> Callable[[Builder], Builder]:
    """Decorator: register a class or factory as the builder of generator family ``family``."""
    if not family.isidentifier():
        raise ValueError(f"generator family name {family!r} must be a Python identifier (it prefixes variant names)")

    def register(builder: Builder) -> Builder:
        known = _BUILDERS.get(family)
        # The same definition executed again (a module imported anew) replaces itself; another one is a clash.
        if known is not None and _describe(known) != _describe(builder):
            raise ValueError(f"generator family {family!r} registered twice: {_describe(known)} and "
                             f"{_describe(builder)}")
        _BUILDERS[family] = builder
        return builder

    return register


def registered_builder(family: str) -> Callable[..., Any] | None:
    """The builder registered for ``family``, or None when no imported module registered it."""
    return _BUILDERS.get(family)


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
