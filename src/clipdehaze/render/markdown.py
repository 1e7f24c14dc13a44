"""Markdown (GitHub-flavoured) from :mod:`.document` blocks, every piece of text escaped: a ``|`` cannot add a
column, ``<tag>`` and ``&entity;`` show as typed, a newline cannot end a row, ``[a](b)`` is neither a link nor an
image, and ``*`` / backticks do not start a style."""

from __future__ import annotations

import re

from clipdehaze.render.document import Inline, spans

_SPECIAL = {"\\": "\\\\", "|": "\\|", "*": "\\*", "`": "\\`", "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ",
            "\r": " "}


def escape(text: object) -> str:
    """Plain text as Markdown that shows the same characters, on one line."""
    out = "".join(_SPECIAL.get(c, c) for c in str(text).replace("\r\n", "\n"))
    return out.replace("](", "\\](")  # a link or image needs "](" (a bracket alone, as in "[1.2, 3.4]", is text)


def inline(text: Inline) -> str:
    out = []
    for style, t in spans(text):
        if style == "code":  # a code span shows its text literally; its fence is longer than any backtick run in it
            t = " ".join(t.splitlines())
            fence = "`" * (max((len(r) for r in re.findall(r"`+", t)), default=0) + 1)
            out.append(f"{fence} {t} {fence}" if "`" in t else f"`{t}`")
        elif style == "b":
            out.append(f"**{escape(t)}**")
        elif style == "em":
            out.append(f"*{escape(t)}*")
        else:
            out.append(escape(t))
    return "".join(out)


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(escape(c) for c in r) + " |" for r in rows)]


def render(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for kind, *rest in blocks:
        if kind == "h":
            lines += ["#" * rest[0] + " " + inline(rest[1]), ""]
        elif kind in ("p", "warn"):
            lines += [inline(rest[0]), ""]
        elif kind == "ul":
            lines += [f"- {inline(item)}" for item in rest[0]] + [""]
        elif kind == "table":
            lines += table(*rest) + [""]
        else:
            raise ValueError(f"unknown block {kind!r}")
    return "\n".join(lines)
