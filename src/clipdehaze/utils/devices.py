"""Devices: where a trainer config puts the model, and one GPU per job in a parallel sweep.

:class:`GpuPerJob` is a Hydra callback (``hydra.callbacks.gpu_per_job`` in ``conf/hydra/default.yaml``). In a
multirun whose jobs run in worker processes (``hydra/launcher=joblib``), job k sees only GPU
``devices[k % len(devices)]`` through ``CUDA_VISIBLE_DEVICES``, so jobs running side by side never share a GPU when
``hydra.launcher.n_jobs`` is at most the number of GPUs. CUDA reads the variable once per process, when it starts:
a worker process that already ran a GPU job keeps that job's GPU for its later jobs (it says so in their log), which
keeps the jobs that run at the same time on different GPUs. Other launchers are left alone: the basic one runs jobs
one after another in one process, which cannot switch GPUs between jobs, and a cluster launcher's jobs get their GPUs
from the scheduler (SLURM sets ``CUDA_VISIBLE_DEVICES`` itself).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

__all__ = ["GpuPerJob", "job_devices", "training_device", "visible_gpus"]

# The CUDA_VISIBLE_DEVICES this worker process set for its first GPU job (CUDA has kept it since).
_worker_binding: str | None = None


def training_device(trainer_cfg: Any) -> torch.device:
    """The device a run of this trainer config puts the module on: CPU for ``accelerator: cpu`` or without CUDA,
    else the current CUDA device (the first visible one unless a process chose another)."""
    accelerator = str((trainer_cfg or {}).get("accelerator", "auto"))
    if accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (its value, else 0..count-1)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def job_devices(job_num: int, devices: Sequence[str], per_job: int = 1) -> str:
    """``CUDA_VISIBLE_DEVICES`` of job ``job_num``: the job-th group of ``per_job`` devices, cycling."""
    if per_job < 1 or per_job > len(devices):
        raise ValueError(f"per_job must be between 1 and the {len(devices)} devices {list(devices)}, got {per_job}")
    groups = len(devices) // per_job
    start = (job_num % groups) * per_job
    return ",".join(str(d) for d in devices[start:start + per_job])


class GpuPerJob(Callback):
    """One GPU (or ``per_job`` GPUs) per job of a multirun launched into worker processes.

    Args:
        devices: GPU ids to hand out, as ``CUDA_VISIBLE_DEVICES`` takes them; None: the GPUs visible to the launching
            process. No GPUs: nothing is set.
        per_job: GPUs per job (several for ``trainer=ddp`` inside each job).
    """

    def __init__(self, devices: Sequence[Any] | None = None, per_job: int = 1) -> None:
        self.devices = [str(d) for d in devices] if devices is not None else None
        self.per_job = int(per_job)
        self._launcher_pid: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "JoblibLauncher" not in str(config.hydra.get("launcher", {}).get("_target_", "")):
            return
        self._launcher_pid = os.getpid()
        if self.devices is None:
            self.devices = visible_gpus()
        if self.devices:
            job_devices(0, self.devices, self.per_job)  # a bad per_job fails here, before any job starts
            n_jobs = config.hydra.get("launcher", {}).get("n_jobs")
            groups = len(self.devices) // self.per_job
            if isinstance(n_jobs, int) and (n_jobs < 0 or n_jobs > groups):
                log.warning("hydra.launcher.n_jobs=%s runs more jobs at once than there are GPU groups (%d of %d "
                            "GPUs): some jobs will share a GPU", n_jobs, groups, self.per_job)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _worker_binding
        if not self.devices or self._launcher_pid in (None, os.getpid()):
            return
        job = int(config.hydra.job.num)
        wanted = job_devices(job, self.devices, self.per_job)
        if _worker_binding is not None and torch.cuda.is_initialized():
            if wanted != _worker_binding:
                log.info("job %d: runs on CUDA_VISIBLE_DEVICES=%s, the GPU this worker process started CUDA on (job "
                         "number's pick %s cannot take effect in a process whose CUDA is initialised)",
                         job, _worker_binding, wanted)
            return
        os.environ["CUDA_VISIBLE_DEVICES"] = wanted
        _worker_binding = wanted
        log.info("job %d: CUDA_VISIBLE_DEVICES=%s", job, wanted)
