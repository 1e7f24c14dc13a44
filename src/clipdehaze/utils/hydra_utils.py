"""Where the configs live (checkout or installed wheel), resolvers, and run-directory naming."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

_CHECKOUT_CONF = Path(__file__).resolve().parents[3] / "conf"


def config_path() -> str:
    """The checkout's ``conf/`` when running from a source tree, else the configs shipped in the wheel."""
    if (_CHECKOUT_CONF / "train.yaml").is_file():
        return str(_CHECKOUT_CONF)
    return "pkg://clipdehaze.conf"


def slurm_run_name() -> str | None:
    """``slurm-<job>`` (array tasks: ``slurm-<array job>_<task>``), plus ``.<step>`` inside an ``srun`` step, for a
    SLURM batch job; None elsewhere.

    A requeued job keeps its job id and replays its steps in order, so it lands in the run dir it was
    checkpointing to and ``resume=auto`` finds ``last.ckpt`` there; every ``srun`` task of one step (DDP ranks)
    agrees on it too. An interactive allocation (job name ``bash``/``interactive``, the test Lightning uses) is
    not requeued and may run many jobs in one shell, so it keeps the timestamped names.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    name = f"slurm-{array}_{task}" if array and task else f"slurm-{job}"
    step = os.environ.get("SLURM_STEP_ID")
    return f"{name}.{step}" if step else name


def run_stamp() -> str:
    """The SLURM job's name (:func:`slurm_run_name`), else a sub-second timestamp + torchrun id or a random
    suffix: two jobs never share a run dir, a requeued SLURM job reuses its own."""
    if slurm := slurm_run_name():
        return slurm
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    return f"{stamp}_{job}" if job and job != "none" else f"{stamp}_{secrets.token_hex(2)}"


def _clip_dim(model_name: str) -> int:
    """Embedding width of an open_clip architecture (text features follow the chosen CLIP)."""
    import open_clip

    from clipdehaze.models.clip.frozen import register_builtin_configs

    register_builtin_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {model_name!r}; known: {', '.join(open_clip.list_models())}")
    return int(cfg["embed_dim"])


def launch_cwd() -> str:
    """The directory the command runs in (``${cwd:}``): Hydra's ``runtime.cwd`` inside a job, the process's working
    directory before Hydra's runtime exists (a multirun resolves ``hydra.sweep.dir`` then). Jobs never chdir
    (``hydra.job.chdir=false``), so the two agree."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.cwd
    return os.getcwd()


def sweep_group() -> str | None:
    """The multirun folder's name (one wandb group per sweep); None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def register_resolvers() -> None:
    for name, fn in (("run_stamp", run_stamp), ("clip_dim", _clip_dim), ("sweep_group", sweep_group),
                     ("cwd", launch_cwd)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)


def _initialize():
    """Hydra initialised on this project's configs (checkout or wheel), as a context manager."""
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    where = config_path()
    if where.startswith("pkg://"):
        return initialize_config_module(config_module="clipdehaze.conf", version_base="1.3")
    return initialize_config_dir(config_dir=where, version_base="1.3")


def config_groups() -> dict[str, list[str]]:
    """Every config group and its options, as ``--help`` of the Hydra entry points lists them."""
    from hydra.core.global_hydra import GlobalHydra

    with _initialize():
        loader = GlobalHydra.instance().config_loader()
        return {g: sorted(loader.get_group_options(g)) for g in sorted(loader.list_groups(""))
                if not g.startswith("hydra")}


def compose_config(config_name: str, overrides: list[str], output_dir: str | None = None):
    """Compose an entry point's config outside ``@hydra.main`` (CLIs, notebooks), with the Hydra runtime set
    so ``${hydra:...}`` interpolations resolve as in a run."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_resolvers()
    with _initialize():
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.output_dir = output_dir or os.getcwd()
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
