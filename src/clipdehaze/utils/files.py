"""Result files written atomically, most valuable first, with errors that name the path.

A file appears under its final name only once complete (temporary file in the same folder, then ``os.replace``),
so a crash or a full disk never leaves half a ``metrics.json`` behind, and an earlier complete version stays in
place until its replacement is whole.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

#: ``clipdehaze-train overwrite=true`` moves an earlier run's files into ``<run dir>/replaced-<time>/`` instead of
#: replacing them; clipdehaze-table does not count what lies below such a folder as a run.
REPLACED_PREFIX = "replaced-"
from typing import Any

__all__ = ["ResultWriteError", "atomic_write", "to_json", "write_in_order"]

# mkstemp creates 0600 files; results should get the permissions a plain open() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)


class ResultWriteError(OSError):
    """A result file that could not be written; the message names it (and, from :func:`write_in_order`, every
    other file of the run that was or was not written)."""


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``.

    ``durable`` also fsyncs before the rename, which is where a full disk reports itself on filesystems that
    allocate late; bulk writers (thousands of dataset images) skip it. Any OSError becomes a ResultWriteError
    naming ``path``, with the original errno.
    """
    p = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, p)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, ResultWriteError):
            raise ResultWriteError(e.errno, f"could not write {p}: {e.strerror or e}") from e
        raise
    return p


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """Strict JSON: NaN/Inf become ``null`` (Python's json would write the invalid tokens ``NaN``/``Infinity``);
    anything else json cannot encode is written as its ``str``."""
    return json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False, default=str) + "\n"


def write_in_order(files: Sequence[tuple[str | os.PathLike, Callable[[Path], Any]]]) -> list[Path]:
    """Call each ``(path, write)`` as ``write(path)`` in the given order (put the most valuable first).

    A failure does not stop the files after it (a smaller one may still fit on a full disk); at the end one
    ResultWriteError names every file not written and the ones that were. Returns the paths written.
    """
    written: list[Path] = []
    failed: list[tuple[Path, OSError]] = []
    for path, write in files:
        try:
            write(Path(path))
            written.append(Path(path))
        except OSError as e:
            failed.append((Path(path), e))
    if failed:
        lines = "; ".join(str(e) if str(p) in str(e) else f"could not write {p}: {e}" for p, e in failed)
        kept = f"; written: {', '.join(str(p) for p in written)}" if written else "; nothing was written"
        raise ResultWriteError(failed[0][1].errno, lines + kept) from failed[0][1]
    return written
