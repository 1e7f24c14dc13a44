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
