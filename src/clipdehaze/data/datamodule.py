"""LightningDataModules over paired folders and over the embedded synthetic haze / all-weather datasets.

Constructor arguments are plain types so the modules are built from Hydra configs
(``conf/data/*.yaml``) and their hyper-parameters land in checkpoints as plain data.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from clipdehaze.data.datasets import ListPairedDataset, PairedImageDataset
from clipdehaze.data.synth import DEGRADATIONS, default_dataset_dir, ensure_default_dataset

log = logging.getLogger(__name__)

__all__ = ["PairedDataModule", "SUBSET_PICKS", "SyntheticHazeDataModule", "SyntheticWeatherDataModule", "seed_worker",
           "subset_of"]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    The DataLoader already gives each worker a distinct torch seed derived from its generator;
    this extends it to numpy and ``random`` (the recipe in PyTorch's reproducibility notes), so a
    transform using either is as reproducible as the torch-based crops.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochSeededSampler(Sampler[int]):
    """Shuffles with an order that is a function of (seed, epoch) only, and keys the dataset's random crops /
    flips to (seed, epoch, index) through ``set_rng_epoch``.

    Lightning calls ``set_epoch`` before each training epoch, so a run resumed from an epoch-end checkpoint
    replays the interrupted epoch exactly: same order, same crops, whatever the global RNG did before (a
    resumed process does not get the global RNG state back). Under DDP, Lightning wraps this sampler in a
    distributed one that shuffles by itself.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        base = getattr(self.dataset, "dataset", self.dataset)  # subset_of wraps in a Subset
        if hasattr(base, "set_rng_epoch"):
            base.set_rng_epoch(self.seed, self.epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        return iter(torch.randperm(len(self.dataset), generator=g).tolist())


#: How ``max_*_samples`` picks its images from a split's sorted list.
SUBSET_PICKS = ("even", "first")


def subset_of(dataset: Dataset, n: int | None, pick: str = "even") -> Dataset:
    """``n`` samples of ``dataset`` (the whole dataset if ``n`` is None or not smaller), picked from its sorted list:
    ``"even"`` takes the first, the last and evenly spaced ones between, ``"first"`` the first ``n``.

    Evenly spaced is the default: in RESIDE-style folders consecutive files are variants of one scene (ITS has ten
    hazy images per scene, SOTS-indoor ten per GT), so the first 100 SOTS-indoor images are 10 scenes, while 100
    evenly spaced ones are 50.
    """
    total = len(dataset)
    if n is None or n >= total:
        return dataset
    if n <= 0:
        raise ValueError(f"a sample limit must be positive or None, got {n}")
    if pick == "first":
        return Subset(dataset, list(range(n)))
    indices = sorted({round(i * (total - 1) / max(n - 1, 1)) for i in range(n)})
    return Subset(dataset, indices)


def _entries(folder: Path, limit: int = 10) -> str:
    entries = sorted(e.name + ("/" if e.is_dir() else "") for e in folder.iterdir())
    shown = ", ".join(entries[:limit]) + (f", ... ({len(entries)} in all)" if len(entries) > limit else "")
    return f"{folder} holds {shown or 'nothing'}"


def _official_download(folder: Path) -> str:
    """The name of the first registered download layout ``folder`` is in (for a hint), '' when none."""
    from clipdehaze.data.layouts import LayoutMismatch, layouts

    for layout in layouts():
        if layout.ours:
            continue
        try:
            if layout.plan(folder):
                return layout.name
        except (LayoutMismatch, ValueError, OSError):
            continue
    return ""


_MEANING = {
    "batch_size": "the number of training images per step, e.g. data.batch_size=8",
    "val_batch_size": "the number of validation images per step, e.g. data.val_batch_size=1",
    "num_workers": "0 (load in the main process) or the number of loader processes, e.g. data.num_workers=2",
    "crop_size": "the side of the square training crop in pixels, or 0 for whole images",
    "val_crop_size": "the side of the validation centre crop, 0 for whole images or null for crop_size",
    "max_train_samples": "a positive number of images, or null for all",
    "max_val_samples": "a positive number of images, or null for all",
    "max_test_samples": "a positive number of images, or null for all",
    "subset": "even (evenly spaced across the sorted list) or first (the first max_*_samples)",
}


def _check_counts(**options: tuple[int | None, int]) -> None:
    """Each ``name=(value, minimum)`` is None (where that means something) or an integer >= minimum; otherwise a
    ValueError naming ``data.<name>`` and what it means, before any folder is read or loader started."""
    for name, (value, minimum) in options.items():
        if name == "subset":
            if value not in SUBSET_PICKS:
                raise ValueError(f"data.subset={value!r} is invalid: it must be {_MEANING[name]}")
            continue
        if value is None and name not in ("batch_size", "val_batch_size", "num_workers"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"data.{name}={value!r} is invalid: it must be {_MEANING[name]}")


class PairedDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``<root>/<split>/<input_dir>/`` + ``<target_dir>/`` (or list files).

    Args:
        root: dataset root (see :class:`clipdehaze.data.datasets.PairedImageDataset` for layouts).
        name: dataset name, used as the suffix of logged test keys (``test/psnr_<name>``).
        train_split, val_split, test_split: sub-folders; ``val_split=None`` validates on ``test_split``
            (DehazeFormer has no separate validation set). A split of ``""`` means ``root`` itself, and so does a
            test split of None; ``train_split=None`` (without ``train_list``) makes a test-only set, which refuses
            to train. A test/validation split folder that does not exist, in a ``root`` that holds
            ``input_dir``/``target_dir`` directly, is read from ``root`` (said in the log): a test set pointed at
            the folder of its images works as it is.
        input_dir, target_dir: folder names of degraded and clean images.
        crop_size: train crop side. ``val_crop_size``: centre crop for validation; None -> crop_size,
            0 -> full images (then keep ``val_batch_size=1`` unless all images share one size).
        augment: train augmentations (subset of ``hflip``, ``vflip``, ``rot90``).
        edge_decay: DehazeFormer's border re-weighting of train crops.
        batch_size, val_batch_size: loader batch sizes; the test loader always uses 1 (full images
            of different sizes).
        num_workers, pin_memory: DataLoader settings; workers are persistent when num_workers > 0.
        train_list, val_list, test_list: list files (``input [target]`` lines relative to ``root``,
            see :class:`~clipdehaze.data.datasets.ListPairedDataset`) used instead of split folders.
        val_root, test_root: roots of the validation and test data when they live elsewhere than the
            training data (TransWeather keeps ``data/train/allweather.txt`` and ``data/test/*.txt`` with
            paths relative to each folder); None: ``root``.
        max_train_samples, max_val_samples, max_test_samples: at most this many images of the split (None: all),
            picked by ``subset`` from the sorted list: ``"even"`` (default; first, last and evenly spaced between:
            RESIDE's consecutive files are one scene) or ``"first"``.
        on_unpaired: ``"error"`` or ``"skip"`` for inputs without a target.
        pad_if_smaller: images smaller than the train/val crop are reflect-padded up to it (True) or an error
            naming the file and its size (False: a set that should not hold small images is checked, not padded).
        seed: seed of the train shuffling generator; None draws it from torch's global RNG, which
            ``lightning.seed_everything`` controls.
    """

    def __init__(
        self,
        root: str,
        name: str = "paired",
        train_split: str | None = "train",
        val_split: str | None = "test",
        test_split: str | None = "test",
        input_dir: str = "hazy",
        target_dir: str = "GT",
        crop_size: int = 256,
        val_crop_size: int | None = None,
        augment: Sequence[str] = ("hflip", "rot90"),
        edge_decay: float = 0.0,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 2,
        pin_memory: bool = False,
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        max_test_samples: int | None = None,
        subset: str = "even",
        on_unpaired: str = "error",
        pad_if_smaller: bool = True,
        seed: int | None = None,
        val_root: str | None = None,
        test_root: str | None = None,
    ):
        super().__init__()
        _check_counts(batch_size=(batch_size, 1), val_batch_size=(val_batch_size, 1), num_workers=(num_workers, 0),
                      crop_size=(crop_size, 0), val_crop_size=(val_crop_size, 0),
                      max_train_samples=(max_train_samples, 1), max_val_samples=(max_val_samples, 1),
                      max_test_samples=(max_test_samples, 1), subset=(subset, 0))
        # Hydra hands over ListConfig; keep hparams plain so checkpoints load with weights_only=True.
        augment = [str(a) for a in ([augment] if isinstance(augment, str) else (augment or []))]
        self.save_hyperparameters(ignore=["augment"])
        self.hparams["augment"] = augment
        # Drawn on the first train loader when hparams.seed is None, then kept for the module's life.
        self._shuffle_seed: int | None = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: Dataset | None = None
        self.clip_cache = None
        self.clip_names: tuple[str, ...] = ()
        self.clip_control = None
        # (root, split, option) -> the sub-folder it resolved to: found once, logged once.
        self._resolved: dict[tuple[str, str | None, str], str | None] = {}

    # Settings other code reads (provenance names the dataset, the crop check compares sizes), derived from hparams.
    @property
    def name(self) -> str:
        return self.hparams.name

    @property
    def root(self) -> str:
        return str(self.hparams.root)

    @property
    def input_dir(self) -> str:
        return self.hparams.input_dir

    @property
    def target_dir(self) -> str:
        return self.hparams.target_dir

    @property
    def crop_size(self) -> int:
        return self.hparams.crop_size

    @property
    def val_crop_size(self) -> int:
        return self.crop_size if self.hparams.val_crop_size is None else self.hparams.val_crop_size

    def attach_clip_cache(self, cache, names: Sequence[str], control=None) -> None:
        """Serve the generator's CLIP inputs ``names`` from ``cache`` (built for every input image at setup);
        a :class:`clipdehaze.models.clip.control.PriorControl` decides per split what each image receives."""
        self.clip_cache, self.clip_names, self.clip_control = cache, tuple(names), control

    # ------------------------------------------------------------------------------------------

    def _splits(self) -> dict[str, tuple[str, str | None, str | None, str]]:
        """Per stage dataset (``train``, ``val``, ``test``): ``(root, split, list file, the option naming the split)``;
        ``val_split=None`` reads the test split."""
        hp = self.hparams
        val_root = str(hp.val_root) if hp.val_root is not None else self.root
        test_root = str(hp.test_root) if hp.test_root is not None else self.root
        val = (val_root, hp.val_split, hp.val_list, "val_split") if hp.val_split is not None else \
            (val_root, hp.test_split, hp.val_list, "test_split")
        return {"train": (self.root, hp.train_split, hp.train_list, "train_split"), "val": val,
                "test": (test_root, hp.test_split, hp.test_list, "test_split")}

    def _check_trainable(self) -> None:
        if self.hparams.train_split is None and not self.hparams.train_list:
            raise ValueError(f"data={self.name} is a test set (train_split=null): evaluate with it (clipdehaze-eval "
                             f"... data={self.name}); train on its training set's config (README, 'Data layouts')")

    def check_folders(self, stage: str | None) -> None:
        """Find the folders ``stage`` reads, as ``setup`` will, without listing any image: a wrong ``data.root`` or
        split stops before a model is built or a checkpoint read (the error names the folder and the fix)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        if stage in ("fit", None):
            self._check_trainable()
        for name in wanted.get(stage, ("train", "val", "test")):
            root, split, list_file, option = self._splits()[name]
            if not list_file:
                self._split(root, split, option)

    def _split(self, root: str, split: str | None, option: str) -> str | None:
        """The sub-folder a split is read from (None: ``root`` itself), checked: a missing one is an error naming
        the folder looked in, what it holds and the override to type. A test or validation split may fall back to
        ``root`` when ``root`` holds the image folders directly (a test set pointed at its images)."""
        key = (root, split, option)
        if key not in self._resolved:
            self._resolved[key] = self._find_split(root, split, option)
        return self._resolved[key]

    def _find_split(self, root: str, split: str | None, option: str) -> str | None:
        if not split:
            return None
        base, top = Path(root) / split, Path(root)
        if (base / self.input_dir).is_dir() and (base / self.target_dir).is_dir():
            return split
        flat = (top / self.input_dir).is_dir() and (top / self.target_dir).is_dir()
        if flat and option != "train_split" and not base.exists():
            log.info("data.root=%s holds %s/ and %s/ directly (no %s/ folder): reading them there "
                     "(data.%s=null says so explicitly)", root, self.input_dir, self.target_dir, split, option)
            return None
        looked = f"{base / self.input_dir}/ and {base / self.target_dir}/"
        if not top.is_dir():
            found = f"{top} does not exist"
        elif base.is_dir():
            found = _entries(base)
        else:
            found = _entries(top)
        fixes = []
        if top.is_dir():
            # Folders that hold the image folders (spelled as configured or in another case), and the overrides
            # that read them: the root itself, a sub-folder other than the split, the split with other spellings.
            null = "''" if option == "train_split" else "null"
            candidates = [(top, f"the images are directly in {root}", f"data.{option}={null}")]
            candidates += [(d, f"{d.name}/ holds them", f"data.{option}={d.name}") for d in sorted(top.iterdir())
                           if d.is_dir() and d != base]
            candidates += [(base, f"{split}/ holds them", "")]
            for folder, what, override in candidates:
                if (spelling := self._spelling(folder)) is not None:
                    fixes.append(f"{what}: " + " ".join(o for o in (override, spelling) if o))
            if layout := _official_download(top):
                fixes.append(f"{root} is an official {layout} download: make our layout from it with "
                             f"`clipdehaze-data prepare {layout} {root} <out>` and pass data.root=<out>")
        if not fixes:
            fixes.append("put the dataset there (README, 'Data layouts': the folder each data config reads; "
                         "`clipdehaze-data prepare` makes it from an official download) or pass data.root=<folder>")
        missing = ", ".join(f"{d}/" for d in (base / self.input_dir, base / self.target_dir) if not d.is_dir())
        raise FileNotFoundError(f"data={self.name}: the {option.split('_')[0]} split is read from {looked} "
                                f"(data.root={root}, data.{option}={split}); missing: {missing}. {found}. Fix: "
                                + "; or ".join(fixes))

    def _spelling(self, folder: Path) -> str | None:
        """The input/target folder overrides that read ``folder`` ('' when it holds them as configured); None when
        it does not hold both, in any case (downloads spell ``gt``, ``GT``, ``Hazy``)."""
        if not folder.is_dir():
            return None
        names = {d.name.lower(): d.name for d in folder.iterdir() if d.is_dir()}
        overrides = []
        for key, want in (("input_dir", self.input_dir), ("target_dir", self.target_dir)):
            if (folder / want).is_dir():
                continue
            if want.lower() not in names:
                return None
            overrides.append(f"data.{key}={names[want.lower()]}")
        return " ".join(overrides)

    def _dataset(self, root: str, split: str | None, list_file: str | None, option: str, mode: str,
                 crop_size: int | None, input_only: bool = False) -> Dataset:
        hp = self.hparams
        common = dict(mode=mode, crop_size=crop_size, augment=tuple(hp.augment), edge_decay=hp.edge_decay,
                      pad_if_smaller=bool(hp.pad_if_smaller), input_only=input_only)
        if list_file:
            return ListPairedDataset(list_file, root, **common)
        return PairedImageDataset(root, self._split(root, split, option), self.input_dir, self.target_dir,
                                  on_unpaired=hp.on_unpaired, **common)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        splits = self._splits()
        if stage in ("fit", None) and self.train_set is None:
            self._check_trainable()
            self.train_set = subset_of(self._dataset(*splits["train"], "train", self.crop_size),
                                       hp.max_train_samples, hp.subset)
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.val_set = subset_of(self._dataset(*splits["val"], "val", self.val_crop_size),
                                     hp.max_val_samples, hp.subset)
        if stage in ("test", None) and self.test_set is None:
            self.test_set = subset_of(self._dataset(*splits["test"], "test", None), hp.max_test_samples, hp.subset)
        if stage == "predict" and self.predict_set is None:
            self.predict_set = subset_of(self._dataset(*splits["test"], "test", None, input_only=True),
                                         hp.max_test_samples, hp.subset)
        if self.clip_cache is not None:
            self._serve_clip_cache()

    def _serve_clip_cache(self) -> None:
        from clipdehaze.models.clip.control import PriorControl

        control = self.clip_control or PriorControl()
        # Built here, in the main process, so data-loader workers only read (a miss would run CLIP in a worker).
        # Lightning calls setup on the device the module is about to move to; the prior goes there first.
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        for ds in (self.train_set, self.val_set, self.test_set, self.predict_set):
            base = getattr(ds, "dataset", ds)  # subset_of wraps in a Subset
            if base is None or base.clip_cache is not None:
                continue
            source = control.source(self.clip_cache, base.input_paths(), base.mode, device=device)
            if source is not None:
                base.attach_clip_cache(source, self.clip_names)

    # ------------------------------------------------------------------------------------------

    def _loader(self, dataset: Dataset | None, stage: str, batch_size: int, **kwargs) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not prepared the {stage} set")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            worker_init_fn=seed_worker,
            **{"persistent_workers": self.hparams.num_workers > 0, **kwargs},
        )

    def train_dataloader(self) -> DataLoader:
        # Order and crops depend only on (seed, epoch, index): see EpochSeededSampler. Workers are not
        # persistent here, so each epoch's workers start from the dataset's current epoch key.
        if self._shuffle_seed is None:
            self._shuffle_seed = int(torch.randint(2**31, ()).item())
        batch_size = self.hparams.batch_size
        n = len(self.train_set) if self.train_set is not None else 0
        sampler = None
        if self.train_set is not None:
            sampler = EpochSeededSampler(self.train_set, self._shuffle_seed)
            sampler.set_epoch(0)  # Lightning sets each epoch; a bare loop over the loader gets epoch 0
        return self._loader(self.train_set, "train", batch_size, sampler=sampler, drop_last=n >= batch_size,
                            persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", self.hparams.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", 1, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, "predict", 1, shuffle=False)


class SyntheticHazeDataModule(PairedDataModule):
    """:class:`PairedDataModule` over an embedded synthetic dataset (scikit-image photos), haze by default.

    The dataset is generated on first use by :func:`clipdehaze.data.synth.ensure_default_dataset`:
    in ``prepare_data`` (global/node rank 0 only under Lightning), and again in ``setup`` only if it
    is still missing (a module used without a Trainer). ``root`` None places it in ``cache_dir``
    (default ``$CLIPDEHAZE_CACHE/datasets``); a ``root`` is used as the dataset directory itself.
    ``kind`` is a key of :data:`clipdehaze.data.synth.DEGRADATIONS`; the input/target folders default to
    that kind's.
    """

    def __init__(self, root: str | None = None, cache_dir: str | None = None, synth_seed: int = 0,
                 name: str = "synthetic_haze", crop_size: int = 128, batch_size: int = 8, kind: str = "haze",
                 **kwargs):
        if kind not in DEGRADATIONS:
            raise ValueError(f"unknown synthetic kind {kind!r}; available: {sorted(DEGRADATIONS)}")
        kwargs.setdefault("input_dir", DEGRADATIONS[kind].input_dir)
        kwargs.setdefault("target_dir", DEGRADATIONS[kind].target_dir)
        super().__init__(root=root, name=name, crop_size=crop_size, batch_size=batch_size, **kwargs)

    @property
    def root(self) -> str:
        """``hparams.root``, else the cached default dataset of this kind and seed."""
        hp = self.hparams
        return str(Path(hp.root) if hp.root is not None else default_dataset_dir(hp.cache_dir, hp.synth_seed, hp.kind))

    def check_folders(self, stage: str | None) -> None:
        """Nothing to find before the dataset is generated (``setup`` makes it)."""

    def _ensure(self) -> None:
        hp = self.hparams
        ensure_default_dataset(hp.cache_dir, hp.synth_seed, root=self.root, kind=hp.kind)

    def prepare_data(self) -> None:
        self._ensure()

    def setup(self, stage: str | None = None) -> None:
        self._ensure()
        super().setup(stage)


class SyntheticWeatherDataModule(SyntheticHazeDataModule):
    """The embedded all-weather dataset: each image degraded by one of haze, rain, snow or raindrop.

    Folders are TransWeather's ``input/`` + ``gt/``; ``kind`` may name a single weather instead
    (``rain``, ``snow``, ``raindrop``).
    """

    def __init__(self, root: str | None = None, cache_dir: str | None = None, synth_seed: int = 0,
                 name: str = "synthetic_allweather", crop_size: int = 128, batch_size: int = 8,
                 kind: str = "allweather", **kwargs):
        super().__init__(root=root, cache_dir=cache_dir, synth_seed=synth_seed, name=name, crop_size=crop_size,
                         batch_size=batch_size, kind=kind, **kwargs)


class FolderDataModule(PairedDataModule):
    """A folder of images without ground truth (real hazy photos), for the test pass only: ``clipdehaze-eval`` scores
    it with no-reference metrics (``metrics=no_reference`` unless ``metrics=`` names others)."""

    #: Samples carry no ``target``: full-reference metrics cannot run on them.
    has_targets = False

    def __init__(self, root: str, name: str = "folder", num_workers: int = 0, pin_memory: bool = False,
                 max_test_samples: int | None = None, subset: str = "even", pad_if_smaller: bool = True) -> None:
        super().__init__(root=root, name=name, train_split=None, val_split=None, test_split=None, batch_size=1,
                         num_workers=num_workers, pin_memory=pin_memory, max_test_samples=max_test_samples,
                         subset=subset, pad_if_smaller=pad_if_smaller)

    def setup(self, stage: str | None = None) -> None:
        if stage not in ("test", "predict"):
            raise ValueError(f"data=folder ({self.root}) holds images without ground truth: it can be tested "
                             "(clipdehaze-eval) but not trained or validated on")
        if self.test_set is None:
            from clipdehaze.data.datasets import FolderDataset

            folder = FolderDataset(self.root, pad_if_smaller=bool(self.hparams.pad_if_smaller))
            self.test_set = subset_of(folder, self.hparams.max_test_samples, self.hparams.subset)
        if self.clip_cache is not None:
            self._serve_clip_cache()
