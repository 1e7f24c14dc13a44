"""Callbacks for long runs on shared clusters."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (what SLURM and most schedulers send before preemption) save ``last.ckpt`` and exit cleanly.

    Lightning notices the signal at the next batch boundary and raises ``SIGTERMException`` after calling the
    callbacks' ``on_exception``; this writes the checkpoint there (atomically, through the trainer's checkpoint
    I/O), so ``resume=auto`` continues from the interrupted step. The resumed epoch restarts its data iterator.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        dirpath = Path(ckpt_cb.dirpath) if ckpt_cb and ckpt_cb.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        path = dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        log.warning("SIGTERM received at global step %d: saved %s; resume with resume=auto", trainer.global_step, path)


class EvalFreq(L.Callback):
    """Validate after the epochs whose 0-based index is a multiple of ``eval_freq``, as DehazeFormer's train.py
    (``if epoch % setting['eval_freq'] == 0``, also MixDehazeNet's and MixCLDehazeNet's): epochs 1, 11, 21, ...
    for ``eval_freq=10``, the first and, with upstream's ``epochs + 1`` epochs, the last. Lightning's
    ``check_val_every_n_epoch=10`` validates after epochs 10, 20, ... instead, so it would never score the final,
    fully annealed epoch. The best-by-``val/psnr`` checkpoint is chosen among the same epochs as upstream's.

    Lightning reads ``trainer.check_val_every_n_epoch`` as ``(current_epoch + 1) % n == 0``; before each epoch
    this sets it to 1 for a validated epoch and to ``current_epoch + 2`` (never a divisor) otherwise.
    ``~callbacks.eval_freq`` restores Lightning's own schedule.
    """

    def __init__(self, eval_freq: int = 1) -> None:
        if isinstance(eval_freq, bool) or not isinstance(eval_freq, int) or eval_freq < 1:
            raise ValueError(f"callbacks.eval_freq.eval_freq={eval_freq!r}: must be a positive number of epochs")
        self.eval_freq = eval_freq

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        trainer.check_val_every_n_epoch = 1 if epoch % self.eval_freq == 0 else epoch + 2


#: Checkpoint key of the raw (not averaged) module weights when EMA is on; ``state_dict`` holds the EMA weights then,
#: so every reader of ``state_dict`` gets them by default. The name is Lightning's own (``WeightAveraging``).
RAW_STATE_KEY = "current_model_state"


class GeneratorEMA(L.Callback):
    """Exponential moving average of the generator's weights (BasicSR, Restormer, DA-CLIP: decay 0.999).

    After each optimisation step ``s``: for ``s <= start_step`` the average is a copy of the weights (it starts
    from the weights of step ``start_step``, not from the random initialisation), afterwards every
    ``every_n_steps``-th step ``ema = decay · ema + (1 - decay) · w`` for floating-point parameters and buffers
    (integer buffers are copied). Validation, hence the checkpoint chosen by ``val/psnr``, runs on the averaged
    weights; at the end of training the module holds them, so the test does too.

    Checkpoints keep both: ``state_dict`` holds the module with the averaged generator weights (what eval, predict
    and ``weights_path=`` read unless told otherwise), :data:`RAW_STATE_KEY` the raw weights the optimiser steps,
    and this callback's state the counters, so ``resume`` continues the average exactly. Only the generator is
    averaged: the frozen CLIP prior is not trained and is not in the module's state.

    Lightning's own ``EMAWeightAveraging`` averages a deep copy of the whole LightningModule (with the CLIP prior:
    hundreds of MB copied for nothing on every CLIP-guided run) and starts from the initial weights; hence ours.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0, every_n_steps: int = 1) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay={decay}: must be in (0, 1), e.g. 0.999")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"ema.start_step={start_step!r}: must be a whole number of steps >= 0")
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"ema.every_n_steps={every_n_steps!r}: must be a whole number >= 1")
        self.decay, self.start_step, self.every_n_steps = float(decay), start_step, every_n_steps
        self.ema: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._last_step = 0
        self._swapped = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.ema = {k: v.detach().clone() for k, v in pl_module.generator.state_dict().items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.ema is None or step == self._last_step:   # no optimiser step (accumulation, a skipped batch)
            return
        self._last_step = step
        current = pl_module.generator.state_dict()
        if step <= self.start_step:
            for k, v in self.ema.items():
                v.copy_(current[k])
            return
        if (step - self.start_step) % self.every_n_steps:
            return
        floating = [k for k, v in self.ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.ema[k] for k in floating], [current[k] for k in floating], 1.0 - self.decay)
        for k, v in self.ema.items():
            if not v.is_floating_point():
                v.copy_(current[k])
        self.updates += 1

    @torch.no_grad()
    def _swap(self, pl_module) -> None:
        current = pl_module.generator.state_dict()
        for k, v in self.ema.items():
            held = current[k].clone()
            current[k].copy_(v)
            v.copy_(held)
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.ema is not None and not self._swapped:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.ema is not None and self._swapped:
            self._swap(pl_module)

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        if self.ema is not None and not self._swapped:
            self._swap(pl_module)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start_step": self.start_step, "every_n_steps": self.every_n_steps,
                "updates": self.updates, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.updates, self._last_step = int(state_dict["updates"]), int(state_dict["last_step"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.ema is None:
            return
        held = {f"generator.{k}": v.detach().clone() for k, v in self.ema.items()}
        state = checkpoint["state_dict"]
        if self._swapped:   # the module holds the average right now, and self.ema the raw weights
            checkpoint[RAW_STATE_KEY], checkpoint["state_dict"] = {**state, **held}, state
        else:
            checkpoint[RAW_STATE_KEY], checkpoint["state_dict"] = state, {**state, **held}

    @torch.no_grad()
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.ema is None:
            return
        # Lightning has loaded ``state_dict`` (the average) into the module; the optimiser steps the raw weights.
        prefix = "generator."
        averaged = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        if RAW_STATE_KEY not in checkpoint:
            log.warning("ema: the checkpoint holds no EMA state (saved with ema.enabled=false); the average starts "
                        "from its weights")
            self.ema = {k: v.detach().clone() for k, v in pl_module.generator.state_dict().items()}
            return
        for k, v in self.ema.items():
            v.copy_(averaged[k])
        pl_module.load_state_dict(checkpoint[RAW_STATE_KEY], strict=True)


#: Text chunks of a saved test output naming the files it was restored from and scored against.
SOURCE_KEYS = ("clipdehaze-input", "clipdehaze-target")


class SaveTestOutputs(L.Callback):
    """Write each test image's restored output (clamped to [0, 1], 8-bit PNG) to ``dirpath/<input stem>.png``, with
    the absolute paths of its input and target files in the PNG's text chunks (:data:`SOURCE_KEYS`), so a reader
    (``clipdehaze-compare``'s image viewer) finds all three without the run's data config. Each rank writes the
    images it scored."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from clipdehaze.data.io import save_image

        if outputs is None:
            return
        test_set = getattr(getattr(trainer, "datamodule", None), "test_set", None)
        pairs = getattr(getattr(test_set, "dataset", test_set), "pairs", None)
        for out, name, index in zip(outputs, batch["name"], batch["index"].tolist()):
            text = {}
            if pairs is not None:
                text = {k: str(Path(p).resolve()) for k, p in zip(SOURCE_KEYS, pairs[index]) if p is not None}
            save_image(out.detach().float().clamp(0, 1).cpu(), self.dirpath / f"{Path(name).stem}.png", text=text)


class TestProgressLog(L.Callback):
    """Log the test pass as ``test: [done/total] <last image> (elapsed, ETA)`` lines where no terminal shows the
    progress bar (stdout is not a TTY: nohup, SLURM, CI), at the rate of :class:`clipdehaze.utils.progress.ProgressLog`
    (the first and last image, and every ~30 s or every tenth of the images). Rank 0 logs its own share under DDP."""

    def __init__(self, every_s: float = 30.0, every_fraction: float = 0.1, force: bool = False) -> None:
        self.every_s, self.every_fraction, self.force = every_s, every_fraction, force
        self.progress = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        import sys

        from clipdehaze.utils.progress import ProgressLog

        self.progress = None
        if not trainer.is_global_zero or (sys.stdout.isatty() and not self.force):
            return
        loaders = trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        total = 0
        for loader, batches in zip(loaders, trainer.num_test_batches):
            sampler = getattr(loader, "sampler", None)
            available = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else len(loader.dataset)
            total += min(available, int(batches) * (loader.batch_size or 1)) if batches != float("inf") else available
        share = f" (rank 0 of {trainer.world_size})" if trainer.world_size > 1 else ""
        self.progress = ProgressLog(total, log, prefix=f"test{share}: ", every_s=self.every_s,
                                    every_fraction=self.every_fraction)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.progress is not None:
            names = batch.get("name") or []
            self.progress.advance(len(names) or 1, names[-1] if names else "")


PANEL_LABELS = ("hazy", "output", "GT", "CLIP density")


def panel_row(tiles: list[torch.Tensor]) -> torch.Tensor:
    """Side by side (3, H, W) images in [0, 1] -> one (H, W', 3) uint8 image (what image panels show: wandb
    casts float arrays to uint8 as they are, which turns [0, 1] images black)."""
    row = torch.cat([t.detach().float().cpu().clamp(0, 1).expand(3, -1, -1) for t in tiles], dim=2)
    return (row * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


class ImagePanels(L.Callback):
    """Validation image panels (hazy | output | GT | CLIP density map where the generator takes one) for wandb and
    TensorBoard every ``every_n_epochs``, ``num_images`` of them collected over the first validation batches;
    with wandb also a per-image Table of test metrics and optionally the best checkpoint as an artifact. A no-op
    without a wandb or TensorBoard logger."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 4, log_best_checkpoint: bool = False) -> None:
        if every_n_epochs < 1 or num_images < 0:
            raise ValueError(f"image panels need every_n_epochs >= 1 and num_images >= 0, got {every_n_epochs} and "
                             f"{num_images}")
        self.every_n_epochs, self.num_images, self.log_best_checkpoint = every_n_epochs, num_images, log_best_checkpoint
        self._rows: list[tuple[torch.Tensor, str]] = []

    @staticmethod
    def _logger(trainer: L.Trainer, kind: str):
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        cls = {"wandb": WandbLogger, "tensorboard": TensorBoardLogger}[kind]
        return next((lg for lg in trainer.loggers if isinstance(lg, cls)), None)

    def _active(self, trainer: L.Trainer) -> bool:
        return (not trainer.sanity_checking and trainer.is_global_zero and trainer.current_epoch % self.every_n_epochs == 0
                and (self._logger(trainer, "wandb") or self._logger(trainer, "tensorboard")) is not None)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        need = self.num_images - len(self._rows)
        if need <= 0 or outputs is None or not self._active(trainer):
            return
        x = batch["input"][:need]
        density = None
        if "density_map" in getattr(pl_module.generator, "clip_inputs", ()):
            served = {"clip": {k: v[:need] for k, v in batch["clip"].items()}} if "clip" in batch else None
            with torch.no_grad():
                density = pl_module.clip_inputs(x, served)["density_map"]
        for i in range(x.shape[0]):
            tiles = [x[i], outputs[i], batch["target"][i]] + ([density[i]] if density is not None else [])
            caption = " | ".join(PANEL_LABELS[: len(tiles)]) + f" ({batch['name'][i]})"
            self._rows.append((panel_row(tiles), caption))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._rows or not self._active(trainer):
            return
        step = trainer.global_step
        if (lg := self._logger(trainer, "wandb")) is not None:
            import wandb

            panels = [wandb.Image(row.numpy(), caption=caption) for row, caption in self._rows]
            lg.experiment.log({"val/images": panels, "trainer/global_step": step})
        if (lg := self._logger(trainer, "tensorboard")) is not None:
            for i, (row, caption) in enumerate(self._rows):
                lg.experiment.add_image(f"val/images/{i}", row, step, dataformats="HWC")
                lg.experiment.add_text(f"val/images/{i}", caption, step)
        self._rows = []

    def on_test_end(self, trainer, pl_module) -> None:  # after the module's epoch end computed test_rows
        lg = self._logger(trainer, "wandb")
        rows = getattr(pl_module, "test_rows", None)
        if lg is None or not rows or not trainer.is_global_zero:
            return
        import wandb

        cols = list(rows[0])
        lg.experiment.log({pl_module.test_key("per_image"): wandb.Table(columns=cols,
                                                                         data=[[r[c] for c in cols] for r in rows])})

    def on_fit_end(self, trainer, pl_module) -> None:
        lg = self._logger(trainer, "wandb")
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if lg is None or not self.log_best_checkpoint or not best or not trainer.is_global_zero:
            return
        import wandb

        art = wandb.Artifact(f"model-{lg.experiment.id}", type="model",
                             metadata={"best_score": float(trainer.checkpoint_callback.best_model_score or 0)})
        art.add_file(best)
        lg.experiment.log_artifact(art, aliases=["best"])
