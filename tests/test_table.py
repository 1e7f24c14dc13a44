"""clipdehaze-table on fixture runs: a row per variant, dataset identity by manifest, seed statistics, NaN seeds,
provenance flags, published rows matched by method and dataset, and a table.tex that compiles."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from scipy import stats

from clipdehaze.table import aggregate, collect_runs, latex_escape, make_table, to_run

PROTO = "DehazeFormer protocol: fixture"


def _cfg(gen: str, seed: int, **extra) -> dict:
    """A resolved config as clipdehaze-train saves it: run-location keys differ in every run, as they do."""
    cfg = {"model": {"name": gen}, "seed": seed, "data": {"name": "sots_indoor", "seed": seed, "root": f"/d/{seed}"},
           "optimizer": {"lr": 2e-4}, "paths": {"output_dir": f"/runs/{gen}/{seed}"},
           "callbacks": {"model_checkpoint": {"dirpath": f"/runs/{gen}/{seed}/checkpoints"}}}
    for key, value in extra.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def _run(root: Path, name: str, gen: str, seed: int, psnr: float, ssim: float = 0.9, data: str = "sots_indoor",
         manifest: str = "m1", images: int = 10, available: int = 10, weights: str = "trained",
         clip: str | None = None, params: int = 1_000_000, **cfg_extra) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "generator": gen, "data": data, "seed": seed, "metric_protocol": PROTO, "params": params,
        "metrics": {f"test/psnr_{data}": psnr, f"test/ssim_{data}": ssim, "train/loss": 0.1},
        "images": images, "dataset": {"name": data, "images": images, "available": available,
                                      "subset": images < available, "manifest_sha256": manifest},
        "weights": {"origin": weights}, "clip": clip, "config": _cfg(gen, seed, **cfg_extra)}))
    return d


def test_mean_std_ci_over_seeds_and_published_matching(tmp_path):
    runs = tmp_path / "multirun"
    _run(runs, "0", "mixdehazenet_t", 0, 30.0, 0.90)
    _run(runs, "1", "mixdehazenet_t", 1, 32.0, 0.94)
    _run(runs, "2", "dehazeformer_t", 0, 35.5, 0.98)
    (runs / "bench.json").write_text("{}")  # unrelated json files are ignored
    exp = tmp_path / "experiments" / "paperx"
    exp.mkdir(parents=True)
    long_source = "Lu et al. 2023, Table 1 of the arXiv version, as repeated in the official repository README"
    (exp / "published.csv").write_text(
        "method,generator,dataset,psnr,ssim,params,macs,source\n"
        f"MixDehazeNet-T,mixdehazenet_t,sots_indoor,35.00,0.988,1.62,,\"{long_source}\"\n"
        "MixDehazeNet-L,mixdehazenet_l,sots_indoor,42.62,,12.42,,short src\n")
    out = tmp_path / "tables"
    result = make_table([runs], "paperx", out, experiments_root=tmp_path / "experiments")
    ours = {r["generator"]: r for r in result["rows"]}
    mix = ours["mixdehazenet_t"]
    assert mix["psnr"] == pytest.approx(31.0) and mix["n"] == 2 and mix["seeds"] == "0 1"
    assert mix["psnr_std"] == pytest.approx(2 ** 0.5)  # sample std of (30, 32)
    assert mix["psnr_ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * 2 ** 0.5 / 2 ** 0.5)
    assert mix["delta_psnr"] == pytest.approx(-4.0) and mix["published_psnr"] == 35.0
    assert ours["dehazeformer_t"]["delta_psnr"] is None and ours["dehazeformer_t"]["n"] == 1
    # The published row without a run is listed apart, not as a row of the comparison.
    assert [p["method"] for p in result["unmatched"]] == ["MixDehazeNet-L"]
    md = (out / "table.md").read_text()
    assert "31.00 ± 1.41 [18.29, 43.71]" in md and "35.00 / 0.9880" in md and PROTO in md
    assert "## Published rows without a matching run" in md and "MixDehazeNet-L" in md.split("## Published rows")[1]
    assert "[1]" in md and f"[1] {long_source}" in md  # a long source is a footnote
    assert (out / "table.csv").read_text().count("\n") == 4  # header + 2 ours + 1 unmatched published
    assert (out / "plots.png").stat().st_size > 1000


def test_a_row_is_a_variant_not_a_pile_of_runs(tmp_path):
    """The four CAM variants x two seeds: four rows of n=2, labelled by the differing values; the run-location
    keys (output dirs, data roots) that differ in every run split nothing."""
    for i, (density, embedding) in enumerate([(True, True), (True, False), (False, True), (False, False)]):
        for seed in (0, 1):
            _run(tmp_path, f"{i}-{seed}", "cliphaze_t", seed, 20.0 + i + seed / 10,
                 model__cam_density=density, model__cam_embedding=embedding)
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert len(rows) == 4 and all(r["n"] == 2 for r in rows)
    labels = sorted(r["variant"] for r in rows)
    assert labels[0] == "cam_density=false, cam_embedding=false"
    assert {round(r["psnr"], 2) for r in rows} == {20.05, 21.05, 22.05, 23.05}
    md = (tmp_path / "t" / "table.md").read_text()
    assert "| cliphaze_t (cam_density=false, cam_embedding=true) |" in md


def test_learning_rates_are_not_seeds(tmp_path):
    for lr in (1e-3, 1e-4):
        for seed in (0, 1):
            _run(tmp_path, f"{lr}-{seed}", "dehazeformer_t", seed, 25.0, optimizer__lr=lr)
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert sorted(r["variant"] for r in rows) == ["lr=0.0001", "lr=0.001"] and [r["n"] for r in rows] == [2, 2]


def test_two_folders_under_one_data_name_never_merge(tmp_path):
    _run(tmp_path, "a", "dcp", 0, 20.0, data="paired", manifest="indoor-files")
    _run(tmp_path, "b", "dcp", 0, 17.0, data="paired", manifest="outdoor-files")
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert sorted(r["psnr"] for r in rows) == [17.0, 20.0] and all(r["n"] == 1 for r in rows)
    assert {r["manifest"] for r in rows} == {"indoor-files", "outdoor-file"}  # 12 characters shown


def test_protocols_never_mix(tmp_path):
    _run(tmp_path, "a", "dcp", 0, 20.0)
    d = _run(tmp_path, "b", "dcp", 1, 22.0)
    data = json.loads((d / "metrics.json").read_text())
    data["metric_protocol"] = "BasicSR protocol: fixture"
    (d / "metrics.json").write_text(json.dumps(data))
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert sorted(r["psnr"] for r in rows) == [20.0, 22.0]


@pytest.mark.parametrize("bad", [float("nan"), None], ids=["NaN", "null"])  # metrics.json writes NaN as null
def test_a_nan_seed_is_reported_not_silently_dropped(tmp_path, bad):
    for seed, value in ((0, 30.0), (1, 32.0), (2, bad)):
        _run(tmp_path, str(seed), "dehazeformer_t", seed, value)
    (row,) = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert row["n"] == 3 and row["psnr_n"] == 2 and row["psnr"] == pytest.approx(31.0)
    assert row["psnr_nonfinite_seeds"] == "2"
    assert "(non-finite: seed 2)" in (tmp_path / "t" / "table.md").read_text()


def test_group_by_and_ignore_override_the_automatic_choice(tmp_path):
    for lr in (1e-3, 1e-4):
        for epochs in (1, 2):
            _run(tmp_path, f"{lr}-{epochs}", "dehazeformer_t", 0, 25.0, optimizer__lr=lr, trainer__max_epochs=epochs)
    assert len(make_table([tmp_path], None, tmp_path / "t")["rows"]) == 4
    rows = make_table([tmp_path], None, tmp_path / "t", ignore=["trainer.*"])["rows"]
    assert sorted(r["variant"] for r in rows) == ["lr=0.0001", "lr=0.001"]
    rows = make_table([tmp_path], None, tmp_path / "t", group_by=["trainer.max_epochs"])["rows"]
    assert sorted(r["variant"] for r in rows) == ["max_epochs=1", "max_epochs=2"]


def test_flags_random_weights_random_clip_and_subsets(tmp_path):
    _run(tmp_path, "a", "cliphaze_t", 0, 20.0, weights="random", clip="clipdehaze_tiny[abc]@64px:random(seed=0)",
         images=2, available=500)
    (row,) = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert row["flags"] == "random weights; random CLIP; subset 2/500" and row["images"] == "2"


def test_eval_runs_group_by_their_training_config_and_seed(tmp_path):
    """Evaluations of a sweep's checkpoints average over the training seeds, split by the training variant."""
    for fusion in ("parametric", "none"):
        for seed in (0, 1):
            d = tmp_path / f"{fusion}-{seed}"
            d.mkdir()
            (d / "metrics.json").write_text(json.dumps({
                "generator": "mixcldehazenet_t", "data": "raindrop", "seed": seed, "metric_protocol": PROTO,
                "params": 1, "metrics": {"test/psnr_raindrop": 28.0 + seed}, "dataset": {"manifest_sha256": "r"},
                "weights": {"origin": "checkpoint"},
                "config": {"ckpt_path": f"/sweep/{fusion}{seed}/last.ckpt", "seed": 42, "data": {"name": "raindrop"}},
                "train_config": _cfg("mixcldehazenet_t", seed, model__fusion=fusion)}))
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert sorted(r["variant"] for r in rows) == ["fusion=none", "fusion=parametric"]
    assert all(r["n"] == 2 and r["psnr"] == 28.5 for r in rows)


def test_old_metrics_json_without_provenance_still_reads(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"generator": "dcp", "data": "x", "seed": 0, "metric_protocol": PROTO,
                                                "params": 0, "metrics": {"test/psnr_x": 20.0}}))
    (row,) = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert row["psnr"] == 20.0 and row["images"] == "-"


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no clipdehaze metrics.json"):
        make_table([tmp_path], None, tmp_path / "t")
    _run(tmp_path, "a", "dcp", 0, 20.0)
    with pytest.raises(FileNotFoundError, match="published.csv not found"):
        make_table([tmp_path], "nopaper", tmp_path / "t", experiments_root=tmp_path)
    (tmp_path / "a" / "metrics.json").write_text("{NaN")
    with pytest.raises(ValueError, match="unreadable metrics.json"):
        collect_runs([tmp_path])


def test_latex_escape():
    assert latex_escape("cam_density=false 50% a&b #1 $x {y} ~^\\") == (
        r"cam\_density=false 50\% a\&b \#1 \$x \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}")


def test_table_tex_compiles(tmp_path):
    """table.tex, with the characters LaTeX treats specially in labels and sources, compiles with pdflatex
    (installed by .ci/run; skipped with the reason where it is absent)."""
    if shutil.which("pdflatex") is None:
        from conftest import require_or_skip

        require_or_skip("pdflatex", "pdflatex not installed (.ci/run installs texlive-latex-base + "
                                    "texlive-latex-recommended)")
    for seed in (0, 1):
        _run(tmp_path / "runs", f"a{seed}", "cliphaze_t", seed, 20.0 + seed, model__cam_density=False)
        _run(tmp_path / "runs", f"b{seed}", "cliphaze_t", seed, 21.0 + seed, model__cam_density=True)
    exp = tmp_path / "exp" / "p"
    exp.mkdir(parents=True)
    (exp / "published.csv").write_text("method,generator,dataset,psnr,ssim,params,macs,source\n"
                                       "CLIP_Haze #1,cliphaze_t,sots_indoor,30.1,0.97,1.2,,Tab. 2 (50% & more) ~ ^\n"
                                       "Other_Net,other_net,sots_indoor,29.0,0.96,,,x_y\n")
    out = tmp_path / "t"
    make_table([tmp_path / "runs"], "p", out, experiments_root=tmp_path / "exp")
    (out / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                 "\\input{table.tex}\n\\end{document}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=out,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
    assert (out / "doc.pdf").stat().st_size > 1000


def test_every_published_csv_reads_with_our_dataset_names():
    """Each experiments/*/published.csv parses (plain numbers) and names datasets as our data configs do, so
    ``clipdehaze-table --paper`` places the published rows next to ours."""
    import yaml

    from clipdehaze.table import EXPERIMENTS, read_published
    from clipdehaze.utils.resources import project_dir

    conf = project_dir("conf") / "data"
    names = {yaml.safe_load(f.read_text()).get("name") for f in conf.glob("*.yaml")}
    papers = sorted(p.parent.name for p in EXPERIMENTS.glob("*/published.csv"))
    assert {"mixdehazenet", "sar_weather"} <= set(papers)
    for paper in papers:
        rows = read_published(paper)
        assert rows, paper
        for r in rows:
            assert r["dataset"] in names, (paper, r["dataset"])
            assert r["psnr"] is not None and r["source"], (paper, r["method"])
            assert r["params"] is None or 0 < r["params"] < 1000, (paper, r["method"], "params in M")


def test_published_csv_with_units_names_the_cell(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "published.csv").write_text("method,dataset,psnr,ssim,params,macs,source\n"
                                                 "X,raindrop,30.0,0.9,44.00M,12.26G,somewhere\n")
    from clipdehaze.table import read_published

    with pytest.raises(ValueError, match="X on raindrop: params='44.00M' is not a number"):
        read_published("p", tmp_path)
