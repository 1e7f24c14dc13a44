"""Pieces shared by the entry points: build the module, trainer, callbacks and loggers from a config; write
run files (metrics.json, per-image CSV, image grid)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clipdehaze.lit_module import DehazeLitModule
from clipdehaze.models import create_generator
from clipdehaze.utils.checkpoint import load_generator_weights
from clipdehaze.utils.files import atomic_write, to_json, write_in_order

log = logging.getLogger("clipdehaze")


def _instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger); ``null`` entries are skipped."""
    objs = []
    for _, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            objs.append(instantiate(conf))
    return objs


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
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
    if cfg.get("save_test_outputs"):
        from clipdehaze.callbacks import SaveTestOutputs

        callbacks.append(SaveTestOutputs(Path(cfg.paths.output_dir) / "test_outputs"))
    loggers = _instantiate_group(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


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
    module = DehazeLitModule(generator=model_cfg, clip=cfg.get("clip"), metrics=metrics, dataset_name=dataset_name)
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

    run_config = DehazeLitModule.read_checkpoint(ckpt_path).get(RUN_CONFIG_KEY)
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
    from clipdehaze.utils.trust import check_config

    # A checkpoint is a file from anywhere: its data config may build only one of clipdehaze's data modules.
    check_config(trained_on, "data", cfg.ckpt_path, f"{RUN_CONFIG_KEY}.data", fix="Pass data=<name> to choose the "
                 "data yourself")
    log.info("no data= given: scoring the checkpoint's training data %s (pass data=<name> for another set)",
             _data_label(trained_on))
    return OmegaConf.create(trained_on)


def inference_weights(cfg: DictConfig, module: DehazeLitModule) -> dict[str, Any]:
    """The ``weights`` provenance of an eval/predict module (see :mod:`clipdehaze.provenance`)."""
    from clipdehaze.provenance import weights_provenance

    if cfg.get("ckpt_path"):
        return {**weights_provenance("checkpoint", cfg.ckpt_path), "ema": module.ema_weights}
    if cfg.get("weights_path"):
        return weights_provenance("published", cfg.weights_path)
    if any(True for _ in module.generator.parameters()):
        return weights_provenance("random")
    return weights_provenance("none")
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


def clip_control_record(cfg: DictConfig, module: DehazeLitModule,
                        train_config: dict[str, Any] | None = None) -> dict[str, str] | None:
    """``metrics.json``'s ``clip_control``: the prior controls of training and test, None for a generator without
    CLIP inputs."""
    from clipdehaze.models.clip.control import PriorControl
    from clipdehaze.models import clip_inputs_of

    if not clip_inputs_of(module.generator):
        return None
    return PriorControl.from_config(cfg, train_config, cfg.get("ckpt_path")).record()


#: Per-image metrics of the test split, written by clipdehaze-train and clipdehaze-eval alike.
PER_IMAGE_CSV = "per_image.csv"


def finish_loggers(trainer: L.Trainer, failed: bool = False) -> None:
    """Close the job's wandb run, also when the job failed (marked so): a multirun runs its jobs in one process,
    and a run left open would swallow the next job's logs. Lightning finalizes the other loggers itself."""
    if not any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
        return
    import wandb

    if wandb.run is not None:
        try:
            wandb.finish(exit_code=1 if failed else 0)
        except Exception as e:  # noqa: BLE001 - closing the logger must not hide the job's own error
            log.warning("could not finish the wandb run: %s", e)


def floats(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (NaN/Inf as null, see :func:`clipdehaze.utils.files.to_json`), written atomically."""
    atomic_write(path, to_json(obj))


def write_rows_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    fields = list(rows[0]) if rows else ["index", "name"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


def write_run_results(output_dir: str | Path, summary: dict[str, Any], cfg: DictConfig,
                      rows: list[dict[str, Any]] | None = None, rows_file: str = "per_image.csv",
                      samples: list[dict[str, torch.Tensor]] | None = None) -> None:
    """A run's result files, most valuable first: ``metrics.json``, the per-image CSV, ``config_resolved.yaml``,
    ``grid.png``. Each is atomic; a failed one (a full disk) does not stop the others, and the error names it."""
    out = Path(output_dir)
    files: list[tuple[Path, Any]] = [(out / "metrics.json", lambda p: write_json(p, summary))]
    if rows is not None:
        files.append((out / rows_file, lambda p: write_rows_csv(p, rows)))
    files.append((out / "config_resolved.yaml", lambda p: atomic_write(p, OmegaConf.to_yaml(cfg, resolve=True))))
    if samples:
        files.append((out / "grid.png", lambda p: save_grid(samples, p)))
    write_in_order(files)


#: Height of one image row in the ``grid.png`` that train/eval write (the demo cuts its combined grid from them).
GRID_ROW_HEIGHT = 192


def save_grid(samples: list[dict[str, torch.Tensor]], path: str | Path, height: int = GRID_ROW_HEIGHT) -> None:
    """One row per image: input | output | target (each resized to ``height``), written atomically."""
    from clipdehaze.data.io import encode_png

    rows = []
    for s in samples:
        tiles = [s[k] for k in ("input", "output", "target") if k in s]
        resized = []
        for t in tiles:
            h, w = t.shape[-2:]
            nw = max(1, round(w * height / h))
            resized.append(torch.nn.functional.interpolate(t[None].float(), size=(height, nw), mode="bilinear",
                                                           align_corners=False, antialias=True)[0])
        gap = torch.ones(3, height, 4)
        row = []
        for r in resized:
            row += [r, gap]
        rows.append(torch.cat(row[:-1], dim=2))
    if not rows:
        return
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    atomic_write(path, encode_png(torch.cat(rows, dim=1).clamp(0, 1)))


def run_summary(cfg: DictConfig, module: DehazeLitModule, metrics: dict[str, float], *, datamodule: Any = None,
                trainer: L.Trainer | None = None, weights: dict[str, Any] | None = None,
                train_config: dict[str, Any] | None = None, **extra) -> dict[str, Any]:
    """What metrics.json holds: numbers, the protocol they were computed under, and what produced them
    (:mod:`clipdehaze.provenance`: scored images and their manifest, weights, code, environment, config)."""
    from clipdehaze import provenance

    config = OmegaConf.to_container(cfg, resolve=True)
    rows = getattr(module, "test_rows", None)
    dataset = provenance.dataset_provenance(datamodule, [r["index"] for r in rows] if rows is not None else None)
    prior = getattr(module, "clip_prior", None)
    # An evaluated checkpoint's numbers belong to the run that trained it: its seed is the one a table averages.
    seed = (train_config or {}).get("seed", cfg.get("seed"))
    return {
        "generator": module.generator_name,
        "data": cfg.data.get("name") if cfg.get("data") else None,
        "seed": seed,
        "metric_protocol": module.protocol_description(),
        "params": sum(p.numel() for p in module.generator.parameters()),
        "metrics": metrics,
        "images": dataset.get("images"),
        "dataset": dataset,
        "weights": weights or {"origin": "unknown"},
        "clip": getattr(prior, "model_id", None),
        "clip_control": clip_control_record(cfg, module, train_config),
        "code": provenance.code_provenance(),
        "environment": provenance.environment_provenance(provenance.trainer_device(trainer)),
        "config_sha256": provenance.config_sha256({"eval": config, "train": train_config} if train_config else config),
        "config": config,
        **({"train_config": train_config} if train_config is not None else {}),
        **extra,
    }
