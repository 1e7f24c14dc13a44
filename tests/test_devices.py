"""Devices without a GPU: one GPU per job in a parallel sweep (a fake device list), the CLIP prior and its embedding
cache on the module's device, and no hard-wired ``.cuda()`` anywhere."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from clipdehaze.utils import devices
from clipdehaze.utils.devices import GpuPerJob, job_devices

SRC = Path(__file__).resolve().parents[1] / "src" / "clipdehaze"


JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def _job_config(num: int, n_jobs: int = 2, launcher: str = JOBLIB):
    return OmegaConf.create({"hydra": {"job": {"num": num}, "launcher": {"_target_": launcher, "n_jobs": n_jobs}}})


def _unset_visible_devices(monkeypatch):
    # setenv first, so that undoing the test removes what the callback sets.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")


@pytest.fixture
def worker(monkeypatch):
    """A GpuPerJob whose multirun started in another process (the joblib launcher's), with a clean environment."""
    _unset_visible_devices(monkeypatch)
    monkeypatch.setattr(devices, "_worker_binding", None)

    def make(**kwargs) -> GpuPerJob:
        callback = GpuPerJob(**kwargs)
        callback.on_multirun_start(_job_config(0))
        callback._launcher_pid = os.getpid() + 1
        return callback

    return make


def test_job_number_picks_the_device(worker, monkeypatch):
    callback = worker(devices=[7, 9])
    seen = []
    for job in range(5):
        monkeypatch.setattr(devices, "_worker_binding", None)  # a fresh worker process per job
        callback.on_job_start(_job_config(job))
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["7", "9", "7", "9", "7"]


def test_groups_of_gpus_per_job_for_ddp_jobs(worker):
    assert [job_devices(k, ["0", "1", "2", "3"], per_job=2) for k in range(3)] == ["0,1", "2,3", "0,1"]
    assert job_devices(4, ["0", "1", "2"], per_job=2) == "0,1"  # the odd GPU out is not handed out
    with pytest.raises(ValueError, match="per_job"):
        worker(devices=[0, 1], per_job=3)


def test_a_worker_keeps_the_gpu_its_cuda_started_on(worker, monkeypatch, caplog):
    callback = worker(devices=["3", "5"])
    callback.on_job_start(_job_config(0))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with caplog.at_level(logging.INFO, logger="clipdehaze.utils.devices"):
        callback.on_job_start(_job_config(1))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert "job 1: runs on CUDA_VISIBLE_DEVICES=3" in caplog.text


def test_devices_default_to_those_visible_to_the_launcher(worker, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,6")
    callback = worker()
    assert callback.devices == ["2", "6"]
    callback.on_job_start(_job_config(1))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"


def test_other_launchers_and_single_runs_are_left_alone(monkeypatch):
    _unset_visible_devices(monkeypatch)
    in_launcher = GpuPerJob(devices=[1, 2])
    in_launcher.on_multirun_start(_job_config(0))
    in_launcher.on_job_start(_job_config(1))  # a job in the launching process itself
    GpuPerJob(devices=[1, 2]).on_job_start(_job_config(1))  # RUN mode: no multirun start
    for launcher in ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                     "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"):
        other = GpuPerJob(devices=[1, 2])
        other.on_multirun_start(_job_config(0, launcher=launcher))
        with pytest.MonkeyPatch.context() as mp:  # the job in another process: SLURM hands out the GPUs there
            mp.setattr(os, "getpid", lambda: 1)
            other.on_job_start(_job_config(1, launcher=launcher))
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_more_parallel_jobs_than_gpus_is_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="clipdehaze.utils.devices"):
        GpuPerJob(devices=[0, 1]).on_multirun_start(_job_config(0, n_jobs=3))
    assert "share a GPU" in caplog.text


APP = """
import os, hydra

@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    with open(f"{cfg.out}/{cfg.hydra_job}.txt", "w") as f:
        f.write(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))

main()
"""

APP_CONFIG = """
defaults:
  - override hydra/launcher: joblib
  - _self_
hydra:
  callbacks:
    gpu_per_job: {_target_: clipdehaze.utils.devices.GpuPerJob, devices: null, per_job: 1}
  sweep: {dir: sweep, subdir: "${hydra.job.num}"}
hydra_job: ${hydra:job.num}
out: .
seed: 0
"""


@pytest.mark.slow
def test_joblib_workers_each_get_their_job_device(tmp_path):
    """The callback as conf/hydra/default.yaml configures it, in real joblib worker processes: a minimal Hydra app
    records what each job's process sees, with a fake device list."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.yaml").write_text(APP_CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    cmd = [sys.executable, "app.py", "-m", "seed=0,1,2", "hydra.launcher.n_jobs=2",
           "hydra.callbacks.gpu_per_job.devices=[4,6]"]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Job 2 lands in a worker that ran job 0 or 1 without starting CUDA, so it gets its own pick.
    assert {k: (tmp_path / f"{k}.txt").read_text() for k in range(3)} == {0: "4", 1: "6", 2: "4"}


def test_the_callback_is_configured_for_every_entry_point(compose_cfg):
    for name in ("train", "eval", "predict"):
        cfg = compose_cfg(name, [])
        assert cfg.hydra.callbacks.gpu_per_job._target_ == "clipdehaze.utils.devices.GpuPerJob", name


def test_nothing_calls_cuda_directly():
    """Devices come from the trainer / the module; a `.cuda()` or `.to("cuda")` would pin code to GPU 0."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            literal_cuda = any(isinstance(a, ast.Constant) and a.value == "cuda" for a in node.args)
            if node.func.attr == "cuda" or (node.func.attr == "to" and literal_cuda):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders


def test_clip_cache_is_built_on_the_trainers_device(compose_cfg, tiny_paired_root, tmp_path):
    """Lightning calls the data module's setup on the process's device; the prior moves there before building."""
    from hydra.utils import instantiate

    from clipdehaze.build import attach_clip_cache, build_module

    cfg = compose_cfg("train", ["model=cliphaze_test", "clip=tiny_random", "data=paired",
                                f"data.root={tiny_paired_root}", "data.num_workers=0"])
    datamodule, module = instantiate(cfg.data), build_module(cfg)
    attach_clip_cache(cfg, datamodule, module)
    datamodule.setup("fit")  # entries now exist, so a second setup only moves the prior
    datamodule.train_set = datamodule.val_set = None
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    datamodule.setup("fit")
    assert module.clip_prior.device.type == "meta"
