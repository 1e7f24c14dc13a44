"""Prior controls: does the generator use what CLIP says about *this* image, or only that CLIP says something?

``clip_control`` (training and validation) and ``test_clip_control`` (the test pass; null: the same) replace the
CLIP inputs a generator receives (``text_feature``, ``image_embedding``, ``density_map``) per split:

``real``
    each image its own outputs (the default; unchanged behaviour).
``shuffled``
    each image the outputs of another image of the same split: a fixed derangement (a permutation without fixed
    points) of the split's sorted file list, drawn from the run's seed. It keeps the prior's distribution and
    removes its image-specific information. A density map is the donor's map stretched to the receiver's size.
``constant``
    every image the split's mean outputs: the mean text feature and image embedding, each renormalised to unit
    length as every served embedding is, and the mean density grid (each image's grid resampled bilinearly to the
    split's largest grid first), stretched to each image.
``zero``
    zeros of the same shapes.

**Cached and live give identical inputs by construction.** For a control other than ``real`` the served
values are always the per-image outputs on the *full* image that :class:`.cache.ClipCache` stores, from the
on-disk cache with ``clip_cache=true`` and from :class:`MemoryClipStore` (the same computation, kept in memory)
with ``clip_cache=false``; only ``real`` with ``clip_cache=false`` computes CLIP live on each training crop. So a
control's inputs never depend on the cache setting, and a training crop gets the crop of its (redirected,
averaged or zeroed) full-image map with the image's own flips and rotation (the data module applies them).

Controls act on the generator's inputs only: the SAR weather net's training-time distillation target (CLIP-SRD)
comes from the training pair itself under every control (its CLIP-free arm switches off both CWP and SRD).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clipdehaze.models.clip.cache import CACHEABLE, ClipCache, LoaderFn
from clipdehaze.models.clip.density import crop_density
from clipdehaze.models.clip.frozen import FrozenCLIP

__all__ = ["CONTROLS", "ControlledClipInputs", "MemoryClipStore", "PriorControl", "check_control", "derangement",
           "uncontrollable_inputs"]

CONTROLS = ("real", "shuffled", "constant", "zero")


def derangement(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` without fixed points, uniform over all such permutations, a function of
    ``(n, seed)`` only (rejection sampling: about e draws on average)."""
    if n < 2:
        raise ValueError(f"a shuffled prior needs at least 2 images in the split, got {n}")
    rng = np.random.default_rng(int(seed))
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm.tolist()


def check_control(value: Any, key: str, where: str = "") -> str:
    if value not in CONTROLS:
        raise ValueError(f"{key}={value!r}{where} is not a prior control; choose one of {', '.join(CONTROLS)}")
    return value


class MemoryClipStore(ClipCache):
    """:class:`.cache.ClipCache`'s per-image entries, computed the same way (full image), held in memory instead
    of on disk: what a controlled prior serves with ``clip_cache=false``."""

    def __init__(self, prior: FrozenCLIP, names: Sequence[str], loader_fn: LoaderFn | None = None) -> None:
        super().__init__("(memory)", prior, names, loader_fn)
        self._entries: dict[str, dict[str, Tensor]] = {}

    def _read(self, path: str | os.PathLike) -> tuple[dict[str, Tensor] | None, str | None]:
        entry = self._entries.get(self.content_hash(path))
        return (entry, None) if entry is not None else (None, "missing (not computed yet)")

    def _store(self, path: str | os.PathLike, entry: dict[str, Tensor]) -> None:
        self._entries[self.content_hash(path)] = entry


class ControlledClipInputs:
    """One split's CLIP inputs under a control, with :meth:`ClipCache.sample_inputs`'s interface (what the
    datasets call): ``store`` holds every image's full-image entry, ``paths`` are the split's input files."""

    def __init__(self, store: ClipCache, paths: Sequence[str | os.PathLike], control: str, seed: int) -> None:
        if check_control(control, "clip_control") == "real":
            raise ValueError("the real prior is served by the store itself")
        self.store, self.control, self.seed = store, control, int(seed)
        self.paths = [os.path.abspath(p) for p in paths]
        self._index = {p: i for i, p in enumerate(self.paths)}
        self.donors = derangement(len(self.paths), self.seed) if control == "shuffled" else None
        self._constant = self._mean_entry() if control in ("constant", "zero") else None

    def _mean_entry(self) -> dict[str, Tensor]:
        entries = [self.store.entry_for(p) for p in self.paths]
        out: dict[str, Tensor] = {}
        for key in ("text_feature", "image_embedding"):
            if key in entries[0]:
                out[key] = F.normalize(torch.stack([e[key] for e in entries]).mean(0), dim=-1)
        if "density_grid" in entries[0]:
            hw = (max(e["density_grid"].shape[-2] for e in entries), max(e["density_grid"].shape[-1] for e in entries))
            grids = [F.interpolate(e["density_grid"][None], size=hw, mode="bilinear", align_corners=False)[0]
                     for e in entries]
            out["density_grid"] = torch.stack(grids).mean(0)
        if self.control == "zero":
            out = {k: torch.zeros_like(v) for k, v in out.items()}
        return out

    def donor_of(self, path: str | os.PathLike) -> str:
        """The file whose outputs ``path`` receives under ``shuffled``."""
        try:
            i = self._index[os.path.abspath(path)]
        except KeyError:
            raise KeyError(f"{path} is not an image of the split this {self.control} prior was built for") from None
        return self.paths[self.donors[i]]

    def sample_inputs(self, path: str | os.PathLike, names: Sequence[str]) -> dict[str, Tensor]:
        """One image's generator inputs at its full size (the data module crops and flips the density map with
        the image), as :meth:`ClipCache.sample_inputs` gives them for ``real``."""
        own_hw = tuple(int(v) for v in self.store.entry_for(path)["image_hw"])
        if self.control == "shuffled":
            entry = self.store.entry_for(self.donor_of(path))
            grid_hw = tuple(int(v) for v in entry["image_hw"])
        else:
            entry, grid_hw = self._constant, own_hw
        out = {}
        for name in names:
            if name == "density_map" and "density_grid" in entry:
                out[name] = crop_density(entry["density_grid"], grid_hw, (0, 0, *grid_hw), own_hw)
            elif name in ("text_feature", "image_embedding") and name in entry:
                out[name] = entry[name]
            else:
                raise KeyError(f"{name!r} is not served under the {self.control} prior (served: "
                               f"{list(self.store.names)})")
        return out


@dataclass(frozen=True)
class PriorControl:
    """The controls of one run: ``fit`` for the training and validation splits, ``test`` for the test split, the
    derangement ``seed``."""

    fit: str = "real"
    test: str = "real"
    seed: int = 0

    def __post_init__(self) -> None:
        check_control(self.fit, "clip_control")
        check_control(self.test, "test_clip_control")

    @property
    def controlled(self) -> bool:
        return self.fit != "real" or self.test != "real"

    def record(self) -> dict[str, str]:
        """What ``metrics.json`` holds under ``clip_control``."""
        return {"train": self.fit, "test": self.test}

    def source(self, store: ClipCache, paths: Sequence[str | os.PathLike], mode: str,
               device: torch.device | str | None = None):
        """What a dataset of ``mode`` (train / val / test) serves as ``sample["clip"]``, with every entry it reads
        built first (on ``device``, where the module trains): the store (real, cached), None (real without the disk
        cache: computed live on each crop), or the controlled inputs."""
        control = self.test if mode == "test" else self.fit
        if control == "real" and isinstance(store, MemoryClipStore):
            return None
        store.build(paths, device=device)
        return store if control == "real" else ControlledClipInputs(store, paths, control, self.seed)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], train_config: Mapping[str, Any] | None = None,
                    source: str | None = None) -> "PriorControl":
        """A run's controls: ``clip_control`` of the training run (the checkpoint's for an evaluation; ``real`` for
        weights trained elsewhere), and ``test_clip_control`` of this run, else of the training run, else the
        training control. The derangement seed is the training run's. ``source`` names the file ``train_config``
        was read from, for the error about a value that is not a control."""
        trained = train_config if train_config is not None else cfg
        where = f" in the training config of {source}" if train_config is not None and source else ""
        fit = check_control(trained.get("clip_control") or "real", "clip_control", where)
        test = cfg.get("test_clip_control") or check_control(trained.get("test_clip_control") or fit,
                                                             "test_clip_control", where)
        return cls(fit, test, int(trained.get("seed", cfg.get("seed")) or 0))


def uncontrollable_inputs(names: Sequence[str]) -> list[str]:
    """CLIP inputs a control cannot replace (not stored per image: a crop's dense features are not a crop of the
    full image's)."""
    return [n for n in names if n not in CACHEABLE]
