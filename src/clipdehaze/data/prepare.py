"""``clipdehaze-data prepare <layout> <download> <out>``: an official download in our layout, by links.

The layout (:mod:`clipdehaze.data.layouts`) lists which files of the download go where; this module checks that
list and makes it, with the guarantees a dataset tool owes its user:

* **Checked first.** Every hazy image of each split must pair with a ground truth by the registered namings (the
  same :func:`~clipdehaze.data.datasets.match_pairs` the loaders use), and no two files may land on one name;
  otherwise nothing is written and the error names the files.
* **Links, not copies.** Each file becomes a symbolic link to the download (``--link symlink``, the default: no
  space used, the download must stay where it is), a hard link (``--link hardlink``: no space used, independent of
  the download's path, same file system only) or a copy (``--link copy``). Where the file system refuses a link
  (no symlinks on it, another device for a hard link), that file is copied, and the summary says how many and why.
* **Nothing of the user's is replaced.** A split folder that exists in ``<out>`` stops the run before anything is
  written, naming it; other contents of ``<out>`` are left alone (ITS then SOTS-indoor prepared into one folder
  make RESIDE-IN).
* **Atomic.** Everything is made in a temporary folder beside its destination and renamed into place at the end
  (the whole ``<out>`` when it is new, else each split folder): an interrupted run leaves no half-made split.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from clipdehaze.data.datasets import match_pairs, naming_examples
from clipdehaze.data.layouts import (
    INPUT_DIR,
    TARGET_DIR,
    Layout,
    LayoutMismatch,
    Link,
    describe_folder,
    get_layout,
    layouts,
)
from clipdehaze.utils.files import _UMASK

__all__ = ["LINK_MODES", "PrepareError", "PrepareReport", "known_layouts", "prepare_dataset"]

LINK_MODES = ("symlink", "hardlink", "copy")


class PrepareError(ValueError):
    """Why ``prepare`` made nothing: the message names the folder or files and the fix."""


@dataclass
class PrepareReport:
    """What ``prepare`` made: per split the hazy / GT counts, how each file was made, and what was left out."""

    layout: Layout
    source: Path
    out: Path
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    made: Counter = field(default_factory=Counter)
    fallback: str | None = None
    left_out: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"prepared {self.layout.title} (layout {self.layout.name}) from {self.source} into {self.out}:"]
        for split, n in sorted(self.splits.items()):
            lines.append(f"  {split}/: {n[INPUT_DIR]} hazy + {n[TARGET_DIR]} GT images "
                         f"({self.out / split / INPUT_DIR}, {self.out / split / TARGET_DIR})")
        how = {"symlink": "symbolic links to the download (keep it where it is; --link hardlink or copy do not "
                          "depend on it)",
               "hardlink": "hard links (no extra space; independent of the download's path)",
               "copy": "copies"}
        for mode, n in self.made.most_common():
            lines.append(f"  {n} files made as {how[mode]}")
        if self.fallback:
            lines.append(f"  copied instead of linked: {self.fallback}")
        if self.left_out:
            shown = ", ".join(p.name for p in self.left_out[:8]) + (" ..." if len(self.left_out) > 8 else "")
            lines.append(f"  left out (in no split): {len(self.left_out)} hazy images: {shown}")
        cfg = self.layout.data_config
        if cfg and self.layout.folder:
            lines.append(f"  data={cfg} reads ${{paths.data_dir}}/{self.layout.folder} (default ./data/"
                         f"{self.layout.folder}); elsewhere pass data.root={self.out}")
        elif cfg:
            lines.append(f"  read it with data={cfg} data.root={self.out}")
        lines.append(f"  check it: clipdehaze-data check {self.out}")
        return "\n".join(lines)


def known_layouts() -> str:
    """The registered layouts, one per line, for help texts and errors."""
    return "\n".join(f"  {lay.name:<13} {lay.title}: {lay.expected}" for lay in layouts())


def _candidates(source: Path) -> list[Path]:
    """The download folder, then the folder inside it when it holds nothing else (archives that extract to
    ``ITS/ITS_v2/...``)."""
    found = [source]
    while True:
        entries = [e for e in found[-1].iterdir() if not e.name.startswith((".", "__MACOSX"))]
        if len(entries) != 1 or not entries[0].is_dir():
            return found
        found.append(entries[0])


def _plan(layout: Layout, source: Path, options: dict) -> tuple[Path, list[Link]]:
    reasons = []
    for root in _candidates(source):
        try:
            links = layout.plan(root, **options)
        except LayoutMismatch as e:
            reasons.append(str(e))
            continue
        if links:
            return root, links
        reasons.append(f"no images in {root}")
    matching = []
    for other in layouts():
        if type(other) is type(layout):  # the same layout under another name cannot match either
            continue
        for root in _candidates(source):
            try:
                if other.plan(root):
                    matching.append(other.name)
                    break
            except (LayoutMismatch, ValueError):
                continue
    hint = (f" It looks like layout {', '.join(matching)}: clipdehaze-data prepare {matching[0]} {source} <out>."
            if matching else "")
    raise PrepareError(
        f"{source} is not a {layout.title} download ({layout.expected}): {reasons[-1]}. Found: "
        f"{describe_folder(source)}.{hint} Layouts known:\n{known_layouts()}")


def _check(links: list[Link]) -> dict[str, dict[str, int]]:
    """Per split, hazy/GT counts; a PrepareError when two files land on one name or a hazy image has no GT."""
    by_dest: dict[PurePosixPath, Path] = {}
    for link in links:
        if (other := by_dest.setdefault(link.dest, link.source)) != link.source:
            raise PrepareError(f"{other} and {link.source} would both become {link.dest}; keep one of them in the "
                               "download (they should be one image)")
    splits: dict[str, dict[str, list[Path]]] = {}
    for link in links:
        split, kind = link.dest.parts[0], link.dest.parts[1]
        splits.setdefault(split, {INPUT_DIR: [], TARGET_DIR: []})[kind].append(PurePosixPath(link.dest.name))
    for split, files in splits.items():
        try:
            _, unpaired = match_pairs([Path(p) for p in files[INPUT_DIR]], [Path(p) for p in files[TARGET_DIR]])
        except ValueError as e:
            raise PrepareError(f"{split}: {e}") from e
        if unpaired or not files[INPUT_DIR]:
            shown = ", ".join(p.name for p in unpaired[:5]) + (" ..." if len(unpaired) > 5 else "")
            raise PrepareError(f"{split}: {len(unpaired)} of {len(files[INPUT_DIR])} hazy images have no ground truth "
                               f"in the download ({shown or 'no hazy images'}); pairing by {naming_examples()}")
    return {s: {k: len(v) for k, v in files.items()} for s, files in splits.items()}


def _make(item: Link, root: Path, mode: str, report: PrepareReport) -> None:
    dest = root / item.dest
    src = item.source.resolve()
    if mode != "copy":
        try:
            if mode == "symlink":
                dest.symlink_to(src)
            else:
                os.link(src, dest)
            report.made[mode] += 1
            return
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EACCES,
                               errno.ENOSYS):
                raise
            report.fallback = report.fallback or (f"{'symbolic' if mode == 'symlink' else 'hard'} links are not "
                                                  f"possible from {dest.parent} to {src.parent} ({e.strerror})")
    shutil.copy2(src, dest)
    report.made["copy"] += 1


def prepare_dataset(layout_name: str, source: str | os.PathLike, out: str | os.PathLike, link: str = "symlink",
                    **options: str | None) -> PrepareReport:
    """Make ``<out>/<split>/{hazy,GT}/`` from the download ``source`` in layout ``layout_name``; see the module doc.
    ``options`` are the layout's (``test_ids="51-55"``); None values are left out."""
    if link not in LINK_MODES:
        raise PrepareError(f"--link {link}: choose one of {', '.join(LINK_MODES)}")
    try:
        layout = get_layout(layout_name)
    except KeyError as e:
        raise PrepareError(f"{e.args[0]}. Layouts known:\n{known_layouts()}") from None
    options = {k: v for k, v in options.items() if v is not None}
    if unknown := [k for k in options if k not in layout.options]:
        raise PrepareError(f"option(s) {', '.join('--' + k.replace('_', '-') for k in unknown)} do not apply to layout "
                           f"{layout.name}" + (f" (it takes {', '.join(layout.options)})" if layout.options else ""))
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise PrepareError(f"{source}: {'not a folder' if source.exists() else 'no such folder'} (the downloaded, "
                           "extracted dataset)")
    src_abs, out_abs = source.resolve(), out.resolve()
    if out_abs == src_abs or src_abs in out_abs.parents or out_abs in src_abs.parents:
        raise PrepareError(f"{out} and {source} overlap; write the prepared dataset outside the download")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out} is a file; <out> names the folder to make")
    try:
        root, links = _plan(layout, source, options)
    except ValueError as e:
        raise e if isinstance(e, PrepareError) else PrepareError(str(e)) from e
    counts = _check(links)
    splits = sorted(counts)
    if taken := [out / s for s in splits if (out / s).exists() or (out / s).is_symlink()]:
        raise PrepareError(f"{', '.join(str(t) for t in taken)} already exists; prepare never replaces a folder: "
                           f"move it away, or choose another <out>")
    report = PrepareReport(layout, root, out, splits=counts, left_out=layout.left_out(root, links))
    fresh = not out.exists()
    parent = out.parent if fresh else out
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.prepare-", dir=parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it 0700; renamed into place it must look like any folder
    try:
        for kind_dir in {PurePosixPath(*item.dest.parts[:2]) for item in links}:
            (tmp / kind_dir).mkdir(parents=True, exist_ok=True)
        for item in links:
            _make(item, tmp, link, report)
        if fresh:
            tmp.rename(out)
        else:
            for s in splits:
                (tmp / s).rename(out / s)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
