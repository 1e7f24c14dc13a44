"""The dataset layout registry: how file names pair (namings) and how downloads map onto our folders (layouts).

A leaf module (it imports nothing of the layouts), as timm's ``_registry.py``. Each layout file
(``clipdehaze/data/layouts/<name>.py``) registers what it knows, the way BasicSR's ``DATASET_REGISTRY`` makes a
dataset one registered file; :mod:`clipdehaze.data.layouts` imports them by name (no directory scanning).

* A **naming** says how an input file name finds its target: ``@register_naming(name, order=..., example=...)`` on
  a function ``input stem -> key``; a target whose ``target_key(stem)`` equals that key (exactly one) is its pair.
  :func:`clipdehaze.data.datasets.match_pairs` tries the namings in ``order`` and takes the first that pairs.
* A **layout** says how an official download is laid out and which of its files become
  ``<out>/<split>/{hazy,GT}/<name>`` for ``clipdehaze-data prepare <layout> <download> <out>``:
  ``@register_layout(name, title=..., data_config=..., folder=..., expected=..., source=...)`` on a
  :class:`Layout` subclass (stack the decorator to register one class under several names).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, TypeVar

from clipdehaze.data.io import IMAGE_EXTENSIONS

__all__ = ["INPUT_DIR", "Layout", "LayoutMismatch", "Link", "Naming", "TARGET_DIR", "describe_folder", "get_layout",
           "image_id", "images_below", "layouts", "namings", "register_layout", "register_naming", "subfolder"]

#: The folder names ``prepare`` writes (DehazeFormer's, the data configs' defaults).
INPUT_DIR, TARGET_DIR = "hazy", "GT"


# ----------------------------------------------------------------------------------------------------- namings
@dataclass(frozen=True)
class Naming:
    """A pairing rule: ``input_key(input stem)`` must equal ``target_key(target stem)`` (None: no key)."""

    name: str
    order: int
    input_key: Callable[[str], str | None]
    target_key: Callable[[str], str | None]
    example: str
    module: str


_NAMINGS: dict[str, Naming] = {}
KeyFn = TypeVar("KeyFn", bound=Callable[[str], "str | None"])


def _same(stem: str) -> str:
    return stem


def register_naming(name: str, *, order: int, example: str,
                    target_key: Callable[[str], str | None] | None = None) -> Callable[[KeyFn], KeyFn]:
    """Decorator on ``input stem -> key``: register naming ``name``, tried in ascending ``order`` (lower first);
    ``target_key`` maps target stems to keys (default: the stem itself)."""
    def register(fn: KeyFn) -> KeyFn:
        naming = Naming(name, order, fn, target_key or _same, example, fn.__module__)
        known = _NAMINGS.get(name)
        if known is not None and known.module != naming.module:
            raise ValueError(f"naming {name!r} registered twice: in {known.module} and {naming.module}")
        if clash := next((n for n in _NAMINGS.values() if n.order == order and n.name != name), None):
            raise ValueError(f"namings {clash.name!r} and {name!r} share order {order}; the order decides which "
                             "pairs first, so give each its own")
        _NAMINGS[name] = naming
        return fn

    return register


def namings() -> list[Naming]:
    """Every registered naming, in the order :func:`~clipdehaze.data.datasets.match_pairs` tries them."""
    return sorted(_NAMINGS.values(), key=lambda n: n.order)


# ----------------------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Link:
    """One file of a prepared dataset: ``source`` (in the download) appears as ``<out>/<dest>``."""

    source: Path
    dest: PurePosixPath


class LayoutMismatch(ValueError):
    """A folder is not in the layout asked for; the message says what was expected."""


class Layout:
    """How one official download is laid out. Subclasses implement :meth:`plan`; the registration sets the rest.

    Attributes (set by :func:`register_layout`):
        name: ``clipdehaze-data prepare <name>``.
        title: the dataset as its paper calls it.
        data_config: the data config that reads the result (``data=<data_config>``).
        folder: where that config reads it, under ``paths.data_dir`` (``prepare`` suggests ``data/<folder>``).
        expected: the download's layout in one line, for the help and the errors.
        source: where the folder and file names come from (a repository, a paper, or "assumed: ...").
        options: the ``plan`` keyword options it takes (``test_ids``).
    """

    #: Splits the layout can write; ``prepare`` refuses an ``<out>`` that already has one of those it writes.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: Already our layout (the data configs read such a download as it is), so never "an official download to
    #: prepare" in a data config's error.
    ours: ClassVar[bool] = False

    def __init__(self, name: str, *, title: str, data_config: str | None, folder: str | None, expected: str,
                 source: str, options: Sequence[str] = (), **settings: Any) -> None:
        self.name, self.title, self.data_config, self.folder = name, title, data_config, folder
        self.expected, self.source, self.options = expected, source, tuple(options)
        self.settings = settings

    def plan(self, root: Path, **options: Any) -> list[Link]:
        """The files of ``root`` (a download in this layout) and where each goes; a LayoutMismatch when ``root``
        is not in this layout."""
        raise NotImplementedError

    def left_out(self, root: Path, links: list[Link]) -> list[Path]:
        """Hazy images of the download that :meth:`plan` put in no split (listed by ``prepare``'s summary)."""
        return []

    def __repr__(self) -> str:
        return f"<layout {self.name}: {self.title}>"


_LAYOUTS: dict[str, Layout] = {}
LayoutType = TypeVar("LayoutType", bound=type)


def register_layout(name: str, **meta: Any) -> Callable[[LayoutType], LayoutType]:
    """Class decorator: register ``cls(name, **meta)`` as layout ``name`` (see :class:`Layout` for ``meta``)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"layout name {name!r}: lower-case letters, digits and '_' (it is typed on the command line)")

    def register(cls: LayoutType) -> LayoutType:
        known = _LAYOUTS.get(name)
        if known is not None and type(known).__module__ != cls.__module__:
            raise ValueError(f"layout {name!r} registered twice: in {type(known).__module__} and {cls.__module__}")
        _LAYOUTS[name] = cls(name, **meta)
        return cls

    return register


def layouts() -> list[Layout]:
    """Every registered layout, by name."""
    return [_LAYOUTS[k] for k in sorted(_LAYOUTS)]


def get_layout(name: str) -> Layout:
    if name not in _LAYOUTS:
        raise KeyError(f"unknown dataset layout {name!r}; known: {', '.join(sorted(_LAYOUTS))}")
    return _LAYOUTS[name]


# ----------------------------------------------------------------------------------------------------- helpers
def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def images_below(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders (RESIDE OTS splits its hazy images into part folders), sorted
    by path; hidden and ``._`` files are not images."""
    return sorted(p for p in folder.rglob("*") if _is_image(p) and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def subfolder(root: Path, names: Iterable[str]) -> Path | None:
    """The sub-folder of ``root`` whose name is one of ``names``, compared case-insensitively (downloads spell
    ``GT``, ``gt``, ``Gt``); None when there is none. Two candidates are an error naming both."""
    wanted = {n.lower() for n in names}
    found = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in wanted] if root.is_dir() else []
    if len(found) > 1:
        raise LayoutMismatch(f"{root} holds both {found[0].name}/ and {found[1].name}/; keep the one that holds the "
                             "images")
    return found[0] if found else None


_ID = re.compile(r"^(\d+)")


def image_id(path: Path) -> int | None:
    """The image number at the start of a file name (``01_hazy.png`` -> 1), None without one."""
    m = _ID.match(path.name)
    return int(m.group(1)) if m else None


def describe_folder(root: Path, limit: int = 12) -> str:
    """What a folder holds, for errors: each top-level entry, a folder with its image count (all depths) and its
    sub-folders, then a count of the rest."""
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        return f"{root} is a file, not a folder"
    entries = sorted(root.iterdir())
    shown = []
    for e in entries[:limit]:
        if e.is_dir():
            subs = sorted(d.name + "/" for d in e.iterdir() if d.is_dir())
            inner = f"{len(images_below(e))} images"
            if subs:
                inner += f", sub-folders {', '.join(subs[:4])}{' ...' if len(subs) > 4 else ''}"
            shown.append(f"{e.name}/ ({inner})")
        else:
            shown.append(e.name)
    more = f", and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{root} holds {', '.join(shown) if shown else 'nothing'}{more}"
