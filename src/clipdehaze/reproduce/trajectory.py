"""``clipdehaze-reproduce trajectory FILE``: prove our training loop equal to upstream's by replaying a training run
that upstream's own code recorded.

A trajectory file (format: ``shared/reference/README.md``, "trajectories/") holds a recipe, the initial weights, the
batches in the order upstream's loop saw them, upstream's loss at every step, the learning rate in force in every
epoch and the final weights; optionally (``full_recipe_lr_per_epoch_T<N>``) the learning rate of every epoch of the
unshrunk recipe. It is read with ``torch.load(weights_only=True)`` and checked entry by entry (:func:`load_trajectory`).

The replay runs what ``clipdehaze-train`` runs: the ``train`` config composed with the recorded recipe as overrides
(:func:`recipe_overrides`), :func:`clipdehaze.build.build_module` and :func:`clipdehaze.build.build_trainer`, and
``trainer.fit`` of :class:`clipdehaze.lit_module.DehazeLitModule` (its ``training_step``, its
``configure_optimizers``), on CPU in float32, fed the recorded batches in the recorded order instead of a data module.
Only what a replay cannot have is switched off: validation, loggers, callbacks and checkpoints.

How upstream DehazeFormer's ``train.py`` maps onto our configs:

* optimizer ``adamw`` | ``adam``: ``optimizer=adamw|adam`` at the recipe's lr. Upstream builds torch's optimizer with
  its defaults (AdamW: betas (0.9, 0.999), eps 1e-8, weight decay 0.01; Adam: no weight decay), which
  ``conf/optimizer`` holds.
* schedule: ``scheduler=cosine``, ``CosineAnnealingLR(T_max=epochs, eta_min=lr * eta_min_factor)`` stepped once per
  epoch (Lightning's ``interval: epoch``, as upstream's ``scheduler.step()`` after each epoch). ``eta_min`` is
  computed as upstream computes it, ``lr * 1e-2``: ``lr / 100`` is another float, and the learning rates compare
  exactly.
* loss ``l1``: ``loss=l1_upstream``. Upstream takes ``nn.L1Loss`` on [-1, 1] images (its loader feeds ``x * 2 - 1``),
  which is 2 x the L1 of our [0, 1] images.
* epochs: upstream's loop is ``range(epochs + 1)``, one epoch more than the recipe says, the last at ``eta_min``. A
  recipe run of ours does the same (``trainer.max_epochs = epochs + 1``, ``T_max = epochs``); the shrunk replay runs
  the epochs the file records (``hazy.shape[0]``, with T_max from the recipe), and the full-schedule check steps our
  scheduler through a Trainer for all ``N + 1`` epochs of every ``full_recipe_lr_per_epoch_T<N>`` the file holds.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import pickle
import re
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

#: ``shared/reference/README.md``: a faithful loop reproduces every loss to 1e-5 relative (after the x2 scale),
#: every learning rate exactly, and the final weights to 1e-5 at the 99.9th percentile and 2e-4 at the maximum.
TOLERANCE = {"loss_rel": 1e-5, "lr_abs": 0.0, "weight_p999": 1e-5, "weight_max": 2e-4}
#: The float noise floor the README measured (the same upstream code run with 1 and with 2 threads). The share of
#: entries off by more than 1e-6 has a floor but no tolerance: it is reported, not checked.
NOISE_FLOOR = {"loss_rel": 2e-7, "weight_max": 3.3e-5, "weight_p999": 4e-7, "weight_share": 3e-4}
WEIGHT_SHARE_THRESHOLD = 1e-6

FORMAT_DOC = "the format: shared/reference/README.md, 'trajectories/'"
REQUIRED = ("recipe", "init_state_dict", "hazy", "gt", "loss_per_step_upstream_scale", "lr_per_epoch",
            "final_state_dict")
FULL_SCHEDULE = re.compile(r"full_recipe_lr_per_epoch_T(\d+)")

#: Recorded recipe value -> the option of our config group that is upstream's.
OPTIMIZERS = {"adamw": "adamw", "adam": "adam"}
LOSSES = {"l1": "l1_upstream"}
SCHEDULES = {"cosine per epoch, T_max = epochs, eta_min = lr * eta_min_factor": "cosine"}


class TrajectoryFormatError(ValueError):
    """A trajectory file that cannot be replayed; the message names the file and what is missing or malformed."""


@dataclass(frozen=True)
class Recipe:
    generator: str
    batch_size: int
    patch_size: int
    optimizer: str
    lr: float
    epochs: int
    eta_min_factor: float
    loss: str
    schedule: str

    @property
    def eta_min(self) -> float:
        return self.lr * self.eta_min_factor

    def describe(self) -> str:
        return (f"{self.generator}, batch {self.batch_size}, patch {self.patch_size}, {self.optimizer} lr {self.lr:g}, "
                f"cosine per epoch (T_max {self.epochs}, eta_min {self.eta_min:g} = lr x {self.eta_min_factor:g}), "
                f"loss {self.loss} on upstream's [-1, 1] scale")


@dataclass
class Trajectory:
    path: Path
    recipe: Recipe
    init_state_dict: dict[str, torch.Tensor]
    hazy: torch.Tensor
    gt: torch.Tensor
    losses: list[float]
    lrs: list[float]
    final_state_dict: dict[str, torch.Tensor]
    #: T_max of the unshrunk recipe -> the learning rate in force in each of its T_max + 1 epochs.
    full_schedules: dict[int, list[float]] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return self.hazy.shape[0]

    @property
    def batches_per_epoch(self) -> int:
        return self.hazy.shape[1]


# ----------------------------------------------------------------------------------------------------- reading
def _read(path: Path) -> Any:
    from clipdehaze.utils.checkpoint import CheckpointError, verify_archive

    if not path.is_file():
        raise TrajectoryFormatError(f"{path}: no such trajectory file")
    if not zipfile.is_zipfile(path):
        raise TrajectoryFormatError(f"{path}: not a torch.save archive (empty, truncated or another format); "
                                    f"{FORMAT_DOC}")
    try:
        verify_archive(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError as e:
        raise TrajectoryFormatError(str(e)) from e
    except pickle.UnpicklingError as e:
        raise TrajectoryFormatError(f"{path}: refusing to unpickle arbitrary objects (weights_only=True failed: "
                                    f"{str(e).splitlines()[0]}); a trajectory holds only tensors and plain types, "
                                    f"{FORMAT_DOC}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise TrajectoryFormatError(f"{path}: a corrupt torch.save archive ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''})") from e


def _number(value: Any, is_int: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return float(value).is_integer() if is_int else math.isfinite(value)


def _recipe(raw: Any, path: Path) -> Recipe:
    from clipdehaze.models import list_generators

    if not isinstance(raw, Mapping):
        raise TrajectoryFormatError(f"{path}: 'recipe' is a {type(raw).__name__}, not a dict ({FORMAT_DOC})")
    names = [f.name for f in Recipe.__dataclass_fields__.values()]
    if missing := [n for n in names if n not in raw]:
        raise TrajectoryFormatError(f"{path}: the recipe lacks {', '.join(missing)} ({FORMAT_DOC})")

    def bad(key: str, what: str) -> TrajectoryFormatError:
        return TrajectoryFormatError(f"{path}: recipe.{key} is {raw[key]!r}; it must be {what}")

    for key in ("batch_size", "patch_size", "epochs"):
        if not _number(raw[key], is_int=True) or raw[key] < 1:
            raise bad(key, "a positive integer")
    if not _number(raw["lr"]) or raw["lr"] <= 0:
        raise bad("lr", "a positive finite number")
    if not _number(raw["eta_min_factor"]) or not 0 <= raw["eta_min_factor"] <= 1:
        raise bad("eta_min_factor", "a number in [0, 1]")
    for key, known in (("optimizer", OPTIMIZERS), ("loss", LOSSES), ("schedule", SCHEDULES)):
        if raw[key] not in known:
            raise bad(key, f"one the replay knows: {', '.join(map(repr, known))}")
    if raw["generator"] not in list_generators():
        raise bad("generator", f"a generator of ours (clipdehaze-train model=...): {', '.join(list_generators())}")
    return Recipe(generator=raw["generator"], batch_size=int(raw["batch_size"]), patch_size=int(raw["patch_size"]),
                  optimizer=raw["optimizer"], lr=float(raw["lr"]), epochs=int(raw["epochs"]),
                  eta_min_factor=float(raw["eta_min_factor"]), loss=raw["loss"], schedule=raw["schedule"])


def _floats(raw: Any, key: str, length: int, why: str, path: Path) -> list[float]:
    if isinstance(raw, torch.Tensor) and raw.dim() == 1:
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)) or not all(_number(v) for v in raw):
        raise TrajectoryFormatError(f"{path}: '{key}' must be a list of finite numbers")
    if len(raw) != length:
        raise TrajectoryFormatError(f"{path}: '{key}' holds {len(raw)} values; {why}")
    return [float(v) for v in raw]


def _state_dict(raw: Any, key: str, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, Mapping) or not raw or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise TrajectoryFormatError(f"{path}: '{key}' must be a non-empty state_dict (parameter name -> tensor)")
    if bad := [k for k, v in raw.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise TrajectoryFormatError(f"{path}: '{key}' holds non-finite values (NaN/Inf) in {', '.join(bad[:5])}")
    return dict(raw)


def load_trajectory(path: str | Path) -> Trajectory:
    """The trajectory in ``path``, checked; a TrajectoryFormatError names the file and what is missing or
    malformed."""
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, Mapping):
        raise TrajectoryFormatError(f"{path}: holds a {type(raw).__name__}, not a trajectory dict ({FORMAT_DOC})")
    if missing := [k for k in REQUIRED if k not in raw]:
        raise TrajectoryFormatError(f"{path}: not a training trajectory: it lacks {', '.join(missing)} ({FORMAT_DOC})")
    recipe = _recipe(raw["recipe"], path)
    batches = {}
    for key in ("hazy", "gt"):
        t = raw[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 6:
            raise TrajectoryFormatError(f"{path}: '{key}' must be a float tensor (epochs, batches, batch, 3, patch, "
                                        f"patch), not {_describe(t)}")
        expected = (recipe.batch_size, 3, recipe.patch_size, recipe.patch_size)
        if tuple(t.shape[2:]) != expected or t.shape[0] < 1 or t.shape[1] < 1:
            raise TrajectoryFormatError(f"{path}: '{key}' has shape {tuple(t.shape)}; the recipe's batch "
                                        f"{recipe.batch_size} and patch {recipe.patch_size} need (epochs, batches, "
                                        f"{', '.join(map(str, expected))})")
        if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
            raise TrajectoryFormatError(f"{path}: '{key}' must hold finite images in [0, 1]")
        batches[key] = t.float()
    if batches["hazy"].shape != batches["gt"].shape:
        raise TrajectoryFormatError(f"{path}: 'hazy' {tuple(batches['hazy'].shape)} and 'gt' "
                                    f"{tuple(batches['gt'].shape)} must have the same shape")
    epochs, per_epoch = batches["hazy"].shape[:2]
    init = _state_dict(raw["init_state_dict"], "init_state_dict", path)
    final = _state_dict(raw["final_state_dict"], "final_state_dict", path)
    if (ki := {k: tuple(v.shape) for k, v in init.items()}) != {k: tuple(v.shape) for k, v in final.items()}:
        raise TrajectoryFormatError(f"{path}: 'init_state_dict' and 'final_state_dict' hold different entries or "
                                    f"shapes ({len(ki)} vs {len(final)} entries)")
    full = {}
    for key, values in raw.items():
        if isinstance(key, str) and (m := FULL_SCHEDULE.fullmatch(key)):
            t_max = int(m.group(1))
            if t_max < 1:
                raise TrajectoryFormatError(f"{path}: '{key}' names T_max {t_max}; it must be at least 1")
            full[t_max] = _floats(values, key, t_max + 1, f"T_max {t_max} means {t_max + 1} epochs (upstream's "
                                  "range(epochs + 1))", path)
    recorded = f"the {epochs} epochs x {per_epoch} batches of 'hazy' need"
    return Trajectory(path=path, recipe=recipe, init_state_dict=init, hazy=batches["hazy"], gt=batches["gt"],
                      losses=_floats(raw["loss_per_step_upstream_scale"], "loss_per_step_upstream_scale",
                                     epochs * per_epoch, f"{recorded} {epochs * per_epoch}, one per step", path),
                      lrs=_floats(raw["lr_per_epoch"], "lr_per_epoch", epochs, f"{recorded} {epochs}, one per epoch",
                                  path),
                      final_state_dict=final, full_schedules=full)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


# ----------------------------------------------------------------------------------------------------- replay
def recipe_overrides(recipe: Recipe, max_epochs: int, t_max: int | None = None) -> list[str]:
    """``clipdehaze-train`` overrides that train ``recipe`` for ``max_epochs`` epochs on CPU in float32 with the
    cosine's ``T_max`` (default: the recipe's epochs)."""
    return [f"model={recipe.generator}", f"loss={LOSSES[recipe.loss]}",
            f"optimizer={OPTIMIZERS[recipe.optimizer]}", f"optimizer.lr={recipe.lr!r}",
            f"scheduler={SCHEDULES[recipe.schedule]}", f"scheduler.scheduler.T_max={t_max or recipe.epochs}",
            f"scheduler.scheduler.eta_min={recipe.eta_min!r}",
            "trainer=cpu", "trainer.precision=32-true", f"trainer.max_epochs={max_epochs}", "trainer.max_steps=-1"]


#: What a replay cannot have: it validates nothing, logs nowhere and saves nothing.
REPLAY_ONLY = ["~logger", "~callbacks", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
               "++trainer.enable_checkpointing=false", "++trainer.enable_progress_bar=false",
               "++trainer.enable_model_summary=false"]


class _RecordedBatches(Dataset):
    """Every recorded batch as one item (``batch_size=None`` loaders serve it whole), numbered by its step."""

    def __init__(self, hazy: torch.Tensor, gt: torch.Tensor):
        self.hazy, self.gt = hazy.flatten(0, 1), gt.flatten(0, 1)

    def __len__(self) -> int:
        return self.hazy.shape[0]

    def __getitem__(self, step: int) -> dict[str, Any]:
        return {"input": self.hazy[step], "target": self.gt[step], "step": step}


class _RecordedOrder(Sampler[int]):
    """Epoch ``e`` serves the steps ``e * per_epoch ... (e + 1) * per_epoch - 1``: Lightning hands the sampler the
    epoch (``set_epoch``) before each, as it does to a DistributedSampler."""

    def __init__(self, epochs: int, per_epoch: int):
        self.epochs, self.per_epoch, self.epoch = epochs, per_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.epoch >= self.epochs:
            raise RuntimeError(f"the trainer asked for epoch {self.epoch}, but the trajectory records {self.epochs}")
        return iter(range(self.epoch * self.per_epoch, (self.epoch + 1) * self.per_epoch))

    def __len__(self) -> int:
        return self.per_epoch


class _StepRecorder(L.Callback):
    """The batch, learning rate and loss of every optimiser step, as the trainer ran it."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(int(batch["step"]))
        self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@dataclass
class Replay:
    overrides: list[str]
    steps: list[int]
    losses: list[float]
    lrs: list[float]
    final_state_dict: dict[str, torch.Tensor]


@contextlib.contextmanager
def _composed(overrides: list[str]):
    """The config ``clipdehaze-train`` composes from ``overrides``, with its module and trainer
    (:func:`clipdehaze.build.build_module`, :func:`clipdehaze.build.build_trainer`); Lightning's start-up chatter
    and the warnings a replay expects (no validation loader, one batch per epoch) silenced."""
    from clipdehaze.build import build_module, build_trainer
    from clipdehaze.utils.hydra_utils import compose_config

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with tempfile.TemporaryDirectory(prefix="clipdehaze-trajectory-") as out, warnings.catch_warnings():
        for message in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            cfg = compose_config("train", overrides, output_dir=out)
            yield build_module(cfg), build_trainer(cfg)
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


#: Lightning's and torch's warnings about what a replay does on purpose.
EXPECTED_WARNINGS = (r".*`validation_step` but have no `val_dataloader`", r".*limit_train_batches=1",
                     r".*isinstance\(treespec, LeafSpec\)", r"Detected call of `lr_scheduler.step\(\)` before")


def _fit(module, trainer, loader: DataLoader) -> _StepRecorder:
    recorder = _StepRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(module, train_dataloaders=loader)
    return recorder


def replay(trajectory: Trajectory, extra_overrides: Sequence[str] = ()) -> Replay:
    """Train our module from ``init_state_dict`` on the recorded batches in the recorded order."""
    overrides = recipe_overrides(trajectory.recipe, trajectory.epochs) + REPLAY_ONLY + list(extra_overrides)
    loader = DataLoader(_RecordedBatches(trajectory.hazy, trajectory.gt), batch_size=None, num_workers=0,
                        sampler=_RecordedOrder(trajectory.epochs, trajectory.batches_per_epoch))
    with _composed(overrides) as (module, trainer):
        try:
            module.generator.load_state_dict(trajectory.init_state_dict, strict=True)
        except RuntimeError as e:
            raise TrajectoryFormatError(
                f"{trajectory.path}: 'init_state_dict' does not load strict into our {trajectory.recipe.generator} "
                f"({str(e).splitlines()[-1].strip()})") from e
        recorder = _fit(module, trainer, loader)
    final = {k: v.detach().clone() for k, v in module.generator.state_dict().items()}
    return Replay(overrides, recorder.steps, recorder.losses, recorder.lrs, final)


def full_schedule(trajectory: Trajectory, t_max: int, extra_overrides: Sequence[str] = (),
                  through_trainer: bool = False) -> list[float]:
    """The learning rate in force in each of the ``t_max + 1`` epochs of the unshrunk recipe (upstream's
    ``range(epochs + 1)``: ``trainer.max_epochs = t_max + 1``), from the module and trainer our config path builds.

    By default without training: Lightning's own reading of ``configure_optimizers`` (interval, frequency), then its
    per-epoch rule (after epoch ``e`` when ``(e + 1) % frequency == 0``, through the module's ``lr_scheduler_step``
    hook). ``through_trainer`` runs ``trainer.fit`` instead, one training step per epoch on the first image of the
    first recorded batch: Lightning's loop itself, at the cost of ``t_max + 1`` steps of the generator.
    """
    from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers

    overrides = (recipe_overrides(trajectory.recipe, t_max + 1, t_max) + REPLAY_ONLY
                 + ["trainer.limit_train_batches=1"] + list(extra_overrides))
    with _composed(overrides) as (module, trainer):
        if through_trainer:
            one = {"input": trajectory.hazy[0, 0, :1], "target": trajectory.gt[0, 0, :1], "step": 0}
            return _fit(module, trainer, DataLoader([one], batch_size=None)).lrs
        module.trainer = trainer  # configure_optimizers reads trainer.max_epochs (T_max: auto)
        optimizers, configs = _init_optimizers_and_lr_schedulers(module)
        if other := [c for c in configs if c.interval != "epoch" or c.reduce_on_plateau]:
            raise ValueError(f"the full-schedule check steps per-epoch schedulers only, not {other[0].scheduler!r} "
                             f"(interval {other[0].interval!r}); run it through the trainer")
        lrs = []
        for epoch in range(trainer.max_epochs):
            lrs.append(float(optimizers[0].param_groups[0]["lr"]))
            for config in configs:
                if (epoch + 1) % config.frequency == 0:
                    module.lr_scheduler_step(config.scheduler, None)
        return lrs


# ----------------------------------------------------------------------------------------------------- compare
def _weight_deviation(ours: Mapping[str, torch.Tensor], upstream: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """|ours - upstream| over every entry of the state_dict (the keys agree: ours was loaded strict from the file's
    initial weights, whose keys the file's final weights share)."""
    devs = {k: (ours[k].double() - upstream[k].double()).abs().flatten() for k in upstream}
    flat = torch.cat(list(devs.values())).numpy()
    worst = max(devs, key=lambda k: float(devs[k].max()) if devs[k].numel() else 0.0)
    return {"max": float(flat.max()), "max_at": worst, "p999": float(np.percentile(flat, 99.9)),
            "share_above_1e-6": float((flat > WEIGHT_SHARE_THRESHOLD).mean()), "entries": int(flat.size)}


def _padded(values: Sequence[float], n: int) -> list[float]:
    """The first ``n`` values, NaN for steps or epochs the replay did not reach (a NaN fails every check)."""
    return list(values[:n]) + [math.nan] * (n - len(values[:n]))


def _worst(devs: Sequence[float]) -> int:
    return max(range(len(devs)), key=lambda i: math.inf if math.isnan(devs[i]) else devs[i])


def compare(trajectory: Trajectory, ours: Replay, full: Mapping[int, list[float]]) -> dict[str, Any]:
    """The deviations of ``ours`` from the recorded run, each next to its tolerance and noise floor, with the
    reasons (one per failed check) in ``failures``."""
    n, per = len(trajectory.losses), trajectory.batches_per_epoch
    failures: list[str] = []
    if ours.steps != list(range(n)):
        failures.append(f"the trainer ran the recorded batches {ours.steps}, not steps 0 to {n - 1} in order")
    losses = _padded(ours.losses, n)
    # Relative, or absolute where upstream's loss is 0.
    loss_rel = [abs(a - b) / abs(b) if b else abs(a - b) for a, b in zip(losses, trajectory.losses)]
    step_lr_upstream = [trajectory.lrs[s // per] for s in range(n)]
    lrs = _padded(ours.lrs, n)
    lr_dev = [abs(a - b) for a, b in zip(lrs, step_lr_upstream)]
    weights = _weight_deviation(ours.final_state_dict, trajectory.final_state_dict)

    worst_loss = _worst(loss_rel)
    max_loss_rel = loss_rel[worst_loss]
    if not max_loss_rel <= TOLERANCE["loss_rel"]:
        failures.append(f"loss at step {worst_loss} (epoch {worst_loss // per}) deviates {max_loss_rel:.3g} "
                        f"relative (ours {losses[worst_loss]:.9g}, upstream {trajectory.losses[worst_loss]:.9g}; "
                        f"tolerance {TOLERANCE['loss_rel']:g})")
    worst_lr = _worst(lr_dev)
    if not lr_dev[worst_lr] <= TOLERANCE["lr_abs"]:
        failures.append(f"learning rate in epoch {worst_lr // per} is {lrs[worst_lr]!r}, upstream's "
                        f"{step_lr_upstream[worst_lr]!r} (learning rates must match exactly)")
    if not weights["p999"] <= TOLERANCE["weight_p999"]:
        failures.append(f"final weights deviate {weights['p999']:.3g} at the 99.9th percentile (tolerance "
                        f"{TOLERANCE['weight_p999']:g})")
    if not weights["max"] <= TOLERANCE["weight_max"]:
        failures.append(f"final weights deviate {weights['max']:.3g} at the maximum, in {weights['max_at']} "
                        f"(tolerance {TOLERANCE['weight_max']:g})")
    schedules = {}
    for t_max, upstream in sorted(trajectory.full_schedules.items()):
        got = _padded(full.get(t_max, []), len(upstream))
        devs = [abs(a - b) for a, b in zip(got, upstream)]
        worst = _worst(devs)
        schedules[t_max] = {"epochs": len(upstream), "max_abs_dev": devs[worst], "worst_epoch": worst,
                            "ours": got, "upstream": upstream,
                            "epochs_not_exact": sum(not d <= TOLERANCE["lr_abs"] for d in devs)}
        if not devs[worst] <= TOLERANCE["lr_abs"]:
            failures.append(f"full recipe (T_max {t_max}, {len(upstream)} epochs): learning rate in epoch {worst} is "
                            f"{got[worst]!r}, upstream's {upstream[worst]!r} "
                            f"({schedules[t_max]['epochs_not_exact']} epochs differ; they must match exactly)")
    return {
        "file": str(trajectory.path),
        "recipe": {f: getattr(trajectory.recipe, f) for f in Recipe.__dataclass_fields__},
        "overrides": ours.overrides,
        "steps": {"ours": ours.steps, "loss_ours": losses, "loss_upstream": trajectory.losses, "loss_rel_dev": loss_rel,
                  "lr_ours": lrs, "lr_upstream": step_lr_upstream, "lr_abs_dev": lr_dev},
        "loss_max_rel_dev": max_loss_rel, "loss_max_rel_dev_step": worst_loss,
        "lr_max_abs_dev": lr_dev[worst_lr],
        "weights": weights,
        "full_schedules": {str(k): v for k, v in schedules.items()},
        "tolerance": TOLERANCE, "noise_floor": NOISE_FLOOR,
        "failures": failures, "passed": not failures,
    }


# ----------------------------------------------------------------------------------------------------- report
def render(report: Mapping[str, Any], trajectory: Trajectory) -> str:
    tol, floor = TOLERANCE, NOISE_FLOOR
    per = trajectory.batches_per_epoch
    st = report["steps"]
    lines = [f"trajectory: {report['file']}",
             f"recipe: {trajectory.recipe.describe()}",
             f"replayed: {trajectory.epochs} epochs x {per} batches through clipdehaze-train's config + "
             f"DehazeLitModule + a Lightning Trainer (CPU, 32-true), overrides: {' '.join(report['overrides'])}",
             "",
             f"{'step':>4} {'epoch':>5}  {'lr ours':>22} {'lr upstream':>22}  {'loss ours':>12} {'loss upstream':>13} "
             f"{'rel dev':>9}"]
    for s in range(len(st["loss_upstream"])):
        lines.append(f"{s:>4} {s // per:>5}  {st['lr_ours'][s]!r:>22} {st['lr_upstream'][s]!r:>22}  "
                     f"{st['loss_ours'][s]:>12.9f} {st['loss_upstream'][s]:>13.9f} {st['loss_rel_dev'][s]:>9.2e}")
    w = report["weights"]

    def row(what: str, value: str, tolerance: str, noise: str, ok: bool | None) -> str:
        verdict = "-" if ok is None else ("ok" if ok else "OUTSIDE")
        return f"{what:<52} {value:>10} {tolerance:>10} {noise:>12}  {verdict}"

    lines += ["", f"{'deviation':<52} {'measured':>10} {'tolerance':>10} {'noise floor':>12}",
              row("loss, max relative (after the x2 scale)", f"{report['loss_max_rel_dev']:.2e}",
                  f"{tol['loss_rel']:.0e}", f"{floor['loss_rel']:.0e}", report["loss_max_rel_dev"] <= tol["loss_rel"]),
              row(f"learning rate, max |ours - upstream| ({trajectory.epochs} ep)", f"{report['lr_max_abs_dev']:.2e}",
                  "0 (exact)", "-", report["lr_max_abs_dev"] <= tol["lr_abs"]),
              row(f"final weights, max |ours - upstream| ({w['entries']:,})", f"{w['max']:.2e}",
                  f"{tol['weight_max']:.0e}", f"{floor['weight_max']:.1e}", w["max"] <= tol["weight_max"]),
              row("final weights, 99.9th percentile", f"{w['p999']:.2e}", f"{tol['weight_p999']:.0e}",
                  f"{floor['weight_p999']:.0e}", w["p999"] <= tol["weight_p999"]),
              row("final weights, share off by > 1e-6", f"{100 * w['share_above_1e-6']:.3f}%", "-",
                  f"{100 * floor['weight_share']:.2f}%", None)]
    for t_max, s in report["full_schedules"].items():
        lines.append(row(f"full recipe lr (T_max {t_max}, {s['epochs']} epochs), max |dev|",
                         f"{s['max_abs_dev']:.2e}", "0 (exact)", "-", s["epochs_not_exact"] == 0))
    lines.append(f"largest weight deviation in {w['max_at']}")
    if report["full_schedules"]:
        how = ("trainer.fit, one step per epoch" if report.get("full_schedule_stepped_by") == "trainer.fit" else
               "configure_optimizers' scheduler stepped by Lightning's per-epoch rule")
        lines.append(f"full recipe: trainer.max_epochs = T_max + 1 (upstream's range(epochs + 1)), {how}; epochs not "
                     f"exact: {', '.join(str(s['epochs_not_exact']) for s in report['full_schedules'].values())}")
    lines.append("")
    lines.append("PASS: our training loop reproduces upstream's within the README's tolerances" if report["passed"]
                 else "FAIL: " + "; ".join(report["failures"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clipdehaze-reproduce trajectory",
        description="Replay a recorded upstream training trajectory through clipdehaze-train's loop "
                    "(DehazeLitModule, its optimizer and scheduler configs, a Lightning Trainer on CPU) and compare "
                    "every loss, learning rate and the final weights with upstream's. Exit status: 0 within the "
                    "tolerances of shared/reference/README.md, 1 outside them, 2 for a file or override that cannot "
                    "be replayed.")
    parser.add_argument("file", help="a trajectory file (shared/reference/trajectories/*.pt)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="clipdehaze-train overrides applied after the recipe's (what a change to the loop does to "
                             "the parity, e.g. loss=l1 or scheduler.scheduler.eta_min=4e-6)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    parser.add_argument("--schedule-through-trainer", action="store_true",
                        help="step the full recipe's schedule by trainer.fit, one training step per epoch (minutes "
                             "on CPU), instead of Lightning's stepping rule applied to configure_optimizers' scheduler")
    args = parser.parse_args(argv)

    from hydra.errors import HydraException

    from clipdehaze.utils.files import atomic_write, to_json
    from clipdehaze.utils.hydra_utils import check_override_syntax

    try:
        check_override_syntax(args.overrides)
        trajectory = load_trajectory(args.file)
        ours = replay(trajectory, args.overrides)
        full = {t: full_schedule(trajectory, t, args.overrides, args.schedule_through_trainer)
                for t in trajectory.full_schedules}
    except TrajectoryFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except HydraException as e:
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: the overrides {' '.join(args.overrides)} do not compose with the recipe's: {reason}",
              file=sys.stderr)
        return 2
    except SystemExit as e:  # check_override_syntax's one-sentence refusal of an override
        if not isinstance(e.code, str):
            raise
        print(f"error: {e.code}", file=sys.stderr)
        return 2
    report = compare(trajectory, ours, full)
    report["full_schedule_stepped_by"] = "trainer.fit" if args.schedule_through_trainer else "lightning's epoch rule"
    print(render(report, trajectory))
    if args.json:
        atomic_write(args.json, to_json(report))
        print(f"figures: {args.json}")
    return 0 if report["passed"] else 1
