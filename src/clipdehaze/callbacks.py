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
