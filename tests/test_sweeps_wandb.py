"""Runs as a user types them (console scripts, from a working directory outside the checkout): two paired folders
as two table rows, resume keeping the CSV history, and the loggers: wandb offline (the run log decoded record by
record), TensorBoard image panels, the CSV log beside both, the learning rate. Documented sweeps with every
launcher and the ablation's table are checked where the docs show them (tests/docs_harness.py: one run dir per job
for every documented multirun, the row counts and labels the comments promise)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from wandb_records import read_wandb_records


def _data(root: Path) -> list[str]:
    return ["data=paired", f"data.root={root}", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
            "data.name=tiny"]


QUICK = ["trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "callbacks.rich_progress_bar=null"]


@pytest.fixture
def run_cli(cli):
    """``run_cli(tool, args, cwd)``: the console script, which must succeed; its output."""
    def run(tool: str, args: list[str], cwd: Path) -> str:
        out = cli(tool, args, cwd)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
        return out.stdout + out.stderr

    return run


def _only_sweep(cwd: Path) -> Path:
    (sweep,) = (cwd / "outputs" / "train" / "multiruns").iterdir()
    return sweep


@pytest.mark.slow
def test_two_paired_folders_are_two_rows(run_cli, tiny_paired_root, tmp_path):
    """``data=paired`` on two different folders: same data name, different scored files -> two rows."""
    other = tmp_path / "other_set"
    from conftest import make_paired_folder

    make_paired_folder(other, {"test": [(40, 56), (52, 44), (48, 48)]}, seed=5)
    for root in (tiny_paired_root, other):
        run_cli("eval", ["model=dcp", "data=paired", f"data.root={root}", "data.num_workers=0"], tmp_path)
    run_cli("table", ["outputs/eval", "--out", "table"], tmp_path)
    with open(tmp_path / "table" / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["dataset"] for r in rows} == {"paired"} and {r["images"] for r in rows} == {"2", "3"}
    assert len({r["manifest"] for r in rows}) == 2


@pytest.mark.slow
def test_resume_appends_to_the_csv_log(run_cli, tiny_paired_root, tmp_path):
    run = tmp_path / "outputs" / "run"
    base = ["model=dehazeformer_test", *QUICK, "trainer.log_every_n_steps=1", *_data(tiny_paired_root),
            f"hydra.run.dir={run}"]
    run_cli("train", base, tmp_path)
    log = run / "csv" / "metrics.csv"
    first = [(r["step"], r["train/loss"]) for r in csv.DictReader(log.open()) if r.get("train/loss")]
    run_cli("train", [*base, "trainer.max_epochs=2", "resume=auto"], tmp_path)
    rows = list(csv.DictReader(log.open()))
    now = [(r["step"], r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(first) == 2 and now[:2] == first  # the first epoch's rows are still there, unchanged
    assert len(now) == 4 and len({step for step, _ in now}) == 4  # and the second epoch's follow, no step twice
    assert {r["epoch"] for r in rows if r.get("train/loss")} == {"0", "1"}
    assert any(r.get("train/lr") for r in rows)


@pytest.mark.slow
def test_wandb_offline_logs_scalars_images_config_and_tables(run_cli, tiny_paired_root, tmp_path):
    """A one-job multirun (so the run has a sweep group) logged offline; the run's records are decoded."""
    cmd = ["-m", "model=dehazeformer_test", "logger=wandb", "tags=[wbtest,offline]",
           "callbacks.image_panels.every_n_epochs=1", "callbacks.image_panels.num_images=2",
           "trainer.log_every_n_steps=1", *QUICK, "trainer.limit_val_batches=2", *_data(tiny_paired_root)]
    run_cli("train", cmd, tmp_path)
    sweep = _only_sweep(tmp_path)
    runs = list(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 1, list(sweep.rglob("offline-run-*"))
    assert (sweep / "0" / "csv" / "metrics.csv").is_file()  # the CSV log is kept beside wandb
    records = read_wandb_records(next(runs[0].glob("run-*.wandb")))
    by_type: dict[str, list] = {}
    for r in records:
        by_type.setdefault(r.WhichOneof("record_type"), []).append(r)

    (run,) = (r.run for r in by_type["run"])
    assert (run.project, run.run_group, run.job_type) == ("clipdehaze", sweep.name, "train")
    assert list(run.tags) == ["wbtest", "offline"]
    assert run.display_name == "dehazeformer_test-tiny-s42"

    history = [{"/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json) for i in h.history.item}
               for h in by_type["history"]]
    logged = {k for step in history for k in step}
    for key in ("train/loss", "train/lr", "val/psnr", "val/ssim", "test/psnr_tiny", "test/ssim_tiny"):
        assert key in logged, (key, sorted(logged))
        assert all(isinstance(s[key], float) for s in history if key in s), key
    assert sum("train/loss" in s for s in history) == 2  # one per training step (log_every_n_steps=1)

    files = runs[0] / "files"
    panel = next(s for s in history if "val/images/filenames" in s)
    assert panel["val/images/_type"] == "images/separated"
    assert len(panel["val/images/filenames"]) == 2  # num_images, over the first validation batches (batch 1)
    assert all(c.startswith("hazy | output | GT (") for c in panel["val/images/captions"])
    from PIL import Image

    for name in panel["val/images/filenames"]:
        img = np.asarray(Image.open(files / name))
        assert img.dtype == np.uint8 and img.shape[1] == 3 * img.shape[0]  # three 48x48 tiles side by side
        assert img.mean() > 20, "panel is black"  # [0, 1] floats cast to uint8 as they are would give 0 and 1
    table = next(s for s in history if "test/per_image_tiny/path" in s)
    assert table["test/per_image_tiny/_type"] == "table-file" and table["test/per_image_tiny/nrows"] == 2
    content = json.loads((files / table["test/per_image_tiny/path"]).read_text())
    assert content["columns"] == ["index", "name", "psnr", "ssim"] and len(content["data"]) == 2

    config = {i.key: json.loads(i.value_json) for c in by_type["config"] for i in c.config.update}
    assert "dehazeformer_test" in json.dumps(config["model"]) and config["tags"] == ["wbtest", "offline"]
    assert config["seed"] == 42 and "metrics" in config


@pytest.mark.slow
def test_tensorboard_gets_image_panels_and_the_csv_log_stays(run_cli, tiny_paired_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "outputs" / "tb"
    run_cli("train", ["model=cliphaze_test", "clip=tiny_random", "logger=tensorboard",
                              "callbacks.image_panels.every_n_epochs=1", *QUICK, "trainer.limit_val_batches=2",
                              "trainer.log_every_n_steps=1",
                              *_data(tiny_paired_root),
                              f"hydra.run.dir={run}"], tmp_path)
    assert (run / "csv" / "metrics.csv").is_file()
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"train/loss", "train/lr", "val/psnr"} <= set(acc.Tags()["scalars"])
    images = sorted(acc.Tags()["images"])
    assert images == ["val/images/0", "val/images/1"]
    from io import BytesIO

    from PIL import Image

    event = acc.Images("val/images/0")[0]
    img = np.asarray(Image.open(BytesIO(event.encoded_image_string)))
    assert img.shape[1] == 4 * img.shape[0] and img.mean() > 20  # hazy | output | GT | CLIP density
