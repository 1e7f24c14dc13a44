"""Paired degraded/clean image datasets.

Two ways to describe the pairs:

* :class:`PairedImageDataset` — folders ``<root>/<split>/<input_dir>/`` and ``<root>/<split>/<target_dir>/``.
  File names are matched by :func:`match_pairs` through the namings registered in :mod:`clipdehaze.data.layouts`:
  the DehazeFormer layout (identical names), RESIDE's native naming (``hazy/0001_0.8_0.2.jpg`` -> ``GT/0001.png``;
  one GT serves many hazy inputs), Outdoor-Rain's native naming (``im_0001_s80_a04.png`` -> ``im_0001.png``) and
  NH-HAZE/O-HAZE tagged names (``01_hazy.png`` -> ``01_GT.png``).
* :class:`ListPairedDataset` — a text file of ``input target`` lines, or TransWeather-style single-column
  lists whose target path is the input path with its ``input`` folder replaced by ``gt``.

Modes follow DehazeFormer's ``datasets/loader.py``: ``train`` takes a random crop at the same position
in both images, then a random horizontal flip and ``rot90`` by a random k (``augment``); ``val`` takes
the centre crop (DehazeFormer's ``align``); ``test`` returns the full image. All randomness comes from
torch's global RNG, which ``lightning.seed_everything`` seeds in the main process and the DataLoader
seeds per worker from its generator, so crops are reproducible.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import Dataset

from clipdehaze.data.io import IMAGE_EXTENSIONS, Skipped, exif_orientation, load_image, scan_images
from clipdehaze.data.layouts import namings

__all__ = [
    "AUGMENTATIONS",
    "MODES",
    "FolderDataset",
    "ListPairedDataset",
    "PairedImageDataset",
    "augment_pair",
    "center_crop",
    "describe_skipped",
    "list_images",
    "match_pairs",
    "naming_examples",
    "orientation_mismatch",
    "pad_to_min_size",
    "random_crop",
]

AUGMENTATIONS = ("hflip", "vflip", "rot90")
MODES = ("train", "val", "test")

# How many offending file names an error message lists before summarising with a count.
_SHOWN = 5


def _preview(items: Sequence, n: int = _SHOWN) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else f" ({len(items)} in all)")


def describe_skipped(skipped: Sequence[Skipped], limit: int = 20) -> str:
    """``name (reason), ...`` for the first ``limit`` entries, then a count per reason for the rest."""
    text = ", ".join(str(s) for s in skipped[:limit])
    rest = Counter(s.reason for s in skipped[limit:])
    if rest:
        text += "; and " + ", ".join(f"{n} more: {reason}" for reason, n in rest.most_common())
    return text


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name. Every other entry (hidden or ``._`` file, broken
    symlink, folder, GIF, text file ...) is left out with one warning that names each and says why."""
    images, skipped = scan_images(folder)
    if skipped:
        what = "entry is not a readable image and was" if len(skipped) == 1 else \
            "entries are not readable images and were"
        warnings.warn(f"{folder}: {len(skipped)} {what} skipped: {describe_skipped(skipped)}", stacklevel=2)
    return images


def match_pairs(inputs: Sequence[Path], targets: Sequence[Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair each input with its target by file name; returns ``(pairs, unpaired_inputs)``.

    The pairing rules are the namings of :mod:`clipdehaze.data.layouts` (one registered function each, in the
    layout file that introduced it), tried in their ``order``; for each input the first that finds exactly one
    target wins (extensions are ignored throughout). Registered today:

    1. ``identical`` (DehazeFormer layout, Rain100L): ``hazy/0001.png`` -> ``GT/0001.png``;
    2. ``outdoor_rain``: the input stem without a trailing ``_s<N>_a<N>`` (Li et al. 2019):
       ``in/im_0001_s80_a04.png`` -> ``gt/im_0001.png``;
    3. ``reside``: the input stem's prefix before the first ``_`` (RESIDE, Haze4K):
       ``hazy/0001_0.8_0.2.jpg`` -> ``GT/0001.png``;
    4. ``ntire``: both are ``<id>_<tag>`` with a digit-free tag and the id names exactly one target
       (NH-HAZE, Dense-HAZE, O-HAZE, I-HAZE): ``hazy/01_hazy.png`` -> ``GT/01_GT.png``.

    A target may serve several inputs (RESIDE ITS has ten hazy images per GT). Two targets with the
    same stem (``0001.png`` and ``0001.jpg``) make the pairing ambiguous, and two inputs with the same stem
    would both pair with one target (the scene counted twice): both raise ValueError naming the files.
    """
    seen: dict[str, Path] = {}
    for i in inputs:
        if (first := seen.setdefault(i.stem, i)) is not i:
            raise ValueError(f"ambiguous inputs: {first} and {i} differ only in their extension, so both would pair "
                             "with one target and the scene would count twice; remove one of them")
    by_stem: dict[str, Path] = {}
    for t in targets:
        if t.stem in by_stem:
            raise ValueError(f"ambiguous targets: {by_stem[t.stem]} and {t} differ only in their extension; "
                             "remove one of them")
        by_stem[t.stem] = t
    rules = []
    for naming in namings():
        index: dict[str, list[Path]] = {}
        for t in targets:
            if (key := naming.target_key(t.stem)) is not None:
                index.setdefault(key, []).append(t)
        rules.append((naming.input_key, index))
    pairs, unpaired = [], []
    for i in inputs:
        for input_key, index in rules:
            key = input_key(i.stem)
            found = index.get(key, []) if key is not None else []
            if len(found) == 1:
                pairs.append((i, found[0]))
                break
        else:
            unpaired.append(i)
    return pairs, unpaired


def naming_examples() -> str:
    """The registered namings, for messages: ``identical: hazy/0001.png -> GT/0001.png ...; ...``."""
    return "; ".join(f"{n.name}: {n.example}" for n in namings())


def orientation_mismatch(input_path: Path, target_path: Path) -> str | None:
    """Why a pair may be misaligned by EXIF orientation tags, or None when both files carry the same one.

    Each image is read upright per its own tag, so a pair whose two files carry different tags has one of them
    rotated or mirrored against the other; a square pair passes the size check and scores silently misaligned.
    """
    a, b = exif_orientation(input_path), exif_orientation(target_path)
    if a == b:
        return None
    return (f"EXIF orientations differ within a pair: {input_path} has {a}, its target {target_path} has {b} "
            "(1 = upright); one of the two is read rotated or mirrored against the other. Save both upright "
            "without the tag (e.g. PIL.ImageOps.exif_transpose) so the pixels are aligned")


# ----------------------------------------------------------------------------------------------
# Paired transforms. They take a list of (C, H, W) tensors that share H and W and return the list
# transformed identically, so input and target stay pixel-aligned.


def pad_to_min_size(images: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Reflect-pad each image (evenly on both sides) so that both sides are at least ``size``.

    numpy's reflect mode is used because it keeps reflecting when the pad exceeds the image size,
    where ``torch.nn.functional.pad`` refuses.
    """
    h, w = images[0].shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return images
    widths = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    return [torch.from_numpy(np.pad(x.numpy(), widths, mode="reflect")) for x in images]


def _start(extent: int, size: int, edge_decay: float) -> int:
    # DehazeFormer's edge re-weighting: with probability size/extent*edge_decay the crop is pushed
    # to one of the two borders, which uniform sampling under-represents.
    if edge_decay > 0 and torch.rand(()).item() < size / extent * edge_decay:
        return 0 if torch.randint(2, ()).item() == 0 else extent - size
    return int(torch.randint(extent - size + 1, ()).item())


def random_crop(images: list[torch.Tensor], size: int, edge_decay: float = 0.0) -> list[torch.Tensor]:
    """The same random ``size`` x ``size`` window from every image (each at least ``size`` per side)."""
    h, w = images[0].shape[-2:]
    top, left = _start(h, size, edge_decay), _start(w, size, edge_decay)
    return [x[..., top:top + size, left:left + size] for x in images]


def center_crop(images: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """The central ``size`` x ``size`` window, offsets rounded down as in DehazeFormer's ``align``."""
    h, w = images[0].shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return [x[..., top:top + size, left:left + size] for x in images]


def augment_pair(images: list[torch.Tensor], ops: Sequence[str]) -> list[torch.Tensor]:
    """Random flips / rotation applied identically: hflip and vflip with p=0.5, rot90 by k ~ U{0..3}.

    ``("hflip", "rot90")`` is DehazeFormer's indoor augmentation, ``("hflip",)`` its outdoor one
    (``only_h_flip``: rotations are unnatural for outdoor scenes with sky at the top).
    """
    if "hflip" in ops and torch.randint(2, ()).item():
        images = [x.flip(-1) for x in images]
    if "vflip" in ops and torch.randint(2, ()).item():
        images = [x.flip(-2) for x in images]
    if "rot90" in ops:
        k = int(torch.randint(4, ()).item())
        if k:
            images = [torch.rot90(x, k, dims=(-2, -1)) for x in images]
    return images


# ----------------------------------------------------------------------------------------------


class _PairedDataset(Dataset):
    """Shared loading and mode-dependent cropping; subclasses only build ``self.pairs``."""

    pairs: list[tuple[Path, Path | None]]

    def __init__(
        self,
        *,
        mode: str,
        crop_size: int | None,
        augment: Sequence[str] | str | None,
        pad_if_smaller: bool,
        edge_decay: float,
        input_only: bool,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(augment, str):
            augment = (augment,)
        augment = tuple(augment or ())
        unknown = [a for a in augment if a not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; choose from {AUGMENTATIONS}")
        if crop_size is not None and crop_size < 0:
            raise ValueError(f"crop_size must be positive, or 0/None for full images; got {crop_size}")
        self.mode = mode
        self.crop_size = crop_size or None
        self.augment = augment
        self.pad_if_smaller = pad_if_smaller
        self.edge_decay = edge_decay
        self.input_only = input_only
        self.clip_cache = None
        self.clip_names: tuple[str, ...] = ()
        self._rng_key: tuple[int, int] | None = None
        self._orientation_checked: set[int] = set()

    def set_rng_epoch(self, seed: int, epoch: int) -> None:
        """Key train-mode crops/flips to (seed, epoch, index) instead of the global RNG (exact resume)."""
        self._rng_key = (int(seed), int(epoch))

    def attach_clip_cache(self, cache, names: Sequence[str]) -> None:
        """Serve ``names`` from a :class:`clipdehaze.models.clip.ClipCache` as ``sample["clip"]``.

        Global entries (text feature, embedding) are per file; a density map is cut from the full image's map
        with the same crop, flips and rotation as the image, so cached and image pixels stay aligned.
        """
        self.clip_cache, self.clip_names = cache, tuple(names)

    def input_paths(self) -> list[Path]:
        return [p for p, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def _crop(self, images: list[torch.Tensor], path: Path) -> list[torch.Tensor]:
        size = self.crop_size
        h, w = images[0].shape[-2:]
        if h < size or w < size:
            if not self.pad_if_smaller:
                raise ValueError(f"{path} is {w}x{h} (WxH), smaller than crop_size={size}; "
                                 "set pad_if_smaller=True to reflect-pad it or lower the crop size")
            images = pad_to_min_size(images, size)
        if self.mode == "train":
            return random_crop(images, size, self.edge_decay)
        return center_crop(images, size)

    def __getitem__(self, index: int) -> dict:
        input_path, target_path = self.pairs[index]
        images = [load_image(input_path)]
        if not self.input_only:
            target = load_image(target_path)
            if target.shape != images[0].shape:
                (_, ih, iw), (_, th, tw) = images[0].shape, target.shape
                raise ValueError(f"size mismatch: input {input_path} is {iw}x{ih} but target {target_path} "
                                 f"is {tw}x{th} (WxH)")
            images.append(target)
            if index not in self._orientation_checked:
                self._orientation_checked.add(index)
                if (msg := orientation_mismatch(input_path, target_path)) is not None:
                    warnings.warn(msg, stacklevel=2)
        n_images = len(images)
        clip, spatial = {}, []
        if self.clip_cache is not None:
            clip = self.clip_cache.sample_inputs(input_path, self.clip_names)
            spatial = [k for k, v in clip.items() if v.ndim == 3 and v.shape[-2:] == images[0].shape[-2:]]
            images += [clip[k] for k in spatial]  # cropped and augmented together with the image
        with torch.random.fork_rng(devices=[], enabled=self._rng_key is not None and self.mode == "train"):
            if self._rng_key is not None and self.mode == "train":
                seed, epoch = self._rng_key
                torch.manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + index) % 2**63)
            if self.mode != "test" and self.crop_size:
                images = self._crop(images, input_path)
            if self.mode == "train" and self.augment:
                images = augment_pair(images, self.augment)
        # Crops and flips are views; make each sample own compact memory before collation/pinning.
        images = [x.contiguous() for x in images]
        sample = {"input": images[0], "name": input_path.name, "index": index}
        if not self.input_only:
            sample["target"] = images[1]
        if clip:
            clip.update(zip(spatial, images[n_images:]))
            sample["clip"] = clip
        return sample


class PairedImageDataset(_PairedDataset):
    """Pairs from ``<root>/<split>/<input_dir>/`` and ``<root>/<split>/<target_dir>/`` (``split=None``: ``<root>/``).

    Args:
        root: dataset root.
        split: sub-folder such as ``"train"``/``"test"``, or None when the image folders sit in ``root``.
        input_dir, target_dir: folder names of degraded inputs and clean targets (``"rainy"``, ``"input"``, ...).
        mode: ``"train"`` (random crop + augmentation), ``"val"`` (centre crop) or ``"test"`` (full image).
        crop_size: square crop side for train/val; 0 or None keeps full images.
        augment: subset of :data:`AUGMENTATIONS`, train mode only.
        pad_if_smaller: reflect-pad images smaller than the crop; False raises an error naming the file.
        edge_decay: DehazeFormer's border re-weighting of train crop positions (0 = uniform).
        on_unpaired: ``"error"`` or ``"skip"`` (with a warning) for inputs without a target.
        input_only: read only ``input_dir`` (predict-style runs); samples then carry no ``"target"``.

    Samples are dicts ``{"input": (3,h,w), "target": (3,h,w), "name": input file name, "index": int}``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        input_dir: str = "hazy",
        target_dir: str = "GT",
        mode: str = "train",
        crop_size: int | None = 256,
        augment: Sequence[str] | str | None = ("hflip", "rot90"),
        pad_if_smaller: bool = True,
        edge_decay: float = 0.0,
        on_unpaired: str = "error",
        input_only: bool = False,
    ):
        super().__init__(mode=mode, crop_size=crop_size, augment=augment, pad_if_smaller=pad_if_smaller,
                         edge_decay=edge_decay, input_only=input_only)
        if on_unpaired not in ("error", "skip"):
            raise ValueError(f"on_unpaired must be 'error' or 'skip', got {on_unpaired!r}")
        self.root = Path(root)
        self.split = split
        self.base = self.root / split if split else self.root
        self.input_dir = self.base / input_dir
        self.target_dir = self.base / target_dir
        self._check_layout(input_dir, target_dir)

        inputs = list_images(self.input_dir)
        if not inputs:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {self.input_dir}")
        if input_only:
            self.pairs = [(p, None) for p in inputs]
            return
        targets = list_images(self.target_dir)
        pairs, unpaired = match_pairs(inputs, targets)
        if unpaired:
            msg = (f"{len(unpaired)} of {len(inputs)} input images in {self.input_dir} have no target in "
                   f"{self.target_dir} (paired by the namings {naming_examples()}): "
                   f"{_preview([p.name for p in unpaired])}")
            if on_unpaired == "error":
                raise ValueError(msg + "; pass on_unpaired='skip' to drop them")
            warnings.warn(msg + "; skipping them", stacklevel=2)
        if not pairs:
            raise ValueError(f"no input in {self.input_dir} pairs with a target in {self.target_dir}")
        self.pairs = pairs

    def _check_layout(self, input_dir: str, target_dir: str) -> None:
        needed = [self.input_dir] if self.input_only else [self.input_dir, self.target_dir]
        missing = [d for d in needed if not d.is_dir()]
        if not missing:
            return
        expected = (f"{self.base}/{input_dir}/" if self.input_only
                    else f"{self.base}/{input_dir}/ and {self.base}/{target_dir}/")
        where = self.base if self.base.is_dir() else self.root
        if where.is_dir():
            entries = sorted(e.name + ("/" if e.is_dir() else "") for e in where.iterdir())
            found = f"{where} contains: {_preview(entries, 10) if entries else 'nothing'}"
        else:
            found = f"{where} does not exist"
        if self.split and (self.root / input_dir).is_dir():
            found += f" ({input_dir}/ is directly in {self.root}: use split=None)"
        raise FileNotFoundError(f"expected paired folders {expected}; missing: "
                                f"{', '.join(str(d) for d in missing)}; {found}")


class FolderDataset(_PairedDataset):
    """The images directly in ``folder`` (sorted by name), without ground truth: samples have no ``target``.
    For scoring real photos with no-reference metrics (``clipdehaze-eval ... data=folder data.root=<folder>``)."""

    def __init__(self, folder: str | os.PathLike, *, mode: str = "test", pad_if_smaller: bool = True):
        super().__init__(mode=mode, crop_size=None, augment=None, pad_if_smaller=pad_if_smaller, edge_decay=0.0,
                         input_only=True)
        self.root = Path(folder)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={folder}: no such folder")
        self.pairs = [(p, None) for p in list_images(self.root)]
        if not self.pairs:
            raise FileNotFoundError(f"data.root={folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it")


class ListPairedDataset(_PairedDataset):
    """Pairs listed in a text file, paths relative to ``root``.

    Each non-empty, non-``#`` line is either ``input_path target_path`` or a single ``input_path``
    whose target is derived by replacing the path component ``gt_replace[0]`` with
    ``gt_replace[1]`` — TransWeather's ``allweather.txt`` convention (``/input/x.png`` ->
    ``/gt/x.png``). Unlike TransWeather's ``str.replace``, only a whole folder component is replaced,
    so a file name that happens to contain "input" is left alone. A leading ``/`` does not make a
    path absolute: TransWeather concatenates ``data_dir + line``, and so paths stay under ``root``.
    Paths cannot contain whitespace. ``list_file`` is looked up as given, then inside ``root``.

    Other arguments and the sample format are those of :class:`PairedImageDataset`.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        root: str | os.PathLike,
        mode: str = "train",
        crop_size: int | None = 256,
        augment: Sequence[str] | str | None = ("hflip", "rot90"),
        pad_if_smaller: bool = True,
        edge_decay: float = 0.0,
        gt_replace: Sequence[str] = ("input", "gt"),
        input_only: bool = False,
    ):
        super().__init__(mode=mode, crop_size=crop_size, augment=augment, pad_if_smaller=pad_if_smaller,
                         edge_decay=edge_decay, input_only=input_only)
        self.root = Path(root)
        list_path = Path(list_file)
        if not list_path.is_file() and (self.root / list_path).is_file():
            list_path = self.root / list_path
        if not list_path.is_file():
            raise FileNotFoundError(f"list file {list_file} not found (also looked in {self.root})")
        self.list_file = list_path
        old, new = gt_replace

        pairs: list[tuple[Path, Path | None]] = []
        for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
            cols = line.split()
            if not cols or cols[0].startswith("#"):
                continue
            if len(cols) > 2:
                raise ValueError(f"{list_path}:{lineno}: expected 'input [target]', got {len(cols)} columns: {line!r}")
            target = None
            if not input_only:
                target = cols[1] if len(cols) == 2 else _replace_component(cols[0], old, new, f"{list_path}:{lineno}")
                target = self._resolve(target)
            pairs.append((self._resolve(cols[0]), target))
        if not pairs:
            raise ValueError(f"{list_path} lists no images")
        missing = [p for pair in pairs for p in pair if p is not None and not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} files listed in {list_path} do not exist under {self.root}: "
                                    f"{_preview([str(p) for p in missing])}")
        self.pairs = pairs

    def _resolve(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")


def _replace_component(path: str, old: str, new: str, where: str) -> str:
    parts = PurePosixPath(path.lstrip("/")).parts
    if old not in parts:
        raise ValueError(f"{where}: cannot derive a target for {path!r}: no {old!r} folder to replace by {new!r}; "
                         "write 'input target' on the line instead")
    return str(PurePosixPath(*(new if p == old else p for p in parts)))
