"""The one declared place where every config key is classified: what it does to a scored number.

A run's resolved config is flattened to dotted keys (``model.fusion``, ``optimizer.lr``). Each key has one class,
and the class says how ``clipdehaze-table`` and ``clipdehaze-compare`` treat it:

========================  ==========================================================================  ==============
class                     meaning                                                                     rows
========================  ==========================================================================  ==============
``architecture``          builds the network that computed the outputs (``model.*``, the CLIP          split, labelled
                          prior's model and prompts), read from the config that built it
``training``              shapes the weights a training produces (loss, optimizer, schedule, data      split, labelled
                          recipe, EMA, prior control in training); counts only for weights that
                          config trained
``evaluation``            an option of the scoring pass that changes the numbers (``tta``,             split, labelled
                          ``use_ema``, ``test_clip_control``, tiling), read from the scoring run
``images``                which image files were scored: identified by the manifest hash of the        by manifest
                          scored files (``dataset.manifest_sha256``), never by the option's value
``location``              a path whose content is identified elsewhere: by the weights' or CLIP's      by hash
                          sha256, the image manifest, or nothing the numbers depend on
``protocol``              the metric protocol's options: identified by the protocol line               by protocol
``seed``                  what a row averages over                                                     averaged
``execution``             how or where a run executed, not what it computed                            never
========================  ==========================================================================  ==============

Keys are declared exactly, except families that are one class by construction (``model.*`` are the generator's
constructor arguments, ``logger.*`` / ``paths.*`` / ``hydra.*`` say where things are written, a weighted loss's
``loss.terms.*``). A key no declaration covers (a ``+new=1`` on the command line, a key of a newer version) is
*unclassified*: it is treated as model-defining (it splits rows and labels them, so it can never merge two
different things silently) and the row says so. ``tests/test_table.py`` composes every shipped config (train,
eval and predict, every option of every group, experiments included) and fails on any key without a class.

Choices where the effect depends on the run (written here so the table's behaviour can be checked against them):

* ``clip_cache`` is ``training``: with the real prior, cached CLIP inputs are the full image's (cropped), live ones
  are computed on the training crop (:mod:`clipdehaze.models.clip.cache`), so the trained weights differ. At test
  time both see the full image, so an evaluation's own ``clip_cache`` splits nothing.
* ``nonfinite_loss`` is ``execution``: a finished run under ``raise`` met no non-finite loss, and ``skip`` drops
  only batches where ``raise`` would have stopped the run.
* ``trainer.devices`` / ``num_nodes`` are ``training``: under DDP the effective batch is ``batch_size`` times the
  number of ranks.
* ``data.val_batch_size`` is ``execution``: the validation metric is a mean over images, whatever the batch.
* ``recipe.*`` is ``execution``: it records where a paper recipe was read; the values it set are in ``optimizer.*``,
  ``data.*``, ``trainer.*`` ..., which count.
* ``data.root`` is ``location`` also for training data: a checkpoint's evaluation does not record the training
  files' manifest, so two trainings on different folders under one data name are not told apart (their
  ``data.name`` is).
"""

from __future__ import annotations

import fnmatch

ARCHITECTURE = "architecture"
TRAINING = "training"
EVALUATION = "evaluation"
IMAGES = "images"
LOCATION = "location"
PROTOCOL = "protocol"
SEED = "seed"
EXECUTION = "execution"

#: Classes whose differing values make different rows (the "model-defining" keys) and label them.
MODEL_DEFINING = (ARCHITECTURE, TRAINING)

_A, _T, _E, _I, _L, _P, _S, _X = ARCHITECTURE, TRAINING, EVALUATION, IMAGES, LOCATION, PROTOCOL, SEED, EXECUTION

#: Exact keys.
KEYS: dict[str, str] = {
    # top level
    "seed": _S, "task_name": _X, "tags": _X, "train": _X, "test": _X, "optimized_metric": _X,
    "num_grid_images": _X, "save_test_outputs": _X, "nonfinite_loss": _X, "resume": _X, "device": _X,
    "output": _X, "overwrite": _X, "compare": _X,
    "clip_cache": _T, "clip_control": _T,
    "test_clip_control": _E, "use_ema": _E, "tta": _E, "tile": _E, "overlap": _E, "memory_budget_mb": _E,
    "ckpt_path": _L, "weights_path": _L, "allow_random_weights": _X, "input": _I,
    "compile.enabled": _X, "compile.mode": _X,
    "ema.enabled": _T, "ema.decay": _T, "ema.start_step": _T, "ema.every_n_steps": _T,
    # data: the training recipe, the scored selection, where files are
    "data._target_": _T, "data.name": _T, "data.kind": _T, "data.synth_seed": _T, "data.edge_decay": _T,
    "data.augment": _T, "data.crop_size": _T, "data.val_crop_size": _T, "data.batch_size": _T,
    "data.pad_if_smaller": _T, "data.train_split": _T, "data.train_list": _T, "data.max_train_samples": _T,
    "data.val_split": _T, "data.val_list": _T, "data.max_val_samples": _T, "data.val_batch_size": _X,
    # how max_*_samples pick (even | first): the training selection; the scored one is in the manifest
    "data.subset": _T,
    "data.test_split": _I, "data.test_list": _I, "data.max_test_samples": _I, "data.input_dir": _I,
    "data.target_dir": _I, "data.on_unpaired": _I,
    "data.root": _L, "data.val_root": _L, "data.test_root": _L, "data.cache_dir": _L,
    "data.seed": _S, "data.num_workers": _X, "data.pin_memory": _X,
    # loss (the CR loss's network weights file is a location: ``loss.arch`` + ``loss.weights`` name them)
    "loss._target_": _T, "loss.arch": _T, "loss.batchnorm": _T, "loss.beta": _T, "loss.cr_weight": _T,
    "loss.eps": _T, "loss.input_norm": _T, "loss.recon": _T, "loss.srd_weight": _T, "loss.weights": _T,
    "loss.weights_path": _L, "loss.download": _X,
    "optimizer._target_": _T, "optimizer.lr": _T, "optimizer.betas": _T, "optimizer.weight_decay": _T,
    "optimizer.eps": _T, "optimizer.amsgrad": _T, "loss.scale": _T,
    "scheduler.interval": _T, "scheduler.frequency": _T, "scheduler.scheduler._target_": _T,
    "scheduler.scheduler.T_max": _T, "scheduler.scheduler.eta_min": _T,
    # CLIP prior (its weights file is named, with its sha256, by metrics.json's ``clip`` model id)
    "clip._target_": _A, "clip.model_name": _A, "clip.pretrained": _A, "clip.quick_gelu": _A,
    "clip.image_size": _A, "clip.seed": _A, "clip.text_feature.prompt_set": _A, "clip.text_feature.soft": _A,
    "clip.density.method": _A, "clip.density.size": _A, "clip.density.prompt_set": _A,
    "clip.density.positive": _A, "clip.density.logit_scale": _A, "clip.density.window_stride": _A,
    "clip.checkpoint": _L, "clip.cache_dir": _L, "clip.warn_random": _X,
    "metrics.protocol": _P, "metrics.names": _P, "metrics.crop_border": _P, "metrics.test_y_channel": _P,
    # trainer
    "trainer.min_epochs": _T, "trainer.max_epochs": _T, "trainer.max_steps": _T, "trainer.max_time": _T,
    "trainer.limit_train_batches": _T, "trainer.limit_val_batches": _T, "trainer.accumulate_grad_batches": _T,
    "trainer.fast_dev_run": _T, "trainer.precision": _T, "trainer.check_val_every_n_epoch": _T,
    "trainer.gradient_clip_val": _T, "trainer.devices": _T, "trainer.num_nodes": _T, "trainer.sync_batchnorm": _T,
    "trainer.use_distributed_sampler": _T,
    "trainer.limit_test_batches": _I,
    "trainer._target_": _X, "trainer.accelerator": _X, "trainer.strategy": _X, "trainer.num_sanity_val_steps": _X,
    "trainer.log_every_n_steps": _X, "trainer.deterministic": _X, "trainer.benchmark": _X, "trainer.plugins": _X,
    "trainer.default_root_dir": _L, "trainer.enable_progress_bar": _X, "trainer.enable_model_summary": _X,
    # callbacks: which checkpoint is "best" is part of the recipe; the rest is bookkeeping
    "callbacks.model_checkpoint.monitor": _T, "callbacks.model_checkpoint.mode": _T,
    "callbacks.model_checkpoint._target_": _X, "callbacks.model_checkpoint.filename": _X,
    "callbacks.model_checkpoint.save_top_k": _X, "callbacks.model_checkpoint.save_last": _X,
    "callbacks.model_checkpoint.auto_insert_metric_name": _X, "callbacks.model_checkpoint.dirpath": _L,
    # upstream's validation epochs (clipdehaze.callbacks.EvalFreq) decide which epoch's weights are "best"
    "callbacks.eval_freq._target_": _T, "callbacks.eval_freq.eval_freq": _T,
}

#: Families of one class by construction (fnmatch patterns, tried after :data:`KEYS`).
PATTERNS: tuple[tuple[str, str], ...] = (
    ("model.*", _A),
    ("clip.prompts.*", _A),
    ("loss.terms.*", _T),
    ("loss.weights.*", _T),
    ("logger.*", _X),
    ("paths.*", _L),
    ("hydra.*", _X),
    ("callbacks.image_panels.*", _X),
    ("callbacks.rich_progress_bar.*", _X),
    ("callbacks.model_summary.*", _X),
    ("callbacks.preemption_checkpoint.*", _X),
    # where a paper recipe was read (repo, commit, file, its verbatim numbers): provenance; what the numbers set is
    # in the keys above
    ("recipe.*", _X),
)

#: The scoring options' values that change nothing (a label names an option only where it differs from these,
#: or between rows); equal to the shipped eval / predict configs (a test checks).
EVALUATION_DEFAULTS: dict[str, object] = {"tta": "none", "use_ema": True, "test_clip_control": None, "tile": "auto",
                                          "overlap": 32, "memory_budget_mb": None}

#: Training keys whose change leaves the generator's initialisation and the data order as they are: two runs that
#: differ only in these (and in evaluation options) and share a seed share their initial weights, so their seeds
#: pair (:func:`clipdehaze.runs.identity.share_initialisation`).
SAME_INITIALISATION_KEYS = ("clip_control",)


def classify(key: str) -> str | None:
    """The class of a flattened config key, or None when no declaration covers it (see the module docstring)."""
    if key in KEYS:
        return KEYS[key]
    for pattern, cls in PATTERNS:
        if fnmatch.fnmatchcase(key, pattern):
            return cls
    return None


def is_run_location_key(key: str) -> bool:
    """A key that says where or how a run executed (``execution``, ``location``), not what it computed: what
    :func:`clipdehaze.provenance.config_sha256` leaves out."""
    return classify(key) in (EXECUTION, LOCATION)
