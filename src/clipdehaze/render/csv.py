"""CSV files that a spreadsheet opens as data: no cell is evaluated as a formula.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (``=HYPERLINK(...)`` in an image name is a link that runs on click). Following the
OWASP rule for CSV injection, such a text cell is written with a leading ``'``, which spreadsheets show as text.
So that the files still read back exactly (``per_image.csv`` is read by ``clipdehaze-compare``), a text cell that
itself starts with ``'`` gets one too, and :func:`read_cell` removes exactly one. Numbers are written as numbers
(a negative SSIM stays ``-0.1``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


def neutralise(cell: Any) -> Any:
    """A cell as it is written: text a spreadsheet would evaluate (or that starts with ``'``) prefixed with ``'``."""
    if isinstance(cell, str) and cell.startswith((*FORMULA_START, _QUOTE)):
        return _QUOTE + cell
    return cell


def read_cell(cell: str) -> str:
    """The text :func:`neutralise` was given."""
    return cell[1:] if cell.startswith(_QUOTE) else cell


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """``header`` and ``rows`` as CSV text, every cell through :func:`neutralise`."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow([neutralise(h) for h in header])
    for row in rows:
        w.writerow([neutralise(c) for c in row])
    return buf.getvalue()


def dicts_to_csv(fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    """Dicts (missing keys empty, extra keys ignored) as CSV text with ``fields`` as the header."""
    return to_csv(fields, ([r.get(f) for f in fields] for r in rows))


def read_dicts(text: Iterable[str]) -> list[dict[str, str]]:
    """The rows of a CSV written by :func:`to_csv`, cells restored."""
    return [{read_cell(k): read_cell(v) if isinstance(v, str) else v for k, v in r.items()}
            for r in csv.DictReader(text)]
