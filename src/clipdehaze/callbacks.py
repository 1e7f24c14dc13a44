"""Callbacks for long runs on shared clusters."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
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


class WandbPanels(L.Callback):
    """wandb extras (no-op without a WandbLogger): a validation image panel (hazy | output | GT | CLIP density map
    where the generator takes one) every ``every_n_epochs``, a per-image Table of test metrics, and optionally the
    best checkpoint as an artifact."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 4, log_best_checkpoint: bool = False) -> None:
        self.every_n_epochs, self.num_images, self.log_best_checkpoint = every_n_epochs, num_images, log_best_checkpoint

    @staticmethod
    def _wandb_logger(trainer: L.Trainer):
        from lightning.pytorch.loggers import WandbLogger

        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        lg = self._wandb_logger(trainer)
        if lg is None or batch_idx != 0 or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        import torch
        import wandb

        with torch.no_grad():
            x = batch["input"][: self.num_images]
            served = {"clip": {k: v[: self.num_images] for k, v in batch["clip"].items()}} if "clip" in batch else None
            clip = pl_module.clip_inputs(x, served)
            out = pl_module.generator(x, **clip).clamp(0, 1)
        panels = []
        for i in range(x.shape[0]):
            tiles = [x[i], out[i], batch["target"][i]]
            if "density_map" in clip:
                tiles.append(clip["density_map"][i].expand(3, -1, -1))
            row = torch.cat([t.detach().float().cpu() for t in tiles], dim=2)
            panels.append(wandb.Image(row.permute(1, 2, 0).numpy(), caption=" | ".join(
                ["hazy", "output", "GT", "CLIP density"][: len(tiles)]) + f" ({batch['name'][i]})"))
        lg.experiment.log({"val/images": panels, "trainer/global_step": trainer.global_step})

    def on_test_end(self, trainer, pl_module) -> None:  # after the module's epoch end computed test_rows
        lg = self._wandb_logger(trainer)
        rows = getattr(pl_module, "test_rows", None)
        if lg is None or not rows or not trainer.is_global_zero:
            return
        import wandb

        cols = list(rows[0])
        lg.experiment.log({pl_module.test_key("per_image"): wandb.Table(columns=cols,
                                                                         data=[[r[c] for c in cols] for r in rows])})

    def on_fit_end(self, trainer, pl_module) -> None:
        lg = self._wandb_logger(trainer)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if lg is None or not self.log_best_checkpoint or not best or not trainer.is_global_zero:
            return
        import wandb

        art = wandb.Artifact(f"model-{lg.experiment.id}", type="model",
                             metadata={"best_score": float(trainer.checkpoint_callback.best_model_score or 0)})
        art.add_file(best)
        lg.experiment.log_artifact(art, aliases=["best"])
