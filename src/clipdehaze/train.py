"""``clipdehaze-train``: fit a generator, keep last/best checkpoints, then test the best one.

    clipdehaze-train model=dehazeformer_t data=synthetic trainer=cpu
    clipdehaze-train -m model=dehazeformer_t,mixdehazenet_t seed=0,1,2
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from clipdehaze.artefacts import PER_IMAGE_CSV, floats, run_summary, write_run_results
from clipdehaze.build import attach_clip_cache, build_datamodule, build_module, build_trainer, check_crop_fits_model
from clipdehaze.lit_module import DehazeLitModule
from clipdehaze.loggers import ResumableCSVLogger
from clipdehaze.provenance import weights_provenance
from clipdehaze.task import task_wrapper
from clipdehaze.utils.hydra_utils import checked_overrides, config_path, register_with_hydra

log = logging.getLogger("clipdehaze.train")
register_with_hydra()


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path=last`` / ``resume=auto`` -> the run's ``checkpoints/last.ckpt`` when it exists."""
    ckpt = cfg.get("ckpt_path")
    if cfg.get("resume") == "auto" or ckpt == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        if ckpt == "last":
            raise FileNotFoundError(f"ckpt_path=last but {last} does not exist")
        log.info("resume=auto: no %s yet, starting fresh", last)
        return None
    return ckpt


#: What a resumed run must share with the run that wrote its checkpoint: the groups that define the model and its
#: training recipe. Everything else says how the run executes (trainer, e.g. trainer.max_epochs extended; logger,
#: callbacks, paths, compile, clip_cache ...), and so do the keys of these groups that
#: :func:`clipdehaze.provenance.is_run_location_key` calls run locations (data.root, data.num_workers, cache dirs).
RESUME_KEYS = ("model", "data", "loss", "optimizer", "scheduler", "clip", "metrics", "ema", "seed", "clip_control")


def recipe_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: stored -> current`` for every :data:`RESUME_KEYS` setting on which two resolved run configs differ."""
    from clipdehaze.provenance import flatten, is_run_location_key

    old, new = ({k: v for k, v in flatten({k: c.get(k) for k in RESUME_KEYS}).items() if not is_run_location_key(k)}
                for c in (stored, current))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def checked_ckpt_path(cfg: DictConfig, output_dir: Path) -> tuple[str | None, int]:
    """The checkpoint to resume from and the global step it was saved at, read and checked before anything is
    built: Lightning's own load would fail on a corrupt file with a bare zip/unpickling error and on another
    generator's weights with a list of state_dict keys; this names the file (and both generators). ``resume=auto``
    / ``ckpt_path=last`` refuse a checkpoint written with other :data:`RESUME_KEYS` settings, listing them; an
    explicit ``ckpt_path=<file>`` continues it on purpose, with a warning listing them."""
    from clipdehaze.lit_module import RUN_CONFIG_KEY

    ckpt = resolve_ckpt_path(cfg, output_dir)
    if ckpt is None:
        return None, 0
    state = DehazeLitModule.read_checkpoint(ckpt, expect_generator=cfg.model.name)
    stored = state.get(RUN_CONFIG_KEY)
    if not isinstance(stored, dict):
        log.warning("resume: %s records no run config (saved by an older clipdehaze); its settings are not compared "
                    "with this run's", ckpt)
    elif diff := recipe_differences(stored, OmegaConf.to_container(cfg, resolve=True)):
        shown = "; ".join(diff[:8]) + (f"; ... ({len(diff)} in all)" if len(diff) > 8 else "")
        if cfg.get("resume") == "auto" or cfg.get("ckpt_path") == "last":
            how = "resume=auto" if cfg.get("resume") == "auto" else "ckpt_path=last"
            raise ValueError(f"{how} would continue {ckpt}, written by a run with other settings ({shown}); a resumed "
                             f"run keeps its {', '.join(RESUME_KEYS)}: rerun with that run's settings, start a new "
                             f"run (leave hydra.run.dir unset), or continue it with these settings on purpose: "
                             f"ckpt_path={ckpt}")
        log.warning("resume: continuing %s with other settings than the run that wrote it: %s", ckpt, shown)
    return ckpt, int(state.get("global_step", 0))


#: What the tested best checkpoint takes from this run's config rather than from its file.
_OWN_SECTIONS = ("loss", "optimizer", "scheduler", "clip", "metrics")


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test; returns (and writes to ``<run>/metrics.json``) the final metrics."""
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path, resume_step = checked_ckpt_path(cfg, output_dir) if cfg.get("train", True) else (None, 0)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    if hasattr(datamodule, "check_folders"):  # a wrong data.root or a test-only set stops before the model is built
        datamodule.check_folders(None if cfg.get("train", True) else "test")
    module = build_module(cfg)
    check_crop_fits_model(datamodule, module)
    if not any(p.requires_grad for p in module.generator.parameters()):
        raise ValueError(f"model={cfg.model.name} has no trainable parameters; evaluate it with "
                         f"`clipdehaze-eval model={cfg.model.name} data=...` instead of training it")
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    attach_clip_cache(cfg, datamodule, module)
    trainer = build_trainer(cfg)
    return _fit_and_test(cfg, output_dir, datamodule, module, trainer, ckpt_path, resume_step)


def _fit_and_test(cfg: DictConfig, output_dir: Path, datamodule, module: DehazeLitModule, trainer: L.Trainer,
                  ckpt_path: str | None, resume_step: int) -> dict[str, Any]:
    if ckpt_path is not None:
        for lg in trainer.loggers:
            if isinstance(lg, ResumableCSVLogger) and (dropped := lg.keep_until(resume_step)):
                log.info("resume: dropped %d CSV log rows after step %d (the resumed run logs them again)",
                         dropped, resume_step)
    for lg in trainer.loggers:
        lg.log_hyperparams(module.run_config)

    start = time.perf_counter()
    if cfg.get("train", True):
        # weights_only: whatever the torch version's default, resuming never unpickles arbitrary objects.
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_s = time.perf_counter() - start
    train_metrics = floats(trainer.callback_metrics)

    test_metrics: dict[str, float] = {}
    test_s = None
    weights = {"origin": "trained"}
    if cfg.get("test", True):
        start = time.perf_counter()
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            # Built from this run's own config: a best checkpoint named by a resumed run's state is only read.
            best_module = type(module).load_checkpoint(best, **{k: module.hparams[k] for k in _OWN_SECTIONS})
            trainer.test(best_module, datamodule=datamodule)
            module = best_module
            weights = {**weights_provenance("trained", best), "ema": best_module.ema_weights}
        else:
            log.warning("no best checkpoint recorded; testing the current weights")
            trainer.test(module, datamodule=datamodule)
        test_metrics = floats(trainer.callback_metrics)
        test_s = time.perf_counter() - start

    metrics = {**train_metrics, **test_metrics}
    ckpt_cb = trainer.checkpoint_callback
    best_score = ckpt_cb.best_model_score if ckpt_cb is not None else None
    summary = run_summary(cfg, module, metrics, datamodule=datamodule, trainer=trainer, weights=weights,
                          fit_seconds=round(fit_s, 2),
                          test_seconds=round(test_s, 2) if test_s is not None else None,
                          global_step=trainer.global_step,
                          best_ckpt=ckpt_cb.best_model_path if ckpt_cb else None,
                          monitor=ckpt_cb.monitor if ckpt_cb else None,
                          best_model_score=float(best_score) if best_score is not None else None)
    if trainer.is_global_zero:  # under DDP every rank holds the same synced numbers; one writes them
        tested = cfg.get("test", True)
        write_run_results(output_dir, summary, cfg, rows=getattr(module, "test_rows", []) if tested else None,
                          rows_file=PER_IMAGE_CSV, samples=module.test_samples if tested else None)
    log.info("metrics (%s): %s", summary["metric_protocol"], metrics)
    return summary


def objective(summary: dict[str, Any], metric: str | None) -> float | None:
    """The value hparams_search sweepers optimise: for the checkpoint callback's monitored metric, its best score
    (the checkpoint the run keeps and tests), not the last epoch's value; any other metric as last logged."""
    if not metric:
        return None
    if metric == summary.get("monitor") and summary.get("best_model_score") is not None:
        return summary["best_model_score"]
    if metric not in summary["metrics"]:
        logged = ", ".join(sorted(summary["metrics"])) or "nothing"
        raise ValueError(f"optimized_metric={metric!r} was not logged by this run (logged: {logged}); a val/ metric "
                         "needs at least one validation: check trainer.max_steps / check_val_every_n_epoch")
    return summary["metrics"][metric]


@checked_overrides
@hydra.main(version_base="1.3", config_path=config_path(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    return objective(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
