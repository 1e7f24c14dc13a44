"""Hydra multirun (two jobs, two metrics.json) and the wandb logger offline (keys found in the run files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def _data(root: Path) -> list[str]:
    return ["data=paired", f"data.root={root}", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
            "data.name=tiny"]


QUICK = ["trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "callbacks.rich_progress_bar=null"]


@pytest.mark.slow
def test_multirun_two_jobs_write_two_metrics(tiny_paired_root, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "clipdehaze.train", "-m", "model=dehazeformer_test,mixdehazenet_test", *QUICK,
           *_data(tiny_paired_root), f"hydra.sweep.dir={sweep}"]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = sorted(sweep.glob("*/metrics.json"))
    assert len(files) == 2
    assert {json.loads(f.read_text())["generator"] for f in files} == {"dehazeformer_test", "mixdehazenet_test"}
    assert all((f.parent / "config_resolved.yaml").is_file() for f in files)


@pytest.mark.slow
def test_wandb_offline_logs_scalars_config_and_tables(tiny_paired_root, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "clipdehaze.train", "model=dehazeformer_test", "logger=wandb",
           "callbacks.wandb_panels.every_n_epochs=1", *QUICK, *_data(tiny_paired_root), f"hydra.run.dir={run}"]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run / "wandb").iterdir())
    # The offline run log is protobuf records (wandb-core); keys and config values are stored as UTF-8 strings.
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in ("train/loss", "val/psnr", "val/ssim", "test/psnr_tiny", "test/ssim_tiny", "val/images",
                "test/per_image_tiny", "dehazeformer_test", "DehazeFormer protocol"):
        assert key.encode() in log, key
    media = runs[0] / "files" / "media"
    assert list(media.glob("images/val/*.png")), "validation image panel missing"
    tables = list(media.glob("table/test/*.json"))
    assert tables and "psnr" in tables[0].read_text()
