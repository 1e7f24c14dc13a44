"""Where the configs live (checkout or installed wheel), resolvers, and run-directory naming."""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from clipdehaze.utils.files import REPLACED_PREFIX
from clipdehaze.utils.resources import checkout_root, project_dir

log = logging.getLogger(__name__)


def config_path() -> str:
    """The checkout's ``conf/`` when running from a source tree, else the configs shipped in the wheel
    (:mod:`clipdehaze.utils.resources`)."""
    if checkout_root() is not None:
        return str(project_dir("conf"))
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


#: What a run writes into its run dir; any of them in a folder that is not already a run of the same task would
#: be replaced.
_RUN_FILES = (".hydra", "metrics.json", "per_image.csv", "test_per_image.csv", "grid.png", "config_resolved.yaml",
              "checkpoints")
#: What a training run leaves besides :data:`_RUN_FILES` (its loggers' folders, saved test outputs): a fresh run
#: would append to the logs and keep the old ``last.ckpt``, which a later ``resume=auto`` would pick.
_TRAIN_RESULTS = ("metrics.json", "per_image.csv", "test_per_image.csv", "grid.png", "config_resolved.yaml",
                  "checkpoints", "csv", "tensorboard", "wandb", "test_outputs")


def _holds(run_dir: Path, name: str) -> bool:
    path = run_dir / name
    if path.is_dir():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def foreign_run(run_dir: Path, task: str, continuing: bool = False) -> str | None:
    """Why ``run_dir`` belongs to something other than this ``task`` run (it would lose files to this one), or
    None: a missing or empty folder, a folder without run files, an earlier eval/predict run of the same task (its
    results are replaced by the new ones), or, for ``train``, an earlier training run that this one continues
    (``continuing``: resume=auto) or that left no results (it stopped before its first checkpoint)."""
    if not run_dir.is_dir():
        return None
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        try:
            owner = OmegaConf.load(config).get("task_name")
        except Exception:  # noqa: BLE001 - an unreadable config is no proof of ownership
            owner = None
        if owner == task:
            results = [n for n in _TRAIN_RESULTS if _holds(run_dir, n)] if task == "train" and not continuing else []
            return f"it holds an earlier train run ({', '.join(results)})" if results else None
        if owner:
            return f"it holds {'an' if str(owner)[:1] in 'aeiou' else 'a'} {owner} run"
    found = [n for n in _RUN_FILES if (run_dir / n).exists()]
    found += [p.name for p in sorted(run_dir.glob("*.log")) if p.name != f"{task}.log"]
    return f"it holds {', '.join(found)} of another run" if found else None


def _move_aside(run_dir: Path) -> Path:
    """Move everything a run writes in ``run_dir`` (:data:`_RUN_FILES`, :data:`_TRAIN_RESULTS`, ``*.log``) into a
    new ``run_dir/replaced-<time>/``; other files stay. Nothing is deleted."""
    aside = run_dir / f"{REPLACED_PREFIX}{datetime.now().strftime('%Y-%m-%d_%H-%M-%S-%f')}"
    aside.mkdir()
    names = {*_RUN_FILES, *_TRAIN_RESULTS}
    for entry in sorted(run_dir.iterdir()):
        if entry.name in names or entry.suffix == ".log":
            entry.rename(aside / entry.name)
    return aside


class RunDirGuard(Callback):
    """Hydra callback (``hydra.callbacks.run_dir_guard`` of ``conf/hydra/default.yaml``, so of train, eval and
    predict): refuse a run dir that holds another run, e.g. ``clipdehaze-eval hydra.run.dir=<a training run>`` or
    ``clipdehaze-train hydra.run.dir=<an eval run>``, before Hydra writes its ``.hydra/`` config and log there and
    the run replaces ``metrics.json``, the grid and the resolved config. ``clipdehaze-train`` also refuses an earlier
    training run unless ``resume=auto`` (or ``ckpt_path``) continues it; ``overwrite=true`` moves the old run's
    files into ``<run dir>/replaced-<time>/`` first (nothing is deleted). Only the first process of a job checks:
    DDP ranks started later (``LOCAL_RANK``/``RANK`` set and not 0) join the run dir their rank 0 accepted."""

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # so ${hydra:...} in the run dir's path resolves
        run_dir = Path(OmegaConf.select(config, "hydra.run.dir"))
        self._check(run_dir, config, "hydra.run.dir", run_dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)
        sweep = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        for job_dir in sorted(p for p in sweep.iterdir() if p.is_dir()) if sweep.is_dir() else ():
            self._check(job_dir, config, "hydra.sweep.dir", sweep)

    @staticmethod
    def _check(run_dir: Path, config, option: str, option_dir: Path) -> None:
        if any(os.environ.get(v, "0") not in ("", "0") for v in ("LOCAL_RANK", "RANK")):
            return
        task = config.task_name
        ckpt = config.get("ckpt_path")
        continuing = task == "train" and (config.get("resume") == "auto" or ckpt == "last" or bool(
            ckpt and Path(run_dir).resolve() in Path(str(ckpt)).resolve().parents))
        if (why := foreign_run(run_dir, task, continuing)) is None:
            return
        if task == "train" and config.get("overwrite"):
            aside = _move_aside(run_dir)
            log.warning("overwrite=true: moved the files of the run in %s into %s (%s)", run_dir, aside, why)
            return
        ways = [f"leave {option} unset (every run gets a folder of its own) or name a new folder, e.g. "
                f"{option}={option_dir}_{task}"]
        if task == "train":
            if why.startswith("it holds an earlier train run"):
                ways.insert(0, "continue that run with resume=auto")
            ways.append(f"pass overwrite=true to move its files into {run_dir}/replaced-<time>/")
        # SystemExit, not an exception: Hydra turns a callback's exceptions into warnings and carries on.
        raise SystemExit(f"{option} puts this {task} run into {run_dir}, but {why}, whose files it would replace: "
                         + ", ".join(ways[:-1]) + (", or " if len(ways) > 1 else "") + ways[-1])


def hydra_quote(value: str) -> str:
    """``value`` as a quoted Hydra override value that reads back as exactly ``value``: inside double quotes, a
    ``"`` and a ``${`` (which OmegaConf would interpolate) are escaped with a backslash, and a run of backslashes
    is doubled where it precedes one of them or the closing quote (elsewhere backslashes are literal)."""
    escaped = {'"': '\\"', "${": "\\${", "": ""}
    return '"' + re.sub(r'(\\*)("|\$\{|\Z)', lambda m: m[1] * 2 + escaped[m[2]], value) + '"'


def shell_quote(arg: str) -> str:
    """``arg`` in single quotes for a POSIX shell."""
    return "'" + arg.replace("'", "'\\''") + "'"


# Hydra's own options that take the next argument as their value.
_HYDRA_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                      "--package", "-p", "--info", "-i", "--experimental-rerun"}


#: Settings a user may look for under another key: the key typed -> where the setting is.
_ELSEWHERE = {
    "model.compile": "torch.compile is an execution choice, not an architecture argument (the model config holds "
                     "only the architecture): compile.enabled=true, with compile.mode=default|reduce-overhead|"
                     "max-autotune",
    "model.ema": "the weights' EMA is a training callback: ema.enabled=true (ema.decay=0.999, ema.start_step=0)",
}


def check_override_syntax(argv: list[str]) -> None:
    """Stop with one sentence where Hydra would stop with a grammar error or a traceback: a ``key=value`` override
    that does not parse, e.g. a path holding ``=``, a quote or brackets (the override grammar reserves them),
    showing the quoted form that works; a config group set to null (``clip=null``), showing ``~clip``; an
    ``experiment=`` naming a paper recipe that is empty upstream, saying so. Also where Hydra would silently read
    another path: a value holding ``${`` that names an existing file, whose name Hydra would interpolate
    (``${oc.env:HOME}.png`` -> ``/root.png``), showing the escaped form."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from clipdehaze.reproduce.recipes import refuse_unrunnable

    parser = OverridesParser.create()
    previous, nulled = None, []
    for arg in argv:
        if previous not in _HYDRA_VALUE_FLAGS and not arg.startswith("-") and "=" in arg:
            key, value = arg.split("=", 1)
            try:
                override = parser.parse_override(arg)
            except HydraException as e:
                raise SystemExit(
                    f"{key}={value}: Hydra cannot read this value ({str(e).splitlines()[0]}); a value holding = , "
                    f"quotes, brackets, braces or parentheses must be quoted for Hydra inside the shell's quotes: "
                    f"{shell_quote(f'{key}={hydra_quote(value)}')}") from None
            literal = override.value()
            if isinstance(literal, str) and re.search(r"(?<!\\)\$\{", literal) and os.path.lexists(literal):
                raise SystemExit(
                    f"{arg}: Hydra reads ${{...}} in a value as an interpolation and would look for another path, but "
                    f"{literal} is a file whose name holds ${{: escape it as \\${{ to mean that file: "
                    f"{shell_quote(f'{key}={hydra_quote(literal)}')}")
            if value == "null" and key.isidentifier():
                nulled.append(key)
            if (where := _ELSEWHERE.get(key.lstrip("+~"))) is not None:
                raise SystemExit(f"{arg}: {where}")
        previous = arg
    refuse_unrunnable(argv)
    groups = config_groups() if nulled else {}
    for key in nulled:
        if key in groups:
            raise SystemExit(f"{key}=null: a config group cannot be set to null on the command line; drop it with "
                             f"~{key}, or choose one of: {', '.join(groups[key])}")


def checked_overrides(main: Callable) -> Callable:
    """Wrap a ``@hydra.main`` entry point so :func:`check_override_syntax` sees the command line first."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        if not args and not kwargs:
            check_override_syntax(sys.argv[1:])
        return main(*args, **kwargs)
    return wrapper


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


def register_model_configs() -> None:
    """The ``model`` config group: one option per generator variant, made from the variant files
    (:mod:`clipdehaze.models.variants`), so ``model=dehazeformer_s`` composes the variant's numbers."""
    from hydra.core.config_store import ConfigStore

    from clipdehaze.models.variants import variants

    store = ConfigStore.instance()
    for v in variants().values():
        store.store(group="model", name=v.name, node=v.model_config(), provider="clipdehaze")


def register_with_hydra() -> None:
    """What every composition of the project's configs needs first: the resolvers (``${clip_dim:...}``,
    ``${run_stamp:}`` ...), the ``model`` group's options (:func:`register_model_configs`) and the paper recipes'
    ``experiment`` options (:func:`clipdehaze.reproduce.recipes.register_experiment_configs`)."""
    from clipdehaze.reproduce.recipes import register_experiment_configs

    for name, fn in (("run_stamp", run_stamp), ("clip_dim", _clip_dim), ("sweep_group", sweep_group),
                     ("cwd", launch_cwd)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
    register_model_configs()
    register_experiment_configs()


def _initialize():
    """Hydra initialised on this project's configs (checkout or wheel), as a context manager."""
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    register_with_hydra()
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

    with _initialize():
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.output_dir = output_dir or os.getcwd()
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
