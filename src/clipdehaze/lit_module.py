"""The one LightningModule behind every generator.

Everything architecture-specific lives in the generator (``clipdehaze.models.generators``); this module only
knows the generator contract, :class:`clipdehaze.models.Generator`:

* ``forward(x, **clip_inputs)`` maps images in [0, 1] to images in [0, 1] (unclamped);
* ``generator.clip_inputs`` names what it wants from the frozen CLIP prior (``text_feature``,
  ``density_map``, ``image_embedding`` ...); the data module may serve them from the embedding cache as
  ``batch["clip"]``, otherwise they are computed on the fly;
* ``generator.auxiliary_terms`` names the training-only loss terms ``generator.auxiliary_losses(x, target,
  output, clip_prior)`` returns (e.g. a distillation loss); each is weighted by ``loss_fn.aux_weights[name]`` and
  added to the reconstruction loss, so their weights are loss config (``loss=sar_weather``), not model config. A
  term the loss gives no weight counts 0 (a loss that does not know a term cannot have meant 1), and when no term
  has a positive weight the call is skipped, so it needs no CLIP; a term the generator was built for but the loss
  switches off is warned about once per fit (its head then trains nothing).

All constructor arguments are plain containers (dicts of numbers and strings), so checkpoints hold no pickled
objects and load with ``torch.load(..., weights_only=True)``. The frozen CLIP is rebuilt from its config and is
never part of ``state_dict()``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from clipdehaze.losses import L1Loss
from clipdehaze.metrics import ImageQualityMetrics, describe_protocol
from clipdehaze.models import Generator, clip_inputs_of, create_generator
from clipdehaze.utils.tta import TTA_DESCRIPTIONS, self_ensemble

log = logging.getLogger(__name__)


def _plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> plain dict/list (resolved), so hparams pickle nothing."""
    if isinstance(cfg, (DictConfig,)) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def architecture_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model`` config's factory arguments: without ``name``."""
    return {k: v for k, v in model_cfg.items() if k != "name"}


#: The hyper-parameter sections only training builds: a module built for inference never builds them.
TRAINING_ONLY_HPARAMS = ("loss", "optimizer", "scheduler")

#: Checkpoint key of the resolved training config (see ``DehazeLitModule.run_config``).
RUN_CONFIG_KEY = "clipdehaze_run_config"


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN/Inf and the module is configured to stop."""


class DehazeLitModule(L.LightningModule):
    """Train / validate / test any registered generator.

    Args:
        generator: ``{"name": <registered generator>, **factory_kwargs}``.
        loss: Hydra config (with ``_target_``) of a loss ``forward(output, target, hazy)``.
        optimizer: Hydra config of a torch optimizer (``params`` are supplied here).
        scheduler: optional ``{"scheduler": <hydra config; ``optimizer`` supplied here>, "interval": "epoch"|"step", ...}``.
        clip: optional Hydra config of :class:`clipdehaze.models.clip.FrozenCLIP`; built only when the generator
            (or a loss) needs it.
        metrics: ``{"protocol": "dehazeformer"|"basicsr"|None, "names": [registered metrics] | None (the protocol's),
            ...protocol options}``.
        nonfinite_loss: ``"raise"`` (stop with the step and batch file names) or ``"skip"`` (skip the batch).
        sample_images: how many test images to keep (downscaled) for an image grid.
        dataset_name: suffix of the logged test keys (``test/psnr_<dataset_name>``).
        inference: build the generator (and the CLIP prior it takes) only, as BasicSR's test path builds ``net_g``
            only: the loss (a CR loss's ResNet-152, weights it might try to download) is never constructed, whatever
            ``loss`` says; ``loss`` and ``optimizer`` stay in the hparams for the record. Such a module tests and
            predicts; fitting it stops at once. Not a hyper-parameter (a checkpoint never carries it).
    """

    def __init__(
        self,
        generator: Mapping[str, Any],
        loss: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        clip: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        nonfinite_loss: str = "raise",
        sample_images: int = 4,
        dataset_name: str | None = None,
        compile: Mapping[str, Any] | None = None,
        inference: bool = False,
    ) -> None:
        super().__init__()
        hp = dict(
            generator=_plain(generator),
            loss=_plain(loss),
            optimizer=_plain(optimizer),
            scheduler=_plain(scheduler),
            clip=_plain(clip),
            metrics=_plain(metrics) or {"protocol": "dehazeformer"},
            nonfinite_loss=nonfinite_loss,
            sample_images=sample_images,
            dataset_name=dataset_name,
            compile=_plain(compile) or {"enabled": False, "mode": "default"},
        )
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        self.save_hyperparameters(hp)

        gen_cfg = dict(hp["generator"])
        name = gen_cfg.pop("name")
        # torch.compile of the generator in training: an execution choice, not an architecture argument.
        self.compile_mode = str(hp["compile"].get("mode", "default"))
        self.compile_generator = bool(hp["compile"].get("enabled", False))
        self._compile_checked = False
        self.generator: Generator = create_generator(name, **gen_cfg)
        self.inference = bool(inference)
        self.loss_fn = None if self.inference else instantiate(hp["loss"]) if hp["loss"] else L1Loss()

        wants_clip = bool(clip_inputs_of(self.generator)) or bool(getattr(self.loss_fn, "needs_clip", False))
        if wants_clip and not hp["clip"]:
            raise ValueError(
                f"generator {name!r} needs the CLIP prior (inputs {clip_inputs_of(self.generator)}), but clip=null; "
                "choose one, e.g. clip=vit_b32_openai, clip=local clip.checkpoint=/path, or clip=tiny_random"
            )
        # Built from config, held outside state_dict (FrozenCLIP hides its weights), so checkpoints never carry it.
        self.clip_prior = instantiate(hp["clip"]) if wants_clip else None

        metric_cfg = dict(hp["metrics"])
        self.protocol = metric_cfg.pop("protocol", None)
        names = metric_cfg.pop("names", None)
        self.protocol_opts = metric_cfg
        self.val_metrics = ImageQualityMetrics(self.protocol, names, **metric_cfg)
        self.test_metrics = ImageQualityMetrics(self.protocol, names, **metric_cfg)
        self._test_names: dict[int, str] = {}
        self.test_samples: list[dict[str, torch.Tensor]] = []
        # The resolved training config (plain containers), saved into every checkpoint so an evaluation can say
        # which data and variant the weights come from; set by clipdehaze-train, restored by load_checkpoint.
        self.run_config: dict[str, Any] | None = None
        # Self-ensemble of the test pass (clipdehaze.utils.tta): set by clipdehaze-eval's tta=.
        self.tta = "none"
        # Whether load_checkpoint took a checkpoint's EMA average (True), its raw weights (False), or found none.
        self.ema_weights: bool | None = None

    # ------------------------------------------------------------------ forward
    @property
    def generator_name(self) -> str:
        return self.hparams["generator"]["name"]

    def clip_inputs(self, x: torch.Tensor, batch: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """The generator's CLIP inputs: from the batch (embedding cache) when served, else computed live."""
        names = clip_inputs_of(self.generator)
        if not names:
            return {}
        served = dict(batch.get("clip", {})) if batch is not None else {}
        missing = [n for n in names if n not in served]
        if missing:
            served.update(self.clip_prior.generator_inputs(missing, x))
        return {n: served[n] for n in names}

    def forward(self, x: torch.Tensor, batch: Mapping[str, Any] | None = None) -> torch.Tensor:
        inputs = self.clip_inputs(x, batch)
        if self.compile_generator and not self._compile_checked:
            return self._first_compiled_forward(x, inputs)
        return self.generator(x, **inputs)

    def _first_compiled_forward(self, x: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The first call compiles; a model that cannot compile (an unsupported op, no C++ compiler for inductor on
        CPU) falls back to eager with a warning instead of stopping the run. A genuine error in the model raises
        again from the eager call."""
        self._compile_checked = True
        try:
            return self.generator(x, **inputs)
        except Exception as e:  # noqa: BLE001 - any compile failure: warn and run eager
            self.generator._compiled_call_impl = None
            rank_zero_warn(f"compile.enabled=true: generator {self.generator_name!r} could not be compiled "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); running it eager")
            return self.generator(x, **inputs)

    @property
    def aux_weights(self) -> dict[str, float]:
        """Positive auxiliary-term weights from the loss config; absent or 0 means the term is off."""
        weights = getattr(self.loss_fn, "aux_weights", None) or {}
        return {k: float(w) for k, w in weights.items() if float(w) > 0}

    def on_fit_start(self) -> None:
        if self.inference:
            raise RuntimeError(f"this {self.generator_name!r} module was built for inference (no loss, no optimizer): "
                               "train with clipdehaze-train (resume: ckpt_path=... or resume=auto), which builds both")
        if self.compile_generator:
            # nn.Module.compile compiles in place: state_dict keys (and checkpoints) stay those of the eager model.
            self.generator.compile(mode=None if self.compile_mode == "default" else self.compile_mode)
        built = self.generator.auxiliary_terms
        weights = getattr(self.loss_fn, "aux_weights", None) or {}
        if off := [t for t in built if t not in self.aux_weights]:
            rank_zero_warn(
                f"generator {self.generator_name!r} is built with auxiliary loss term(s) {off}, but loss "
                f"{type(self.loss_fn).__name__} gives them weight {[weights.get(t, 'none') for t in off]}: they are "
                "not computed and their heads do not train. Use a loss that weights them (e.g. loss=sar_weather) "
                "or build the model without them (e.g. model.srd=false)")
        if unused := [t for t in self.aux_weights if t not in built]:
            rank_zero_warn(f"loss {type(self.loss_fn).__name__} weights auxiliary term(s) {unused}, but generator "
                           f"{self.generator_name!r} does not produce them; the weight has no effect")

    def _batch_files(self, batch: Mapping[str, Any]) -> list[str]:
        """The input files of a batch: paths from the datamodule's datasets where they can be found, else names."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        sets = [getattr(getattr(datamodule, a, None), "dataset", getattr(datamodule, a, None))
                for a in ("test_set", "val_set", "train_set", "predict_set")]
        files = []
        for name, index in zip(batch.get("name", []), batch["index"].tolist() if "index" in batch else []):
            found = (pairs[index][0] for pairs in (getattr(s, "pairs", None) for s in sets)
                     if pairs and 0 <= index < len(pairs) and Path(pairs[index][0]).name == name)
            files.append(str(next(found, name)))
        return files

    def _check_input_size(self, x: torch.Tensor, batch: Mapping[str, Any], stage: str) -> None:
        """An image below the generator's smallest input side, named with its file (the generator's own error says
        only the size, deep inside the run)."""
        minimum = getattr(self.generator, "min_size", 0)
        h, w = x.shape[-2:]
        if minimum and min(h, w) < minimum:
            raise ValueError(f"{stage} image {', '.join(self._batch_files(batch)) or '?'} is {w}x{h} px (WxH), smaller "
                             f"than model={self.generator_name} takes ({minimum} px per side); leave it out of the "
                             f"{stage} set or upscale it to at least {minimum} px per side")

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, Any], batch_idx: int):
        x, y = batch["input"], batch["target"]
        self._check_input_size(x, batch, "training")
        out = self(x, batch)
        loss = self.loss_fn(out, y, x)
        terms = {}
        weights = self.aux_weights
        if any(t in weights for t in self.generator.auxiliary_terms):
            terms = self.generator.auxiliary_losses(x, y, out, self.clip_prior)
            for k, v in terms.items():
                loss = loss + weights.get(k, 0.0) * v
        if not torch.isfinite(loss):
            names = list(batch.get("name", []))
            msg = (f"non-finite training loss ({loss.item()}) at global step {self.global_step}, "
                   f"epoch {self.current_epoch}, batch {batch_idx}; batch files: {names}")
            if self.hparams["nonfinite_loss"] == "raise":
                raise NonFiniteLossError(msg)
            log.warning("%s -- skipped (nonfinite_loss=skip)", msg)
            return None
        bs = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        for k, v in getattr(self.loss_fn, "last_terms", {}).items():
            self.log(f"train/loss_{k}", v, batch_size=bs)
        for k, v in terms.items():
            self.log(f"train/loss_{k}", v, batch_size=bs)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Mapping[str, Any], metric: ImageQualityMetrics, tta: str = "none") -> torch.Tensor:
        x = batch["input"]
        self._check_input_size(x, batch, "test" if metric is self.test_metrics else "validation")
        out = self(x, batch) if tta == "none" else self_ensemble(self.generator, x, tta, self.clip_inputs(x, batch))
        metric.update(out, batch.get("target"), batch["index"])
        return out

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        # Returned so callbacks (image panels) see the outputs without running the generator again.
        return self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        for k, v in self.val_metrics.compute().items():
            self.log(f"val/{k}", v, prog_bar=(k == "psnr"), sync_dist=False)
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self._test_names.clear()
        self.test_samples.clear()

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        # Returned for callbacks (SaveTestOutputs).
        out = self._eval_step(batch, self.test_metrics, self.tta)
        for i, name in zip(batch["index"].tolist(), batch["name"]):
            self._test_names[int(i)] = name
        if len(self.test_samples) < self.hparams["sample_images"]:
            self.test_samples.append({
                "input": batch["input"][0].detach().cpu(),
                "output": out[0].detach().clamp(0, 1).cpu(),
                **({"target": batch["target"][0].detach().cpu()} if "target" in batch else {}),
                "name": batch["name"][0],
            })
        return out

    def test_key(self, metric: str) -> str:
        suffix = self.hparams.get("dataset_name")
        return f"test/{metric}_{suffix}" if suffix else f"test/{metric}"

    def _gathered_test_names(self) -> dict[int, str]:
        """Index -> file name of every test image, from all ranks: under DDP each rank saw only its shard, while
        the per-image rows (gathered by the metric) cover them all. A collective: call it on every rank."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return dict(self._test_names)
        shards: list[dict[int, str] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, self._test_names)
        return {i: name for shard in shards for i, name in (shard or {}).items()}

    def on_test_epoch_end(self) -> None:
        for k, v in self.test_metrics.compute().items():
            self.log(self.test_key(k), v, sync_dist=False)
        names = self._gathered_test_names()
        self.test_rows = [
            {"index": int(r["index"]), "name": names.get(int(r["index"]), ""), **{
                k: float(v) for k, v in r.items() if k != "index"}}
            for r in self.test_metrics.per_image()
        ]
        reasons = self.test_metrics.nan_reasons
        self.test_metrics.reset()
        nonfinite = [r for r in self.test_rows
                     if not all(math.isfinite(v) for k, v in r.items() if k not in ("index", "name"))]
        if nonfinite:
            names = [r["name"] or f"#{r['index']}" for r in nonfinite]
            why = []
            for r, name in zip(nonfinite[:10], names):
                by_reason: dict[str, list[str]] = {}
                for metric, reason in reasons.get(r["index"], {}).items():
                    by_reason.setdefault(reason, []).append(metric)
                why.append(f"{name}: " + (", ".join(f"{'/'.join(m)} NaN as {reason}" for reason, m in by_reason.items())
                                          or "scored on another process"))
            rank_zero_warn(f"non-finite metric values for {len(nonfinite)} test image(s): {', '.join(names[:10])}"
                           f"{' ...' if len(nonfinite) > 10 else ''}; the means they enter are written as null to "
                           f"metrics.json (why: {'; '.join(why)})")

    def protocol_description(self) -> str:
        """The test metrics' protocol line, with the self-ensemble when one is on (it changes the numbers)."""
        return "; ".join(p for p in (self.test_metrics.describe(), TTA_DESCRIPTIONS[self.tta]) if p)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        opt_cfg = self.hparams["optimizer"] or {"_target_": "torch.optim.AdamW", "lr": 2e-4}
        optimizer = instantiate(opt_cfg, params=[p for p in self.parameters() if p.requires_grad])
        sched = self.hparams["scheduler"]
        if not sched:
            return optimizer
        sched = dict(sched)
        scheduler_cfg = dict(sched.pop("scheduler"))
        if scheduler_cfg.get("T_max", None) == "auto":
            # Cosine to eta_min over the whole run, whatever max_epochs/max_steps the trainer got.
            total = self.trainer.estimated_stepping_batches if sched.get("interval") == "step" else self.trainer.max_epochs
            scheduler_cfg["T_max"] = max(1, int(total if total and math.isfinite(total) else 1))
        scheduler = instantiate(scheduler_cfg, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **sched}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Raising here aborts the write, so a diverged model never replaces a good last.ckpt / best checkpoint.
        bad = [n for n, p in self.generator.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(f"refusing to save a checkpoint at global step {self.global_step}: non-finite "
                                     f"weights in {bad[:5]}{' ...' if len(bad) > 5 else ''}")
        if self.run_config is not None:
            checkpoint[RUN_CONFIG_KEY] = self.run_config

    @staticmethod
    def read_checkpoint(path: str, map_location: str | torch.device = "cpu",
                        expect_generator: str | None = None, check_weights: bool = True) -> dict[str, Any]:
        """A training checkpoint's dict, read with ``weights_only=True`` and checked: a corrupt, truncated or
        foreign file is a CheckpointError naming it (with ``check_weights``, also non-finite weights);
        hyper-parameters naming anything outside the allow-list of :mod:`clipdehaze.utils.trust`, or an
        interpolation in the stored run config, an UntrustedConfigError naming the file and the key; another
        generator than ``expect_generator`` a ValueError naming both."""
        from clipdehaze.utils.checkpoint import load_checkpoint_file
        from clipdehaze.utils.trust import check_config, check_hparams, check_resolved

        ckpt = load_checkpoint_file(path, map_location=map_location, check_weights=check_weights)
        hp = ckpt.get("hyper_parameters") or {}
        if not isinstance(hp, Mapping) or not isinstance(hp.get("generator"), Mapping) \
                or not isinstance(hp["generator"].get("name"), str):
            raise ValueError(f"{path}: not a clipdehaze training checkpoint (no generator name in hyper_parameters)")
        # Everything hyper_parameters hold reaches Hydra's instantiate (loss, clip, optimizer, scheduler).
        check_hparams(hp, path)
        check_config(ckpt.get("datamodule_hyper_parameters") or {}, "data", path, "datamodule_hyper_parameters")
        check_resolved(ckpt.get(RUN_CONFIG_KEY) or {}, path, RUN_CONFIG_KEY)
        if expect_generator and expect_generator != hp["generator"]["name"]:
            raise ValueError(
                f"{path}: checkpoint holds generator {hp['generator']['name']!r}, but model={expect_generator!r} "
                f"was requested; drop the model= override or pick the matching checkpoint")
        return ckpt

    @classmethod
    def load_checkpoint(cls, path: str, map_location: str | torch.device = "cpu", use_ema: bool = True,
                        **overrides) -> "DehazeLitModule":
        """Load a training checkpoint with ``weights_only=True`` for testing or prediction (``inference=True``: the
        training loss and optimizer its hparams name are never built, nor checked; resuming goes through
        ``Trainer.fit``'s ``ckpt_path`` on a module built for training); clear errors for corrupt/mismatched files.
        ``overrides`` replace hyper-parameters (a section given here is not built from the file).

        A checkpoint of a run with ``ema.enabled=true`` holds the averaged generator weights in ``state_dict`` and
        the raw ones beside them (:data:`clipdehaze.callbacks.RAW_STATE_KEY`): ``use_ema`` picks the average (the
        default), ``use_ema=False`` the raw weights. Only the weights taken must be finite, and a choice the file
        cannot honour (``use_ema=False`` without raw weights) is an error naming it. ``module.ema_weights`` says
        which was loaded (None: the checkpoint has no average)."""
        from clipdehaze.callbacks import RAW_STATE_KEY
        from clipdehaze.utils.checkpoint import CheckpointError, check_finite, non_finite
        from clipdehaze.utils.trust import check_hparam_arguments

        ckpt = cls.read_checkpoint(path, map_location, overrides.pop("expect_generator", None), check_weights=False)
        hp = dict(ckpt["hyper_parameters"])
        supplied = {k: v for k, v in overrides.items() if v is not None}
        # What is built from the file asks for nothing but a model: no downloads, no files or caches of its choosing.
        # The training-only sections are never built here, so a checkpoint trained with, say, the CR loss and its
        # weights file (a location of the training machine) evaluates as it is.
        check_hparam_arguments(hp, path, {*supplied, *TRAINING_ONLY_HPARAMS})
        hp.update(supplied)
        run_config = ckpt.get(RUN_CONFIG_KEY)
        run_config = run_config if isinstance(run_config, dict) else None
        has_raw = isinstance(ckpt.get(RAW_STATE_KEY), Mapping)
        # Raw weights deleted from an EMA checkpoint: its run config or callback state still says it averaged.
        has_ema = has_raw or bool(((run_config or {}).get("ema") or {}).get("enabled")) \
            or any(str(k).startswith("GeneratorEMA") for k in (ckpt.get("callbacks") or {}))
        if has_ema and not use_ema and not has_raw:
            raise CheckpointError(f"{path}: use_ema=false asks for the raw weights, but this EMA checkpoint holds only "
                                  f"the average (its {RAW_STATE_KEY} is missing); pass use_ema=true to evaluate the "
                                  "average, or use a checkpoint that keeps both")
        state = ckpt[RAW_STATE_KEY] if has_ema and not use_ema else ckpt["state_dict"]
        other = (ckpt.get(RAW_STATE_KEY) if use_ema else ckpt["state_dict"]) if has_ema else None
        fix = "use an earlier checkpoint"
        if isinstance(other, Mapping) and not non_finite(other):  # only the weights taken need be finite
            fix = (f"use_ema={str(not use_ema).lower()} takes the {'raw weights' if use_ema else 'EMA average'}, "
                   f"which are finite, or {fix}")
        check_finite(state, path, "" if not has_ema else "the EMA average (state_dict; use_ema=true)" if use_ema
                     else f"the raw weights ({RAW_STATE_KEY}; use_ema=false)", fix)
        module = cls(**hp, inference=True)
        module.load_state_dict(state, strict=True)
        module.ema_weights = bool(use_ema) if has_ema else None
        if has_ema:
            log.info("%s: using the %s", path, "EMA average of the weights (use_ema=true)" if use_ema
                     else "raw weights, not their EMA average (use_ema=false)")
        module.run_config = run_config
        return module
