"""A report as blocks, rendered by :mod:`.markdown` and :mod:`.html` alike.

Blocks: ``("h", level, inline)``, ``("p", inline)``, ``("warn", inline)``, ``("ul", [inline, ...])``,
``("table", header, rows)`` (cells are plain text). ``inline`` is a string (plain text) or a list of spans, each a
string or ``(style, text)`` with style ``b`` (bold), ``em`` or ``code``. Text is never markup: run names and paths
go in as they are, and each renderer escapes them, so a name cannot add a column, a tag or a link.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Union

Span = Union[str, tuple[str, str]]
Inline = Union[str, list[Span]]


def b(text: str) -> tuple[str, str]:
    return ("b", str(text))


def em(text: str) -> tuple[str, str]:
    return ("em", str(text))


def code(text: str) -> tuple[str, str]:
    return ("code", str(text))


def spans(inline: Inline) -> Iterator[tuple[str | None, str]]:
    """``(style or None, text)`` for each span of ``inline``."""
    for s in [inline] if isinstance(inline, str) else inline:
        yield (None, s) if isinstance(s, str) else s


def plain(inline: Inline) -> str:
    """The text of ``inline`` without styles (a page title)."""
    return "".join(t for _, t in spans(inline))
