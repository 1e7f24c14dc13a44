"""Build what a job runs from its composed config: the LightningModule (fresh for training, from a checkpoint or
published weights for eval/predict), the datamodule and the data an evaluation scores, the trainer with its callbacks
and loggers, and the CLIP cache the datamodule serves. What a job writes is :mod:`clipdehaze.artefacts`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clipdehaze.lit_module import DehazeLitModule
from clipdehaze.task import track_loggers
from clipdehaze.utils.checkpoint import load_generator_weights

log = logging.getLogger("clipdehaze")


def _instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger); ``null`` entries are skipped."""
    objs = []
    for _, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            objs.append(instantiate(conf))
    return objs


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    """The ``cfg.trainer`` Trainer with the run's callbacks (the ``callbacks`` group, EMA, saved test outputs) and
    loggers (the ``logger`` group); ``overrides`` replace trainer arguments."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        # Lightning's own message ("No supported gpu backend found!") says neither which option nor what to do.
        raise RuntimeError(f"trainer.accelerator={accelerator} (trainer=gpu/ddp on a GPU) needs a CUDA GPU, and torch "
                           f"{torch.__version__} sees none here; use trainer=cpu, or trainer=default (accelerator=auto "
                           "picks the GPU where there is one)")
    callbacks = _instantiate_group(cfg.get("callbacks"))
    ema = cfg.get("ema") or {}
    if ema.get("enabled"):
        from clipdehaze.callbacks import GeneratorEMA

        callbacks.append(GeneratorEMA(decay=ema.get("decay", 0.999), start_step=ema.get("start_step", 0),
                                      every_n_steps=ema.get("every_n_steps", 1)))
    from clipdehaze.callbacks import TestProgressLog

    # Progress lines of the test pass where no terminal shows the bar (nohup, SLURM); silent in a terminal.
    callbacks.append(TestProgressLog())
    if cfg.get("save_test_outputs"):
        from clipdehaze.callbacks import SaveTestOutputs

        callbacks.append(SaveTestOutputs(Path(cfg.paths.output_dir) / "test_outputs"))
    loggers = _instantiate_group(cfg.get("logger"))
    # Built, they belong to the job: its task wrapper finishes them, also when the job fails.
    track_loggers(loggers)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The datamodule of ``cfg.data`` (one of :mod:`clipdehaze.data`'s, built by its ``_target_``)."""
    return instantiate(cfg.data)


def build_module(cfg: DictConfig) -> DehazeLitModule:
    """A fresh module for training from the composed config."""
    return DehazeLitModule(
        generator=cfg.model,
        loss=cfg.get("loss"),
        optimizer=cfg.get("optimizer"),
        scheduler=cfg.get("scheduler"),
        clip=cfg.get("clip"),
        metrics=cfg.get("metrics"),
        nonfinite_loss=cfg.get("nonfinite_loss", "raise"),
        dataset_name=cfg.data.get("name"),
        compile=cfg.get("compile"),
    )


def module_for_inference(cfg: DictConfig) -> DehazeLitModule:
    """The module eval/predict use: from ``ckpt_path`` (a training checkpoint), or from ``model=`` plus
    ``weights_path`` (published weights, strict), or a parameter-free ``model=`` such as ``dcp``; with the
    self-ensemble ``tta=`` of the run."""
    from clipdehaze.utils.tta import check_tta

    module = _inference_module(cfg)
    module.tta = check_tta(cfg.get("tta", "none"))
    return module


def _inference_module(cfg: DictConfig) -> DehazeLitModule:
    metrics = cfg.get("metrics")
    dataset_name = cfg.data.get("name") if cfg.get("data") else None
    model_cfg = cfg.get("model")
    if cfg.get("ckpt_path"):
        overrides = dict(metrics=OmegaConf.to_container(metrics) if metrics else None, dataset_name=dataset_name,
                         expect_generator=model_cfg.name if model_cfg else None,
                         use_ema=bool(cfg.get("use_ema", True)))
        if cfg.get("clip"):
            overrides["clip"] = OmegaConf.to_container(cfg.clip, resolve=True)
        return DehazeLitModule.load_checkpoint(cfg.ckpt_path, **overrides)
    if not model_cfg:
        raise ValueError("nothing to evaluate: pass ckpt_path=<run>/checkpoints/last.ckpt, or model=<name> "
                         "(with weights_path=<official weights> for a trained generator, or model=dcp)")
    module = DehazeLitModule(generator=model_cfg, clip=cfg.get("clip"), metrics=metrics, dataset_name=dataset_name,
                             inference=True)
    n_params = sum(p.numel() for p in module.generator.parameters())
    if cfg.get("weights_path"):
        load_generator_weights(module.generator, cfg.weights_path)
    elif n_params and not cfg.get("allow_random_weights", False):
        raise ValueError(
            f"model={model_cfg.name} has {n_params:,} trainable parameters but no weights were given: pass "
            "ckpt_path=<training checkpoint> or weights_path=<published weights> "
            "(allow_random_weights=true evaluates the random initialisation on purpose)")
    return module


def checkpoint_run_config(ckpt_path: str) -> dict[str, Any] | None:
    """The resolved training config a clipdehaze checkpoint carries (None for checkpoints saved before it did)."""
    from clipdehaze.lit_module import RUN_CONFIG_KEY

    # The weights are checked when they are loaded, against the use_ema= choice.
    run_config = DehazeLitModule.read_checkpoint(ckpt_path, check_weights=False).get(RUN_CONFIG_KEY)
    return run_config if isinstance(run_config, dict) else None


def _data_label(data: Any) -> str:
    data = OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else dict(data)
    where = data.get("test_root") or data.get("root")
    return f"{data.get('name')!r}" + (f" at {where}" if where else "")


def eval_data_config(cfg: DictConfig, train_config: dict[str, Any] | None) -> DictConfig:
    """The data an evaluation scores: ``data=`` when given (noting a difference from the checkpoint's training
    data), else the training data config stored in the checkpoint; without either, an error naming both."""
    trained_on = (train_config or {}).get("data")
    if cfg.get("data") is not None:
        if trained_on and _data_label(cfg.data) != _data_label(trained_on):
            log.warning("scoring data %s; the checkpoint was trained on data %s", _data_label(cfg.data),
                        _data_label(trained_on))
        return cfg.data
    if not trained_on:
        what = (f"checkpoint {cfg.ckpt_path} records no training data config (saved by an older clipdehaze)"
                if cfg.get("ckpt_path") else f"model={cfg.model.name if cfg.get('model') else None} has no training run")
        raise ValueError(f"no data to score: {what}; pass data=<name> (e.g. data=synthetic, data=sots_indoor, "
                         "data=paired data.root=/path/to/set)")
    from clipdehaze.lit_module import RUN_CONFIG_KEY
    from clipdehaze.utils.trust import check_arguments, check_config

    # A checkpoint is a file from anywhere: its data config may build only one of clipdehaze's data modules, reading
    # and writing only inside the data folder, the cache and the run of this run's own config.
    check_config(trained_on, "data", cfg.ckpt_path, f"{RUN_CONFIG_KEY}.data", fix="Pass data=<name> to choose the "
                 "data yourself")
    check_arguments(trained_on, cfg.ckpt_path, f"{RUN_CONFIG_KEY}.data", fix="Pass data=<name> to choose the data "
                    "yourself, or make its folder yours: paths.data_dir=<a folder holding it> (CLIPDEHAZE_DATA_DIR)",
                    locations=[cfg.paths.data_dir, cfg.paths.cache_dir, cfg.paths.output_dir])
    log.info("no data= given: scoring the checkpoint's training data %s (pass data=<name> for another set)",
             _data_label(trained_on))
    return OmegaConf.create(trained_on)


def check_crop_fits_model(datamodule: L.LightningDataModule, module: DehazeLitModule) -> None:
    """A training or validation crop below the generator's minimum input side fails deep in the first step; say
    which option to raise before anything runs."""
    minimum = getattr(module.generator, "min_size", None)
    if not minimum:
        return
    for option in ("crop_size", "val_crop_size"):
        size = getattr(datamodule, option, None)
        if size and size < minimum:
            raise ValueError(f"data.{option}={size} is below the smallest input model={module.generator_name} "
                             f"takes ({minimum} px per side); set data.{option}={minimum} or more")


def attach_clip_cache(cfg: DictConfig, datamodule: L.LightningDataModule, module: DehazeLitModule,
                      train_config: dict[str, Any] | None = None) -> None:
    """With ``clip_cache=true``, serve the generator's cacheable CLIP inputs from disk (computed once per image,
    keyed by content hash + CLIP model id + prompts; stale entries are rebuilt, never used). A prior control
    other than ``real`` (``clip_control``, ``test_clip_control``) serves the same full-image outputs, redirected,
    averaged or zeroed, also with ``clip_cache=false`` (then from memory): see :mod:`clipdehaze.models.clip.control`."""
    from clipdehaze.models.clip.control import MemoryClipStore, PriorControl, uncontrollable_inputs
    from clipdehaze.models import clip_inputs_of

    control = PriorControl.from_config(cfg, train_config, cfg.get("ckpt_path"))
    if control.controlled and not clip_inputs_of(module.generator):
        log.warning("prior control %s has no effect: model=%s takes no CLIP input", control.record(),
                    module.generator_name)
    if module.clip_prior is None or not hasattr(datamodule, "attach_clip_cache"):
        return
    from clipdehaze.data.io import load_image
    from clipdehaze.models.clip import ClipCache
    from clipdehaze.models.clip.cache import CACHEABLE

    if control.controlled and (bad := uncontrollable_inputs(clip_inputs_of(module.generator))):
        raise ValueError(f"model={module.generator_name} takes CLIP inputs {bad}, which a prior control cannot "
                         f"replace (not stored per image); use clip_control=real")
    names = [n for n in clip_inputs_of(module.generator) if n in CACHEABLE]
    if not names:
        return
    if cfg.get("clip_cache"):
        store = ClipCache(Path(cfg.paths.cache_dir) / "clip", module.clip_prior, names=names, loader_fn=load_image)
    elif control.controlled:
        store = MemoryClipStore(module.clip_prior, names, loader_fn=load_image)
    else:
        return
    datamodule.attach_clip_cache(store, names, control=control)
