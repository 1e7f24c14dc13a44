"""``clipdehaze-reproduce <paper>``: every table lists, dry-runs with its recipe numbers and cost, trains as one
multirun, scores a folder of weights files saved as upstream saves them, and renders beside published.csv."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipdehaze.reproduce import recipes as R
from clipdehaze.reproduce import tables as T

UPSTREAM = Path(__file__).parent / "data" / "upstream_recipes"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
TABLES = [(p, t) for p, paper in R.papers().items() for t in paper.tables]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _upstream_numbers(recipe: R.Recipe) -> dict:
    repo = {"IDKiro/DehazeFormer": "DehazeFormer", "AmeryXiong/MixDehazeNet": "MixDehazeNet",
            "DanielHo-BS/MixCLDehazeNet": "MixCLDehazeNet"}[recipe.upstream.repo]
    return json.loads((UPSTREAM / repo / recipe.file.removeprefix("configs/")).read_text())


def _png(path: Path, seed: int, size=(48, 64)) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[0] // 8, size[1] // 8, 3)) * 255).astype(np.uint8)).resize(
        (size[1], size[0]), Image.BICUBIC).save(path)


def _paired(root: Path, splits=("train", "test"), n: int = 3) -> None:
    for split in splits:
        for k in range(n):
            _png(root / split / "hazy" / f"{k:04d}.png", k)
            _png(root / split / "GT" / f"{k:04d}.png", 50 + k)


def _upstream_weights(path: Path, generator: str, seed: int) -> None:
    """Random weights saved as DehazeFormer's/MixDehazeNet's train.py saves them (nn.DataParallel's keys)."""
    from clipdehaze.models import create_generator

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in create_generator(generator).state_dict().items()}}, path)


# ----------------------------------------------------------------------------------------------------- --list
@pytest.mark.parametrize("paper", list(R.papers()))
def test_list_shows_every_table_and_row(paper, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert T.main(paper, ["--list"]) == 0
    out = capsys.readouterr().out
    p = R.papers()[paper]
    for table in p.tables.values():
        assert f"--table {table.name}:" in out
        for row in table.rows:
            line = next(line for line in out.splitlines() if line.strip().startswith(row + " "))
            assert p.recipes[row].file in line
            assert ("NOT runnable" in line) == (row == "mixdehazenet_l_nh_haze")


# ----------------------------------------------------------------------------------------------------- --dry-run
@pytest.mark.parametrize("paper,table", TABLES, ids=[f"{p}-{t}" for p, t in TABLES])
@pytest.mark.slow
def test_dry_run_lists_every_job_with_upstream_numbers_and_cost(paper, table, capsys, monkeypatch, tmp_path):
    """Every runnable row is one job whose printed batch, patch, lr, epochs run (epochs + 1), T_max / eta_min and
    steps are upstream's file's (vendored copy), with a GPU-hour estimate and the assumption it rests on."""
    monkeypatch.chdir(tmp_path)
    assert T.main(paper, ["--table", table, "--dry-run"]) == 0
    out = capsys.readouterr().out
    p = R.papers()[paper]
    head = next(line for line in out.splitlines() if line.startswith("| job |"))
    columns = _cells(head)
    jobs = {_cells(line)[1].strip("`"): dict(zip(columns, _cells(line))) for line in out.splitlines()
            if line.startswith("| ") and line[2].isdigit()}
    runnable = [r for r in p.tables[table].rows if p.recipes[r].runnable]
    assert list(jobs) == runnable
    total = 0.0
    for row, job in jobs.items():
        recipe, c = p.recipes[row], _upstream_numbers(p.recipes[row])
        assert job["upstream file"] == recipe.file and job["model"] == recipe.generator
        assert (int(job["batch"]), int(job["patch"]), float(job["lr"])) == (c["batch_size"], c["patch_size"], c["lr"])
        assert int(job["epochs run"]) == c["epochs"] + 1
        assert job["T_max / eta_min"] == f"{c['epochs']} / {c['lr'] * 1e-2:.3g}"
        assert job["validation"] == {"valid": "centre crop", "test": "full image"}[c["valid_mode"]]
        assert int(job["val every"]) == c["eval_freq"] and job["precision"] == "16-mixed"
        assert job["augment"] == ("hflip" if c["only_h_flip"] else "hflip+rot90")
        n = recipe.setting.train_images  # no data folder here: the set's published size
        assert job["training images"] == f"{n} (the set's published size)"
        assert int(job["steps"].replace(",", "")) == (c["epochs"] + 1) * (n // c["batch_size"])
        hours, basis = re.fullmatch(r"([\d.]+) \((.+)\)", job["GPU-h"]).groups()
        assert float(hours) > 0 and basis.startswith("assumed")
        assert (basis == "assumed + resnet152") == (recipe.upstream.loss == "l1_cr_upstream")
        total += float(hours)
    assert float(re.search(r"estimated total: ([\d.]+) GPU-hours", out).group(1)) == pytest.approx(total, abs=0.05 * len(jobs))
    assert "an assumption, not a measurement" in out and "--assume-tmacs" in out
    for row in p.tables[table].rows:
        if row not in runnable:
            assert f"skipping {row}: " in out and "empty upstream" in out


@pytest.mark.slow
def test_dry_run_uses_a_measured_rate_and_the_overrides(capsys, monkeypatch, tmp_path):
    """A clipdehaze-bench result gives the rows it measured a measured cost (scaled to the patch by pixel count);
    sweeps and overrides make more jobs with the values they set."""
    monkeypatch.chdir(tmp_path)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"kind": "models", "environment": {"device": "NVIDIA H100"},
                                 "rows": [{"model": "dehazeformer_t", "train_step_s": 0.1, "train_batch": 4,
                                           "train_crop": 128}]}))
    assert T.main("dehazeformer", ["--table", "sots_outdoor", "--dry-run", "--throughput", str(bench), "seed=0,1",
                                   "data.batch_size=64"]) == 0
    out = capsys.readouterr().out
    jobs = [_cells(line) for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(jobs) == 8 and {j[4] for j in jobs} == {"seed=0 data.batch_size=64", "seed=1 data.batch_size=64"}
    t = next(j for j in jobs if j[1] == "`dehazeformer_t_ots`")
    steps = 31 * (313950 // 64)
    # 40 images/s at 128² -> 10 images/s at 256²
    assert t[5] == "64" and t[-2] == f"{steps:,}" and t[-1] == f"{steps * 64 * 0.1 / 3600:.1f} (measured)"
    assert all(j[-1].endswith("(assumed)") for j in jobs if j[3] != "dehazeformer_t")
    assert "measured: training images/s from" in out and "NVIDIA H100" in out


def test_arguments_are_checked(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert T.main("nopaper", ["--list"]) == 2 and "papers: dehazeformer, mixdehazenet" in capsys.readouterr().err
    assert T.main("dehazeformer", ["--table", "nope"]) == 2 and "its tables: sots_indoor" in capsys.readouterr().err
    assert T.main("dehazeformer", ["--table", "reside6k", "--rows", "dehazeformer_t_its"]) == 2
    with pytest.raises(SystemExit, match="pick some with --rows"):
        T.main("dehazeformer", ["--table", "reside6k", "experiment=dehazeformer_t_its"])
    assert T.split_argv(["--weights", "a.pth", "b", "trainer=cpu", "-m", "~logger", "--dry-run"]) == (
        ["--weights", "a.pth", "b", "--dry-run"], ["trainer=cpu", "~logger"])
    assert T.main("dehazeformer", ["--table", "reside6k", "--render"]) == 2
    assert "nothing to render" in capsys.readouterr().err
    (tmp_path / "dehazeformer_t_reside6k.pth").write_bytes(b"x")
    with pytest.raises(SystemExit, match="model come from the table's rows and --weights; drop model="):
        T.main("dehazeformer", ["--table", "reside6k", "--weights", str(tmp_path / "dehazeformer_t_reside6k.pth"),
                                "model=dehazeformer_s"])


# ----------------------------------------------------------------------------------------------------- --weights
def test_weights_files_are_matched_to_rows_by_name(tmp_path):
    paper = R.papers()["dehazeformer"]
    rows = list(paper.tables["sots_indoor"].rows)
    saved = tmp_path / "saved_models"
    for rel in ("indoor/dehazeformer-t.pth", "outdoor/dehazeformer-t.pth", "indoor/dehazeformer-l.pth",
                "dehazeformer_s_its.safetensors", "notes.txt"):
        (saved / rel).parent.mkdir(parents=True, exist_ok=True)
        (saved / rel).write_bytes(b"x")
    found = T.match_weights(paper, rows, [saved])
    assert found == {"dehazeformer_t_its": saved / "indoor/dehazeformer-t.pth",
                     "dehazeformer_s_its": saved / "dehazeformer_s_its.safetensors",
                     "dehazeformer_l_its": saved / "indoor/dehazeformer-l.pth"}
    # one setting's folder, or files named one by one: the upstream file name alone
    assert T.match_weights(paper, rows, [saved / "indoor"]) == {
        "dehazeformer_t_its": saved / "indoor/dehazeformer-t.pth", "dehazeformer_l_its": saved / "indoor/dehazeformer-l.pth"}
    with pytest.raises(SystemExit, match="matches several weights files"):
        T.match_weights(paper, rows, [saved / "indoor/dehazeformer-t.pth", saved / "outdoor/dehazeformer-t.pth"])
    mix = R.papers()["mixdehazenet"]
    assert mix.recipes["mixcldehazenet_s_reside6k"].saved_as == "ParametricAtten2_5/reside6k/best.pth"


def _published_fixture(root: Path, rows: list[dict]) -> None:
    """A published.csv in the format experiments/*/published.csv use (with the paper-table column)."""
    (root / "dehazeformer").mkdir(parents=True)
    with open(root / "dehazeformer" / "published.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["method", "generator", "dataset", "psnr", "ssim", "params", "macs", "source", "table"])
        w.writeheader()
        w.writerows(rows)


def _reproduce(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "clipdehaze.reproduce.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res


def _table_rows(text: str) -> dict[str, list[str]]:
    return {_cells(line)[1].strip("`"): _cells(line) for line in text.splitlines() if line.startswith("| ")
            and "`" in line}


@pytest.mark.slow
def test_published_weights_score_a_shortened_table_and_render_beside_published(tmp_path):
    """Random-weight files saved as upstream's train.py saves them (saved_models/<exp>/<model>.pth,
    {'state_dict': {'module.' + key: ...}}) go through the one command: each matched row is scored by
    clipdehaze-eval on its test set (two images of a tiny SOTS-indoor in the paper layout), the table is rendered
    beside a published.csv, and the rows without weights are listed as not yet run."""
    data = tmp_path / "data"
    _paired(data / "RESIDE-IN", splits=("test",))
    saved = tmp_path / "saved_models"
    _upstream_weights(saved / "indoor" / "dehazeformer-t.pth", "dehazeformer_t", 1)
    _upstream_weights(saved / "indoor" / "dehazeformer-s.pth", "dehazeformer_s", 2)
    _upstream_weights(saved / "outdoor" / "dehazeformer-t.pth", "dehazeformer_t", 3)  # another table's
    experiments = tmp_path / "experiments"
    _published_fixture(experiments, [
        {"method": "DehazeFormer-T", "generator": "dehazeformer_t", "dataset": "sots_indoor", "psnr": "35.15",
         "ssim": "0.989", "params": "0.686", "macs": "6.65", "source": "fixture A", "table": "Table 2"},
        {"method": "DehazeFormer-S", "generator": "dehazeformer_s", "dataset": "sots_indoor", "psnr": "36.82",
         "ssim": "0.992", "params": "1.283", "macs": "13.13", "source": "fixture B", "table": "Table 2"},
        {"method": "DehazeFormer-B", "generator": "dehazeformer_b", "dataset": "sots_indoor", "psnr": "37.84",
         "ssim": "0.994", "params": "2.514", "macs": "25.79", "source": "fixture B", "table": "Table 2"}])
    out = tmp_path / "out"
    env = {**ENV, "CLIPDEHAZE_DATA_DIR": str(data)}
    res = _reproduce(["dehazeformer", "--table", "sots_indoor", "--weights", str(saved), "trainer.limit_test_batches=2",
                      "--experiments", str(experiments), "--out", str(out)], tmp_path, env)
    text = (out / "table.md").read_text()
    assert text in res.stdout
    rows = _table_rows(text)
    for row, file, published in (("dehazeformer_t_its", saved / "indoor" / "dehazeformer-t.pth", (35.15, 0.989)),
                                 ("dehazeformer_s_its", saved / "indoor" / "dehazeformer-s.pth", (36.82, 0.992))):
        summary = json.loads((out / "weights" / row / "metrics.json").read_text())
        assert summary["weights"]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
        assert summary["weights"]["origin"] == "external" and summary["data"] == "sots_indoor"
        psnr, ssim = summary["metrics"]["test/psnr_sots_indoor"], summary["metrics"]["test/ssim_sots_indoor"]
        cells = rows[row]
        assert cells[2:8] == [f"{psnr:.2f}", f"{ssim:.4f}", f"{published[0]:.2f}", f"{published[1]:.4f}",
                              f"{psnr - published[0]:+.2f}", f"{ssim - published[1]:+.4f}"]
        assert cells[-3:] == ["1", "external", "2/3"]
    assert rows["dehazeformer_b_its"][2] == "-" and rows["dehazeformer_b_its"][4] == "37.84"
    waiting = text.split("## Rows not yet run", 1)[1]
    assert all(f"`dehazeformer_{v}_its`" in waiting for v in "bwdml") and "dehazeformer_t_its" not in waiting
    assert "Protocol of our numbers: DehazeFormer protocol" in text and "(paper table: Table 2)" in text
    assert "no weights for dehazeformer_b_its (looked for dehazeformer_b_its.pth, indoor/dehazeformer-b.pth)" in res.stdout


@pytest.mark.slow
def test_mixdehazenet_weights_render_beside_the_projects_published_numbers(tmp_path):
    """The project's own experiments/mixdehazenet/published.csv: MixDehazeNet-S on SOTS-outdoor (35.09 dB)."""
    data = tmp_path / "data"
    _paired(data / "RESIDE-OUT", splits=("test",))
    _upstream_weights(tmp_path / "w" / "MixDehazeNet-s.pth", "mixdehazenet_s", 0)
    out = tmp_path / "out"
    _reproduce(["mixdehazenet", "--table", "sots_outdoor", "--weights", str(tmp_path / "w" / "MixDehazeNet-s.pth"),
                "trainer.limit_test_batches=1", "--out", str(out)], tmp_path, {**ENV, "CLIPDEHAZE_DATA_DIR": str(data)})
    rows = _table_rows((out / "table.md").read_text())
    assert rows["mixdehazenet_s_ots"][0].startswith("MixDehazeNet-S [") and rows["mixdehazenet_s_ots"][4] == "35.09"
    assert rows["mixdehazenet_l_ots"][2] == "-" and rows["mixdehazenet_l_ots"][4] == "36.50"


# ----------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_a_table_trains_as_one_multirun_and_renders(tmp_path):
    """One row of RESIDE-6K, shortened on CPU with pass-through overrides: the multirun lands in the printed
    folder, its run is the row's recipe (experiment, loss on upstream's scale), and --render reads it again."""
    data = tmp_path / "data"
    _paired(data / "RESIDE-6K")
    env = {**ENV, "CLIPDEHAZE_DATA_DIR": str(data)}
    res = _reproduce(["dehazeformer", "--table", "reside6k", "--rows", "dehazeformer_t_reside6k", "trainer=cpu",
                      "trainer.precision=32-true", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                      "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "data.crop_size=48",
                      "data.batch_size=2", "data.num_workers=0", "~callbacks.rich_progress_bar"], tmp_path, env)
    train_dir = Path(re.search(r"as one multirun into (\S+)", res.stdout).group(1))
    assert train_dir.parent.parent == tmp_path / "outputs" / "reproduce" / "dehazeformer-reside6k"
    summary = json.loads(next(train_dir.rglob("metrics.json")).read_text())
    assert summary["config"]["recipe"]["experiment"] == "dehazeformer_t_reside6k"
    assert summary["config"]["scheduler"]["scheduler"]["T_max"] == 1000
    m = summary["metrics"]
    assert summary["config"]["loss"] == {"_target_": "clipdehaze.losses.L1Loss", "scale": 2.0}
    rendered = subprocess.run([sys.executable, "-m", "clipdehaze.reproduce.cli", "dehazeformer", "--table", "reside6k",
                               "--render"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    row = _table_rows(rendered.stdout)["dehazeformer_t_reside6k"]
    assert row[2] == f"{m['test/psnr_reside6k']:.2f}" and row[-2] == "trained"
