"""The default datasets: the photos bundled inside scikit-image (no download), degraded by one kind with the
default recipe, generated on first use into the cache and reused while their fingerprint matches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipdehaze.data.synth.kinds import DEGRADATIONS
from clipdehaze.data.synth.writer import (
    SYNTH_VERSION,
    SplitRecipe,
    is_dataset_complete,
    recipe_meta,
    synthesize_dataset,
)

#: Natural RGB photos that ship inside the scikit-image wheel. Others in ``skimage.data`` are
#: greyscale, microscopy/astronomy, or fetched with pooch on first use (lily, kidney, ...).
#: Train and test use disjoint photos; the test pair has outdoor sky (rocket) and fur (chelsea).
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "coffee", "motorcycle-left"),
    "test": ("chelsea", "rocket"),
}

#: Train: 24 random 256-px patches per photo with two haze draws each (144 pairs). Test: three haze
#: draws per photo, resized to 400 px on the long side and cropped to multiples of 16 (256x400).
DEFAULT_RECIPES: dict[str, SplitRecipe] = {
    "train": SplitRecipe(crops=24, patch_size=256, scale_range=(0.5, 1.0), variants=2),
    "test": SplitRecipe(crops=0, variants=3, max_side=400, multiple_of=16),
}


def default_sources() -> dict[str, np.ndarray]:
    """The default photos as HxWx3 uint8 arrays, keyed by name (all bundled with scikit-image)."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "motorcycle-left": data.stereo_motorcycle()[0],
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
    }


def default_cache_dir() -> Path:
    """``$CLIPDEHAZE_CACHE/datasets``, else ``$XDG_CACHE_HOME/clipdehaze/datasets`` (``~/.cache`` by default)."""
    if os.environ.get("CLIPDEHAZE_CACHE"):
        return Path(os.environ["CLIPDEHAZE_CACHE"]).expanduser() / "datasets"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "clipdehaze" / "datasets"


def default_dataset_dir(cache_dir: str | os.PathLike | None = None, seed: int = 0, kind: str = "haze") -> Path:
    """Where :func:`ensure_default_dataset` keeps the ``kind`` dataset for ``seed`` (the name carries the version)."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / f"synthetic_{kind}_{SYNTH_VERSION}_seed{seed}"


def ensure_default_dataset(cache_dir: str | os.PathLike | None = None, seed: int = 0, *,
                           root: str | os.PathLike | None = None, kind: str = "haze") -> Path:
    """Path of the default synthetic dataset of ``kind``, generating it on first use (a few seconds).

    It lives in ``root`` if given, else in :func:`default_dataset_dir` (``cache_dir`` or
    :func:`default_cache_dir`, directory name carrying the kind, :data:`SYNTH_VERSION` and the seed). Layout
    ``{train,test}/{<input_dir>,<target_dir>}/`` (``hazy``/``GT`` as in DehazeFormer for haze, ``input``/``gt``
    as in TransWeather's All-Weather for the weather kinds), with RESIDE naming; 144 train pairs (256-px
    patches) and 6 test pairs (256x400). ``kind="allweather"`` is the embedded all-weather default: each image
    gets one of haze, rain, snow or raindrop.

    A complete dataset whose meta.json matches this recipe and seed is reused; an incomplete or stale dataset
    written here is replaced, and a folder holding anything else is refused (FileExistsError naming the files).
    Safe against concurrent callers (several ranks or test workers): whoever finishes second discards its copy and
    uses the first one's.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation kind {kind!r}; available: {sorted(DEGRADATIONS)}")
    root = Path(root) if root is not None else default_dataset_dir(cache_dir, seed, kind)
    config = DEGRADATIONS[kind].config_type()
    fingerprint = recipe_meta(kind, seed, config, DEFAULT_RECIPES, DEFAULT_SPLITS)["fingerprint"]
    if is_dataset_complete(root, fingerprint):
        return root
    try:
        synthesize_dataset(default_sources(), root, splits=DEFAULT_SPLITS, seed=seed, kind=kind,
                           recipe=DEFAULT_RECIPES, overwrite=root.exists())
    except FileExistsError:
        if not is_dataset_complete(root, fingerprint):
            raise
    return root
