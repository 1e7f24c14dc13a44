"""The task wrapper of the entry points: the loggers a job built are finished when it ends, also when it fails, so
a failed job's wandb run is closed and marked failed and its CSV log is on disk (lightning-hydra-template's
``task_wrapper``). In-process, as a multirun runs its jobs: a run left open would take the next job's logs."""

import csv
import struct
import time
from pathlib import Path

import pytest

from wandb_records import read_wandb_records


def _data(root: Path) -> list[str]:
    return ["data=paired", f"data.root={root}", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
            "data.name=tiny"]


@pytest.fixture
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    yield wandb
    if wandb.run is not None:  # a failed assertion must not leave the run open for the next test
        wandb.finish()


def _exit_code(run_dir: Path, timeout: float = 60.0) -> int:
    """The exit code the offline run's log records when the run is finished. wandb's core process writes the log:
    ``wandb.finish`` can return before the last records reach the file, so they are waited for."""
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        try:
            codes = [r.exit.exit_code for r in read_wandb_records(log) if r.WhichOneof("record_type") == "exit"]
        except (AssertionError, struct.error):  # the header or the last chunk is still being written
            codes = []
        if codes or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(codes) == 1, f"{log}: {len(codes)} exit records after {timeout:.0f} s"
    return codes[0]


def test_a_fit_that_fails_finishes_the_wandb_run_and_flushes_the_csv_log(compose_cfg, tiny_paired_root, tmp_path,
                                                                          monkeypatch, wandb_offline):
    from clipdehaze.lit_module import DehazeLitModule
    from clipdehaze.train import train

    step = DehazeLitModule.training_step

    def fails_at_the_third_step(self, batch, batch_idx):
        if batch_idx == 2:
            raise RuntimeError("training step failed on purpose")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(DehazeLitModule, "training_step", fails_at_the_third_step)
    run = tmp_path / "run"
    cfg = compose_cfg("train", ["model=dehazeformer_test", "logger=wandb", "trainer=cpu", "trainer.max_epochs=1",
                                "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0",
                                "callbacks.rich_progress_bar=null", *_data(tiny_paired_root)], out=run)
    with pytest.raises(RuntimeError, match="failed on purpose"):
        train(cfg)

    assert wandb_offline.run is None
    assert _exit_code(run) == 1
    with open(run / "csv" / "metrics.csv", newline="") as f:
        logged = [r["step"] for r in csv.DictReader(f) if r.get("train/loss")]
    assert logged == ["0", "1"]  # the two steps before the failure, on disk although no flush interval was reached


def test_an_evaluation_finishes_its_wandb_run(compose_cfg, tiny_paired_root, tmp_path, wandb_offline):
    """clipdehaze-eval with ``logger=wandb``: closed with exit code 0 once the job is done."""
    from clipdehaze.evaluate import evaluate

    run = tmp_path / "eval"
    cfg = compose_cfg("eval", ["model=dcp", "logger=wandb", "trainer=cpu", "data=paired",
                               f"data.root={tiny_paired_root}", "data.num_workers=0", "data.name=tiny"], out=run)
    summary = evaluate(cfg)
    assert "test/psnr_tiny" in summary["metrics"]
    assert wandb_offline.run is None
    assert _exit_code(run) == 0
