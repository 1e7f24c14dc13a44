"""``clipdehaze-eval``: test a checkpoint (or a parameter-free prior) on a dataset.

    clipdehaze-eval ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt             # the data it was trained on
    clipdehaze-eval ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt data=sots_indoor
    clipdehaze-eval model=dcp data=sots_outdoor
    clipdehaze-eval model=dehazeformer_s weights_path=dehazeformer-s.pth data=sots_indoor
    clipdehaze-eval ckpt_path=... data=folder data.root=photos/ tta=x8       # no GT: NIQE, BRISQUE, dark channel

Without ``data=``, a training checkpoint is scored on the data config it was trained with (saved in the
checkpoint; printed); ``data=`` scores another set (the difference is printed). Without ``metrics=``, the
checkpoint's own protocol (for a folder without ground truth, ``data=folder``: the no-reference metrics). Writes ``metrics.json`` (numbers, protocol, scored-image manifest, weights and code
provenance), ``per_image.csv`` and ``grid.png`` (input | output | GT).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, open_dict

from clipdehaze.artefacts import PER_IMAGE_CSV, floats, inference_weights, run_summary, write_run_results
from clipdehaze.build import (
    attach_clip_cache,
    build_datamodule,
    build_trainer,
    checkpoint_run_config,
    eval_data_config,
    module_for_inference,
)
from clipdehaze.metrics import NO_REFERENCE_METRICS
from clipdehaze.task import task_wrapper
from clipdehaze.utils.hydra_utils import checked_overrides, config_path, register_with_hydra

log = logging.getLogger("clipdehaze.eval")
register_with_hydra()


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(cfg.paths.output_dir)
    train_config = checkpoint_run_config(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    with open_dict(cfg):
        cfg.data = eval_data_config(cfg, train_config)
    datamodule = build_datamodule(cfg)
    if hasattr(datamodule, "check_folders"):  # a wrong data.root stops here, before a checkpoint is read
        datamodule.check_folders("test")
    if not getattr(datamodule, "has_targets", True) and cfg.get("metrics") is None:
        log.info("data=%s has no ground truth: scoring with metrics=no_reference (%s)", cfg.data.get("name"),
                 ", ".join(NO_REFERENCE_METRICS))
        with open_dict(cfg):
            cfg.metrics = {"protocol": None, "names": list(NO_REFERENCE_METRICS)}
    module = module_for_inference(cfg)
    module.hparams["sample_images"] = cfg.get("num_grid_images", 4)
    attach_clip_cache(cfg, datamodule, module, train_config)
    trainer = build_trainer(cfg)
    start = time.perf_counter()
    trainer.test(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    metrics = floats(trainer.callback_metrics)
    summary = run_summary(cfg, module, metrics, datamodule=datamodule, trainer=trainer,
                          weights=inference_weights(cfg, module), train_config=train_config,
                          ckpt_path=cfg.get("ckpt_path"), weights_path=cfg.get("weights_path"),
                          test_seconds=round(seconds, 2))
    if trainer.is_global_zero:
        write_run_results(output_dir, summary, cfg, rows=module.test_rows, rows_file=PER_IMAGE_CSV,
                          samples=module.test_samples)
    log.info("%s on %s (%s): %s", module.generator_name, summary["data"], summary["metric_protocol"], metrics)
    log.info("wrote %s", output_dir)
    return summary


@checked_overrides
@hydra.main(version_base="1.3", config_path=config_path(), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
