"""The dataset writer: clean source photos -> ``<out>/<split>/{<input_dir>,<target_dir>}/`` pairs and a
``meta.json`` whose fingerprint hashes everything that determines the content; written into a temporary folder and
renamed into place, so an interrupted run never leaves a folder that looks complete.

Everything random is drawn from ``numpy.random.Generator`` instances derived from the seed and the
source/split names, so a seed reproduces the files byte for byte regardless of processing order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipdehaze.data.datasets import _preview
from clipdehaze.data.io import load_image, save_image
from clipdehaze.data.synth.kinds import DEGRADATIONS

log = logging.getLogger(__name__)

#: Part of the default dataset's directory name and of every meta.json: bump it whenever the recipe
#: or the generator changes output, so caches built by older code are not silently reused.
SYNTH_VERSION = "v1"


@dataclass(frozen=True)
class SplitRecipe:
    """How one split turns source photos into pairs.

    Attributes:
        crops: clean patches per source, each a random ``patch_size`` square taken after a random
            rescale by ``U(scale_range)`` (raised where needed so the patch fits); 0 uses the whole
            (resized) photo as the single clean image.
        patch_size: side of the patches when ``crops > 0``.
        scale_range: rescale factors for patches; < 1 lets a patch cover more of the scene.
        variants: degraded inputs per clean image (RESIDE ITS has 10 per GT).
        max_side: downscale each source first so its longer side is at most this (None: keep).
        multiple_of: centre-crop whole images so both sides are multiples of this, which lets
            generators with down-sampling stages run without padding.
    """

    crops: int = 0
    patch_size: int = 256
    scale_range: tuple[float, float] = (1.0, 1.0)
    variants: int = 1
    max_side: int | None = None
    multiple_of: int = 1

    def __post_init__(self) -> None:
        def whole(value: Any, least: int) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least

        problems = {
            "crops": None if whole(self.crops, 0) else "a whole number, 0 or more (0: the whole photo)",
            "patch_size": None if whole(self.patch_size, 1) else "a whole number of pixels, 1 or more",
            "variants": None if whole(self.variants, 1) else "a whole number, 1 or more (a clean image without a "
                                                             "degraded one gives no pair)",
            "max_side": None if self.max_side is None or whole(self.max_side, 1) else "a whole number of pixels, "
                                                                                      "1 or more (or None: keep)",
            "multiple_of": None if whole(self.multiple_of, 1) else "a whole number of pixels, 1 or more",
        }
        lo_hi = tuple(self.scale_range) if isinstance(self.scale_range, Sequence) else ()
        if not (len(lo_hi) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in lo_hi)
                and lo_hi[0] <= lo_hi[1]):
            problems["scale_range"] = "two positive factors LO <= HI"
        for name, need in problems.items():
            if need is not None:
                raise RecipeError(name, getattr(self, name), need)


class RecipeError(ValueError):
    """A :class:`SplitRecipe` field out of range; ``field`` names it (the CLI maps it to its flag)."""

    def __init__(self, field: str, value: Any, need: str) -> None:
        self.field, self.value, self.need = field, value, need
        super().__init__(f"{field}={value!r}: must be {need}")


# Fast zlib level: generation time is dominated by PNG encoding, and level 1 is ~4x faster than
# the default for ~10% larger files.
_PNG_LEVEL = 1

ImageSource = str | os.PathLike | np.ndarray | torch.Tensor


def _safe_name(name: str) -> str:
    # '_' separates the image id from the variant index in RESIDE naming, so it cannot appear in ids.
    return "-".join(name.replace("_", "-").split())


def _named_sources(sources: Mapping[str, ImageSource] | Sequence[ImageSource]) -> dict[str, ImageSource]:
    if isinstance(sources, Mapping):
        items = list(sources.items())
    else:
        items = [(Path(s).stem if isinstance(s, (str, os.PathLike)) else f"img{i:04d}", s)
                 for i, s in enumerate(sources)]
    named: dict[str, ImageSource] = {}
    for name, src in items:
        key = _safe_name(str(name))
        if key in named:
            raise ValueError(f"two sources are both named {key!r} (after replacing '_' and spaces by '-')")
        named[key] = src
    return named


def _as_float_rgb(src: ImageSource) -> np.ndarray:
    """HWC float32 RGB in [0, 1] from a path, a uint8/float HWC or HW array, or a CHW tensor."""
    if isinstance(src, (str, os.PathLike)):
        return load_image(src).permute(1, 2, 0).numpy()
    if isinstance(src, torch.Tensor):
        src = src.detach().cpu().permute(1, 2, 0).numpy() if src.ndim == 3 else src.detach().cpu().numpy()
    arr = np.asarray(src)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"source arrays must be HxWx3 RGB or HxW grey, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if (h, w) == img.shape[:2]:
        return img
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return x[0].clamp(0, 1).permute(1, 2, 0).numpy()


def _quantize(img: np.ndarray) -> np.ndarray:
    # Degrade the 8-bit clean image that is written to disk, so the saved pair obeys the model exactly
    # up to the rounding of the degraded image.
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


def _after_max_side(h: int, w: int, recipe: SplitRecipe) -> tuple[int, int]:
    if recipe.max_side and max(h, w) > recipe.max_side:
        f = recipe.max_side / max(h, w)
        return max(1, round(h * f)), max(1, round(w * f))
    return h, w


def _size_problem(h: int, w: int, recipe: SplitRecipe) -> str | None:
    """Why an ``h``x``w`` photo cannot give ``recipe``'s images (None: it can)."""
    rh, rw = _after_max_side(h, w, recipe)
    shown = f"{w}x{h}" + (f" ({rw}x{rh} after max_side={recipe.max_side})" if (rh, rw) != (h, w) else "")
    if recipe.crops == 0:
        if min(rh, rw) < recipe.multiple_of:
            return f"{shown} is smaller than multiple_of={recipe.multiple_of}"
    elif min(rh, rw) < recipe.patch_size:
        return f"{shown} is smaller than patch_size={recipe.patch_size}"
    return None


def _source_size(src: ImageSource) -> tuple[int, int] | None:
    """(H, W) of a source, read from the file's header for paths; None where the header cannot say (the full
    read later reports the file)."""
    if isinstance(src, (str, os.PathLike)):
        try:
            from PIL import Image

            with Image.open(src) as im:
                w, h = im.size
            return h, w
        except Exception:  # noqa: BLE001 - load_image names the file and the problem when it reads it
            return None
    shape = tuple(src.shape)
    return (shape[1], shape[2]) if isinstance(src, torch.Tensor) and len(shape) == 3 else (shape[0], shape[1])


def _check_sizes(named: Mapping[str, ImageSource], plan: Mapping[str, Sequence[str]],
                 recipes: Mapping[str, SplitRecipe]) -> None:
    """Every source too small for its split's recipe, named in one error before anything is written."""
    problems = []
    for split, members in plan.items():
        for name in members:
            size = _source_size(named[name])
            if size is not None and (problem := _size_problem(*size, recipes[split])) is not None:
                src = named[name]
                problems.append(f"{src if isinstance(src, (str, os.PathLike)) else name} ({split}): {problem}")
    if problems:
        sizes = sorted({r.patch_size for r in recipes.values() if r.crops})
        hint = (f"; pass a smaller --patch-size (patch_size, now {sizes[0]})" if any("patch_size" in p for p in problems)
                else "; leave these photos out")
        raise ValueError(f"{len(problems)} source photo(s) too small for the dataset's images{hint}: "
                         f"{_preview(problems, 20)}")


def _clean_images(img: np.ndarray, recipe: SplitRecipe, rng: np.random.Generator):
    """Yield ``(id_suffix, clean, crop_info)`` for one source photo under ``recipe``.

    ``crop_info``: ``resized_to`` [H, W] of the photo after ``max_side``, and ``box`` [top, left,
    height, width] of the window taken from it (patches resize that window to ``patch_size``).
    """
    h, w = _after_max_side(*img.shape[:2], recipe)
    if (problem := _size_problem(*img.shape[:2], recipe)) is not None:
        raise ValueError(problem)
    img = _resize(img, h, w)
    if recipe.crops == 0:
        m = recipe.multiple_of
        ch, cw = h - h % m, w - w % m
        top, left = (h - ch) // 2, (w - cw) // 2
        yield "", img[top:top + ch, left:left + cw], {"resized_to": [h, w], "box": [top, left, ch, cw]}
        return
    p = recipe.patch_size
    for i in range(recipe.crops):
        # A patch at scale s covers a (p / s)-pixel window of the photo; resizing only that window is
        # the same as rescaling the whole photo and then cropping, at a fraction of the cost.
        scale = max(float(rng.uniform(*recipe.scale_range)), p / min(h, w))
        win = min(round(p / scale), h, w)
        top, left = int(rng.integers(h - win + 1)), int(rng.integers(w - win + 1))
        patch = _resize(img[top:top + win, left:left + win], p, p)
        yield f"-c{i:03d}", patch, {"resized_to": [h, w], "box": [top, left, win, win]}


def _rng(seed: int, *names: str) -> np.random.Generator:
    # crc32, unlike hash(), is stable across processes, so the stream of each source depends only on
    # (seed, split, name) and not on the order in which sources are processed.
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def recipe_meta(kind: str, seed: int, config: Any, recipes: Mapping[str, SplitRecipe],
                plan: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Everything that determines a dataset's content, plus its hash (``fingerprint``)."""
    meta: dict[str, Any] = {
        "format": "clipdehaze-synthetic",
        "version": SYNTH_VERSION,
        "kind": kind,
        "seed": seed,
        "config": dataclasses.asdict(config),
        "recipes": {s: dataclasses.asdict(r) for s, r in recipes.items()},
        "splits": {s: list(m) for s, m in plan.items()},
    }
    blob = json.dumps(meta, sort_keys=True).encode()
    meta["fingerprint"] = hashlib.sha256(blob).hexdigest()[:16]
    return meta


def _plan_splits(names: list[str], splits: Mapping[str, Sequence[str]] | None, test_fraction: float,
                 seed: int) -> dict[str, list[str]]:
    if splits is None:
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
                or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction={test_fraction!r}: must be a share strictly between 0 and 1 (e.g. 0.25)")
        if len(names) < 2:
            raise ValueError("need at least two source images to make disjoint train and test splits")
        order = [names[i] for i in _rng(seed, "split").permutation(len(names))]
        n_test = min(len(names) - 1, max(1, round(test_fraction * len(names))))
        return {"train": sorted(order[n_test:]), "test": sorted(order[:n_test])}
    plan = {split: [_safe_name(n) for n in members] for split, members in splits.items()}
    seen: dict[str, str] = {}
    for split, members in plan.items():
        for n in members:
            if n not in names:
                raise ValueError(f"split {split!r} names source {n!r}, which is not among the sources {sorted(names)}")
            if n in seen:
                raise ValueError(f"source {n!r} is in both split {seen[n]!r} and split {split!r}; "
                                 "splits must be disjoint")
            seen[n] = split
    return plan


def synthesize_dataset(
    sources: Mapping[str, ImageSource] | Sequence[ImageSource],
    out_root: str | os.PathLike,
    *,
    splits: Mapping[str, Sequence[str]] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    kind: str = "haze",
    config: Any = None,
    recipe: SplitRecipe | Mapping[str, SplitRecipe] = SplitRecipe(),
    overwrite: bool = False,
) -> Path:
    """Write a paired dataset ``<out_root>/<split>/{<input_dir>,<target_dir>}/`` from clean source photos.

    The folders are the kind's (:data:`DEGRADATIONS`: ``hazy``/``GT`` for haze, ``input``/``gt`` for the
    weather kinds). Files use RESIDE's naming, which :func:`clipdehaze.data.datasets.match_pairs` pairs:
    ``GT/<id>.png`` with ``hazy/<id>_<k>.png`` for k < ``variants``; ``<id>`` is the source name
    (``_`` replaced by ``-``) plus ``-c<i>`` for patches. ``meta.json`` records the seed, version,
    configuration and every image's parameters.

    Args:
        sources: paths or arrays (HxWx3 uint8/float, or CHW tensors); a mapping gives them names,
            otherwise names are file stems or ``img0000``...
        splits: split -> source names. Sources in several splits are an error (test leakage).
            None: a seeded random split into ``train`` and ``test`` with ``test_fraction`` of the
            sources (at least one each).
        kind: key of :data:`DEGRADATIONS`; ``config`` is its config object (default: defaults).
        recipe: one :class:`SplitRecipe` for every split, or one per split name.
        overwrite: replace an existing ``out_root``, which must be empty or a dataset this function wrote holding
            nothing its ``meta.json`` does not list (anything else raises FileExistsError naming the files);
            without it an existing ``out_root`` raises FileExistsError. Source files inside ``out_root`` are
            refused either way (a ValueError), since replacing it would delete them.

    The dataset is built in a temporary sibling directory and renamed into place after meta.json is
    written, so an interrupted run never leaves a folder that looks complete; the next run removes the temporary
    folders that killed runs left (:func:`remove_stale_temps`).
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation kind {kind!r}; available: {sorted(DEGRADATIONS)}")
    degradation = DEGRADATIONS[kind]
    config = config if config is not None else degradation.config_type()
    out_root = Path(out_root)
    if out_root.exists() or out_root.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out_root} already exists; pass overwrite=True to replace it")
        _check_replaceable(out_root)
    named = _named_sources(sources)
    inside = [s for s in named.values() if isinstance(s, (str, os.PathLike)) and _is_within(Path(s), out_root)]
    if inside:
        raise ValueError(f"source {inside[0]} lies inside the output folder {out_root}; write the dataset elsewhere "
                         "so the sources are never replaced")
    plan = _plan_splits(sorted(named), splits, test_fraction, seed)
    recipes = {s: (recipe[s] if isinstance(recipe, Mapping) else recipe) for s in plan}
    meta = recipe_meta(kind, seed, config, recipes, plan)
    _check_sizes(named, plan, recipes)

    out_root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_root)
    tmp = out_root.parent / f".{out_root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        (tmp / _TEMP_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        pairs: dict[str, list[dict]] = {}
        for split, members in plan.items():
            pairs[split] = []
            in_dir, gt_dir = tmp / split / degradation.input_dir, tmp / split / degradation.target_dir
            for name in members:
                rng = _rng(seed, split, name)
                for suffix, clean, crop in _clean_images(_as_float_rgb(named[name]), recipes[split], rng):
                    clean = _quantize(clean)
                    gid = name + suffix
                    save_image(clean.transpose(2, 0, 1), gt_dir / f"{gid}.png", compress_level=_PNG_LEVEL)
                    for k in range(recipes[split].variants):
                        degraded, params = degradation.apply(clean, rng, config)
                        save_image(degraded.transpose(2, 0, 1), in_dir / f"{gid}_{k}.png",
                                   compress_level=_PNG_LEVEL)
                        pairs[split].append({"input": f"{degradation.input_dir}/{gid}_{k}.png",
                                             "target": f"{degradation.target_dir}/{gid}.png", "source": name,
                                             **crop, **params})
        meta["counts"] = {s: {"pairs": len(p), "targets": len({r["target"] for r in p})} for s, p in pairs.items()}
        meta["pairs"] = pairs
        # meta.json last: its presence is what marks the dataset as complete.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        (tmp / _TEMP_MARK).unlink()
        _move_into_place(tmp, out_root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_root


#: The file inside a dataset being generated that says which process on which host writes it.
_TEMP_MARK = ".clipdehaze-synth-in-progress"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def remove_stale_temps(out_root: Path) -> list[Path]:
    """Remove the temporary folders (``.<out>.tmp-<pid>-<id>``) that runs killed before finishing (SIGKILL, power
    loss) left beside ``out_root``: only folders holding this writer's mark, written on this host by a process that
    no longer exists; a folder of a run still going, of another host or without the mark is left alone."""
    removed = []
    for folder in sorted(out_root.parent.glob(f".{out_root.name}.tmp-*")):
        try:
            mark = json.loads((folder / _TEMP_MARK).read_text())
            pid, host = int(mark["pid"]), mark["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if folder.is_symlink() or not folder.name.startswith(f".{out_root.name}.tmp-{pid}-") \
                or host != socket.gethostname() or _alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed %s, the unfinished dataset of an interrupted run (process %d)", folder, pid)
        removed.append(folder)
    return removed


def _is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it, after resolving symlinks and ``..``."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_replaceable(out_root: Path) -> None:
    """Overwriting may remove only what this module wrote: an empty folder, or a dataset whose ``meta.json``
    lists every file in it. Anything else (a file, the user's photos, notes next to a dataset) is refused."""
    if not out_root.is_dir() or out_root.is_symlink():
        raise FileExistsError(f"{out_root} exists and is not a folder that a synthetic dataset was written to; "
                              "refusing to replace it: choose another output folder")
    if not any(out_root.iterdir()):
        return
    try:
        meta = json.loads((out_root / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != "clipdehaze-synthetic":
        raise FileExistsError(f"{out_root} is not a synthetic dataset written by clipdehaze (no meta.json of ours in "
                              "it), so overwriting it would delete files this tool did not write; choose another "
                              "output folder, or empty this one yourself")
    own = {Path("meta.json")} | {Path(split) / rec[key] for split, recs in meta.get("pairs", {}).items()
                                 for rec in recs for key in ("input", "target")}
    foreign = sorted(str(p) for p in out_root.rglob("*")
                     if (p.is_file() or p.is_symlink()) and p.relative_to(out_root) not in own)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise FileExistsError(f"{out_root} holds files its meta.json does not list ({shown}); overwriting would "
                              "delete them: move them out or choose another output folder")


def _move_into_place(tmp: Path, out_root: Path, overwrite: bool) -> None:
    old = None
    if overwrite and out_root.exists():
        _check_replaceable(out_root)  # again: files may have been added while the dataset was generated
        old = out_root.parent / f".{out_root.name}.old-{uuid.uuid4().hex[:8]}"
        out_root.rename(old)
    try:
        # rename() of a directory fails if the destination appeared meanwhile (another process
        # finished first); never merge two half-datasets.
        tmp.rename(out_root)
    except OSError as e:
        raise FileExistsError(f"{out_root} appeared while it was being generated") from e
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def is_dataset_complete(root: str | os.PathLike, fingerprint: str | None = None) -> bool:
    """True if ``root/meta.json`` exists (and matches ``fingerprint``) and every listed file is present."""
    meta_path = Path(root) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return False
    root = Path(root)
    return all((root / split / rec[key]).is_file()
               for split, recs in meta.get("pairs", {}).items() for rec in recs for key in ("input", "target"))
