"""``clipdehaze-data``: make synthetic paired datasets, prepare downloaded ones, check dataset folders.

Each subcommand is one ``_add_<name>(subparsers)`` function that builds its parser and sets
``func``; adding a subcommand means writing one such function and listing it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from clipdehaze.data.clip_cache import _add_clip_cache
from clipdehaze.data.datasets import list_images, match_pairs, orientation_mismatch
from clipdehaze.data.io import ImageReadError, load_image, scan_images
from clipdehaze.data.synth import (
    DEFAULT_RECIPES,
    DEFAULT_SPLITS,
    DEGRADATIONS,
    DEPTH_PRIORS,
    default_dataset_dir,
    default_sources,
    RecipeError,
    ensure_default_dataset,
    synthesize_dataset,
)

__all__ = ["COMMANDS", "CheckReport", "build_parser", "check_dataset", "main"]


# ----------------------------------------------------------------------------------------------
# synth

# Flags that change the haze distribution or the recipe. With ``--default`` and none of them, the
# cached default dataset is produced; with any of them an explicit ``--out`` is required, so a
# customised dataset never masquerades as the default one in the cache.
_HAZE_FLAGS = {"beta": "beta_range", "A": "A_range", "A_color": "A_color", "nonhomogeneous": "nonhomogeneous",
               "depth": "depth_priors", "depth_range": "depth_range"}
_TRAIN_FLAGS = {"variants": "variants", "crops": "crops", "patch_size": "patch_size", "scale_range": "scale_range",
                "max_side": "max_side"}
_TEST_FLAGS = {"test_variants": "variants", "test_max_side": "max_side", "multiple_of": "multiple_of"}


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help="generate a synthetic paired dataset (haze, rain, snow, raindrop or all-weather)",
        description="Generate <out>/{train,test}/{<input>,<target>}/ from clean photos with RESIDE naming "
                    "(GT/<id>.png, hazy/<id>_<k>.png) and a meta.json of every image's parameters. Folders: "
                    "hazy/ + GT/ for --kind haze, input/ + gt/ (TransWeather's All-Weather layout) for rain, "
                    "snow, raindrop and allweather (one of haze/rain/snow/raindrop per image). "
                    "Unset options take the default dataset's recipe.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--default", action="store_true",
                     help="the scikit-image photos and fixed train/test split of the default dataset")
    src.add_argument("--source", type=Path, help="folder of clean images (split randomly by --test-fraction)")
    p.add_argument("--out", type=Path, help="output folder (optional with --default: the cache, "
                                            f"e.g. {default_dataset_dir()})")
    p.add_argument("--kind", default="haze", choices=sorted(DEGRADATIONS), help="degradation kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=_share, default=0.25,
                   help="share of --source images held out for test, strictly between 0 and 1")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out dataset that this tool wrote (refused if --out holds other files)")
    h = p.add_argument_group("haze, --kind haze only (defaults: HazeConfig)")
    h.add_argument("--beta", type=float, nargs=2, metavar=("LO", "HI"), help="scattering coefficient range")
    h.add_argument("--A", type=float, nargs=2, metavar=("LO", "HI"), help="atmospheric light range")
    h.add_argument("--A-color", type=float, help="max relative per-channel tint of A (0: grey)")
    h.add_argument("--nonhomogeneous", type=float, metavar="FRAC", help="fraction of non-homogeneous images")
    h.add_argument("--depth", nargs="+", choices=DEPTH_PRIORS, help="depth priors to draw from")
    h.add_argument("--depth-range", type=float, nargs=2, metavar=("LO", "HI"), help="depth values of the prior")
    r = p.add_argument_group("recipe (defaults: the default dataset's)")
    r.add_argument("--variants", type=int, help="hazy images per train GT")
    r.add_argument("--crops", type=int, help="train patches per source photo (0: whole photo)")
    r.add_argument("--patch-size", type=int, help="train patch side")
    r.add_argument("--scale-range", type=float, nargs=2, metavar=("LO", "HI"), help="train patch rescale range")
    r.add_argument("--max-side", type=int, help="downscale train photos to this longer side first")
    r.add_argument("--test-variants", type=int, help="hazy images per test GT")
    r.add_argument("--test-max-side", type=int, help="downscale test photos to this longer side")
    r.add_argument("--multiple-of", type=int, help="crop test images to multiples of this")
    p.set_defaults(func=_run_synth)


def _share(text: str) -> float:
    """argparse type of --test-fraction: a share strictly between 0 and 1 (0 or 1 would leave a split empty)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share strictly between 0 and 1 (e.g. 0.25: a quarter of "
                                         "the source photos go to the test split)")
    return value


def _run_synth(args: argparse.Namespace) -> int:
    customised = [f for f in (*_HAZE_FLAGS, *_TRAIN_FLAGS, *_TEST_FLAGS) if getattr(args, f) is not None]
    haze_flags = [f for f in _HAZE_FLAGS if getattr(args, f) is not None]
    if haze_flags and args.kind != "haze":
        print(f"error: haze options {haze_flags} apply to --kind haze only", file=sys.stderr)
        return 2
    start = time.perf_counter()
    if args.default and args.out is None:
        if customised:
            print(f"error: options {customised} change the default dataset; give --out", file=sys.stderr)
            return 2
        out = ensure_default_dataset(seed=args.seed, kind=args.kind)
    else:
        if args.out is None:
            print("error: --out is required with --source", file=sys.stderr)
            return 2
        haze = {cfg: tuple(v) if isinstance(v, list) else v
                for flag, cfg in _HAZE_FLAGS.items() if (v := getattr(args, flag)) is not None}
        recipes = dict(DEFAULT_RECIPES)
        for split, flags in (("train", _TRAIN_FLAGS), ("test", _TEST_FLAGS)):
            changes = {key: tuple(v) if isinstance(v, list) else v
                       for flag, key in flags.items() if (v := getattr(args, flag)) is not None}
            try:
                recipes[split] = dataclasses.replace(recipes[split], **changes)
            except RecipeError as e:
                flag = next(f for f, key in flags.items() if key == e.field)
                shown = " ".join(map(str, e.value)) if isinstance(e.value, tuple) else e.value
                print(f"error: --{flag.replace('_', '-')} {shown}: must be {e.need}", file=sys.stderr)
                return 2
        if args.default:
            sources, splits = default_sources(), DEFAULT_SPLITS
        else:
            if not args.source.is_dir():
                print(f"error: --source {args.source} is not a folder", file=sys.stderr)
                return 2
            src, out = args.source.resolve(), args.out.resolve()
            if out == src or src in out.parents or out in src.parents:
                print(f"error: --out {args.out} and --source {args.source} overlap; writing (or with --overwrite, "
                      "replacing) the dataset there would mix it with or delete the source photos: choose an --out "
                      "outside the source folder", file=sys.stderr)
                return 2
            sources, splits = list_images(args.source), None
        try:
            config = DEGRADATIONS[args.kind].config_type(**haze)
            out = synthesize_dataset(sources, args.out, splits=splits, test_fraction=args.test_fraction,
                                     seed=args.seed, kind=args.kind, config=config, recipe=recipes,
                                     overwrite=args.overwrite)
        except (ValueError, FileExistsError, ImageReadError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    counts = json.loads((out / "meta.json").read_text())["counts"]
    summary = ", ".join(f"{s}: {c['pairs']} pairs / {c['targets']} GT" for s, c in counts.items())
    print(f"{out}  ({summary}; {time.perf_counter() - start:.1f} s)")
    return 0


# ----------------------------------------------------------------------------------------------
# check


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`: one summary row per split, every problem found (each fails the check)
    and warnings (skipped junk files, EXIF orientation mismatches) that do not."""

    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) from the header alone, as it will be after EXIF orientation is applied."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            # Orientations 5-8 rotate by 90 degrees, swapping the sides.
            return (w, h) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (h, w)
    except Exception as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e


def _decoded_size(path: Path) -> tuple[int, int]:
    _, h, w = load_image(path).shape
    return h, w


def _find_splits(root: Path, input_dir: str) -> list[str | None]:
    if (root / input_dir).is_dir():
        return [None]
    return sorted(d.name for d in root.iterdir() if (d / input_dir).is_dir()) if root.is_dir() else []


def check_dataset(root: str | os.PathLike, splits: Sequence[str | None] | None = None, input_dir: str = "hazy",
                  target_dir: str = "GT", quick: bool = False, workers: int = 4) -> CheckReport:
    """Verify paired folders: every input has a target, every file decodes, pair sizes agree.

    ``splits`` None finds them: ``root`` itself if it holds ``input_dir``, else each sub-folder that
    does. ``quick`` reads only image headers (sizes), skipping the full decode that catches
    truncated files.
    """
    root = Path(root)
    report = CheckReport()
    if not root.is_dir():
        report.problems.append(f"{root}: {'not a folder' if root.exists() else 'does not exist'}")
        return report
    if splits is None:
        splits = _find_splits(root, input_dir)
        if not splits:
            report.problems.append(f"{root}: no {input_dir}/ folder in it or in any sub-folder (other input folder "
                                   "names: --input-dir)")
            return report
    size_of = _header_size if quick else _decoded_size
    for split in splits:
        base = root / split if split else root
        label = split or "."
        dirs = [base / input_dir, base / target_dir]
        missing = [d for d in dirs if not d.is_dir()]
        if missing:
            report.problems += [f"{d}: folder missing" for d in missing]
            continue
        (inputs, skipped_in), (targets, skipped_gt) = scan_images(dirs[0]), scan_images(dirs[1])
        for s in (*skipped_in, *skipped_gt):
            # A broken link or a folder named like an image is a file the dataset was meant to hold.
            broken = s.reason.startswith("broken symlink") or s.reason == "a folder named like an image"
            (report.problems if broken else report.warnings).append(f"{s.path}: skipped, {s.reason}")
        try:
            pairs, unpaired = match_pairs(inputs, targets)
        except ValueError as e:
            report.problems.append(f"{base}: {e}")
            continue
        if not pairs:
            report.problems.append(f"{base}: no pairs ({len(inputs)} image(s) in {input_dir}/, {len(targets)} in "
                                   f"{target_dir}/)")
        report.problems += [f"{p}: no target in {dirs[1]}" for p in unpaired]
        files = sorted({p for pair in pairs for p in pair} | set(unpaired))
        sizes: dict[Path, tuple[int, int]] = {}
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for path, result in zip(files, pool.map(_try(size_of), files), strict=True):
                if isinstance(result, ImageReadError):
                    report.problems.append(f"{path}: unreadable ({result.reason})")
                else:
                    sizes[path] = result
            rotated = pool.map(lambda pair: orientation_mismatch(*pair), pairs)
            report.warnings += [msg for msg in rotated if msg is not None]
        mismatched = 0
        for i, t in pairs:
            if i in sizes and t in sizes and sizes[i] != sizes[t]:
                mismatched += 1
                (ih, iw), (th, tw) = sizes[i], sizes[t]
                report.problems.append(f"{i}: size {iw}x{ih} differs from its target {t} ({tw}x{th}) (WxH)")
        input_sizes = [sizes[p] for p in inputs if p in sizes]
        used = {t for _, t in pairs}
        report.rows.append({
            "split": label,
            "inputs": len(inputs),
            "targets": len(targets),
            "pairs": len(pairs),
            "unpaired": len(unpaired),
            "skipped": len(skipped_in) + len(skipped_gt),
            "unused_targets": len(set(targets) - used),
            "unreadable": len(files) - len(sizes),
            "size_mismatch": mismatched,
            "sizes": _size_stats(input_sizes),
        })
    return report


def _try(fn: Callable[[Path], tuple[int, int]]) -> Callable[[Path], tuple[int, int] | ImageReadError]:
    def call(path: Path):
        try:
            return fn(path)
        except ImageReadError as e:
            return e
    return call


def _size_stats(sizes: list[tuple[int, int]]) -> str:
    if not sizes:
        return "-"
    hs, ws = [h for h, _ in sizes], [w for _, w in sizes]
    (mh, mw), n = Counter(sizes).most_common(1)[0]
    return f"W {min(ws)}-{max(ws)}, H {min(hs)}-{max(hs)}; most common {mw}x{mh} ({n})"


def _print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    for r in [dict(zip(cols, cols, strict=True)), *rows]:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="verify a paired dataset folder (pairs, readability, sizes)",
        description="Check <root>/<split>/<input-dir>/ against <target-dir>/: there are pairs, every input pairs "
                    "with exactly one target (no two files share a stem), every image decodes, paired sizes are "
                    "equal, no entry is a broken symlink or a folder named like an image. Prints a summary per "
                    "split and warnings (other skipped entries with the reason, pairs whose EXIF orientations "
                    "differ); exits with 1 and lists the problems (each naming its file) if there are any.")
    p.add_argument("root", type=Path)
    p.add_argument("--split", nargs="+", help="splits to check (default: root itself, or every sub-folder "
                                              "holding the input folder)")
    p.add_argument("--input-dir", help="default: the kind's folder recorded in <root>/meta.json (synthetic "
                                        "datasets), else hazy")
    p.add_argument("--target-dir", help="default: as --input-dir, else GT")
    p.add_argument("--quick", action="store_true", help="read headers only (sizes), skip decoding")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="reader threads")
    p.add_argument("--max-problems", type=int, default=50, help="problems (and warnings) printed; all are counted")
    p.set_defaults(func=_run_check)


def _default_dirs(root: Path) -> tuple[str, str]:
    """The input/target folders of a synthetic dataset (its meta.json names the kind), else hazy/GT."""
    try:
        kind = json.loads((root / "meta.json").read_text()).get("kind")
    except (OSError, ValueError):
        kind = None
    degradation = DEGRADATIONS.get(kind, DEGRADATIONS["haze"])
    return degradation.input_dir, degradation.target_dir


def _run_check(args: argparse.Namespace) -> int:
    input_dir, target_dir = _default_dirs(args.root)
    report = check_dataset(args.root, args.split, args.input_dir or input_dir, args.target_dir or target_dir,
                           args.quick, args.workers)
    _print_table(report.rows)
    if report.warnings:
        print(f"\n{len(report.warnings)} warning(s):")
        for line in report.warnings[:args.max_problems]:
            print(f"  {line}")
        if len(report.warnings) > args.max_problems:
            print(f"  ... and {len(report.warnings) - args.max_problems} more (--max-problems)")
    if report.ok:
        print(f"OK: {args.root}")
        return 0
    print(f"\n{len(report.problems)} problem(s):")
    for line in report.problems[:args.max_problems]:
        print(f"  {line}")
    if len(report.problems) > args.max_problems:
        print(f"  ... and {len(report.problems) - args.max_problems} more (--max-problems)")
    return 1


# ----------------------------------------------------------------------------------------------
# prepare


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from clipdehaze.data.layouts import layouts
    from clipdehaze.data.prepare import LINK_MODES, known_layouts

    p = sub.add_parser(
        "prepare", help="turn an official dataset download into <out>/{train,test}/{hazy,GT}/ (by links)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make <out>/<split>/{hazy,GT}/ from a downloaded, extracted dataset in its official layout, "
                    "with symbolic links (or hard links, or copies) to the download. Checks first that every hazy "
                    "image pairs with a ground truth; never replaces an existing split folder of <out>; builds in "
                    "a temporary folder renamed into place at the end; prints what it made.",
        epilog="layouts (clipdehaze.data.layouts; README: 'Adding a dataset layout'):\n" + known_layouts())
    p.add_argument("layout", choices=[lay.name for lay in layouts()], metavar="LAYOUT",
                   help="the download's layout: " + ", ".join(lay.name for lay in layouts()))
    p.add_argument("download", type=Path, help="the extracted download (or the folder holding only it)")
    p.add_argument("out", type=Path, help="the folder to make (e.g. data/RESIDE-IN); other contents stay")
    p.add_argument("--link", choices=LINK_MODES, default="symlink",
                   help="symlink (default; keep the download in place), hardlink (same file system) or copy; a "
                        "link the file system refuses becomes a copy, and the summary says so")
    p.add_argument("--test-ids", help="NTIRE sets: the image numbers of the test split (e.g. 51-55)")
    p.add_argument("--train-ids", help="NTIRE sets: the image numbers of the train split (e.g. 1-45)")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from clipdehaze.data.prepare import PrepareError, prepare_dataset

    start = time.perf_counter()
    try:
        report = prepare_dataset(args.layout, args.download, args.out, link=args.link, test_ids=args.test_ids,
                                 train_ids=args.train_ids)
    except (PrepareError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary() + f"\n  ({time.perf_counter() - start:.1f} s)")
    return 0


# ----------------------------------------------------------------------------------------------

#: Subcommand registrars, in ``--help`` order.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_synth, _add_check, _add_prepare,
                                                               _add_clip_cache]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipdehaze-data", description="Dataset tools for clipdehaze.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
