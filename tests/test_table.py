"""clipdehaze-table on fixture runs: a row is one scored thing (weights x images x protocol x evaluation options x
model-defining keys; a train run and the evaluation of its checkpoint merge, two weight files do not), every
shipped config key has a class, seed statistics, NaN and missing seeds, provenance flags, published rows matched by
method and dataset, and a table.tex that compiles."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from clipdehaze.render.latex import latex_escape
from clipdehaze.runs.collect import collect_runs
from clipdehaze.table import make_table

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
    assert mix["psnr_ci95"] == pytest.approx(math.tan(math.pi * 0.475))  # t(0.975, 1 df: Cauchy) * sqrt(2) / sqrt(2)
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


# ------------------------------------------------------------------------------------------------------------
# What a row is: one scored thing
def _summary(root: Path, name: str, *, gen: str = "dehazeformer_t", seed: int = 0, psnr: float = 30.0,
             weights: dict | None = None, config: dict | None = None, train_config: dict | None = None,
             protocol: str = PROTO, manifest: str = "m1", images: int = 10, available: int = 10,
             metrics: dict | None = None, **extra) -> Path:
    """A metrics.json as clipdehaze-train / clipdehaze-eval write it (only the fields the table reads)."""
    d = root / name
    d.mkdir(parents=True)
    summary = {"generator": gen, "data": "sots_indoor", "seed": seed, "metric_protocol": protocol, "params": 10,
               "metrics": metrics if metrics is not None else {"test/psnr_sots_indoor": psnr,
                                                               "test/ssim_sots_indoor": 0.9},
               "dataset": {"name": "sots_indoor", "images": images, "available": available,
                           "subset": images < available, "manifest_sha256": manifest},
               "weights": weights or {"origin": "trained"}, "clip": None, "clip_control": None,
               "config": config or {}, **extra}
    if train_config is not None:
        summary["train_config"] = train_config
    (d / "metrics.json").write_text(json.dumps(summary))
    return d


def _eval_config(**top) -> dict:
    """clipdehaze-eval's resolved config, with run-location keys that differ per run (its ``model`` builds the
    network of published weights; a checkpoint's evaluation builds it from the checkpoint instead)."""
    return {"task_name": "eval", "model": {"name": "dehazeformer_t", "depths": [2, 2]}, "seed": 42, "tta": "none",
            "use_ema": True, "save_test_outputs": False, "clip_cache": True, "data": {"name": "sots_indoor",
            "root": "/data/sots", "num_workers": 4}, "paths": {"output_dir": "/runs/e"}, **top}


def test_two_weight_files_on_one_set_are_two_rows(tmp_path):
    """The ITS and the OTS model of one variant on one set: two rows labelled by file and sha256, not one "n=2"
    row flagged "repeated seed"."""
    for name, sha, psnr in (("its", "a" * 64, 36.6), ("ots", "b" * 64, 33.1)):
        _summary(tmp_path, name, psnr=psnr, weights={"origin": "published", "path": f"/w/{name}.pth", "sha256": sha},
                 config=_eval_config(weights_path=f"/w/{name}.pth", paths={"output_dir": f"/runs/{name}"}))
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert sorted((r["method"], r["n"], r["psnr"]) for r in rows) == [
        ("dehazeformer_t (weights=its.pth@aaaaaaaa)", 1, 36.6), ("dehazeformer_t (weights=ots.pth@bbbbbbbb)", 1, 33.1)]
    assert all("repeated seed" not in r["flags"] for r in rows)
    # The same file evaluated twice (another folder, another seed, other execution options) is one scored thing.
    _summary(tmp_path, "its-again", psnr=36.6, seed=7,
             weights={"origin": "published", "path": "/elsewhere/its.pth", "sha256": "a" * 64},
             config=_eval_config(seed=7, save_test_outputs=True, clip_cache=False, paths={"output_dir": "/x"}))
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    its = next(r for r in rows if "its.pth" in r["method"])
    assert len(rows) == 2 and its["n"] == 1 and its["provenance"] == "2 eval" and its["seeds"] == "-"


def _train_config(seed: int, **extra) -> dict:
    cfg = _cfg("dehazeformer_t", seed, **extra)
    cfg["task_name"] = "train"
    cfg["callbacks"]["model_checkpoint"]["filename"] = "best-epoch{epoch:03d}"
    return cfg


def test_a_train_run_and_the_evaluation_of_its_checkpoint_merge(tmp_path):
    """Seed 0's training run and an evaluation of its best checkpoint (same sha256) are one sample; seed 1's
    evaluation adds the second. One row, n=2, and the runs column says which is which."""
    best = {seed: f"/runs/{seed}/checkpoints/best-epoch007.ckpt" for seed in (0, 1)}
    _summary(tmp_path, "train0", seed=0, psnr=30.0, config=_train_config(0),
             weights={"origin": "trained", "path": best[0], "sha256": "0" * 64})
    for seed, psnr in ((0, 30.0), (1, 32.0)):
        _summary(tmp_path, f"eval{seed}", seed=seed, psnr=psnr, train_config=_train_config(seed),
                 config=_eval_config(ckpt_path=best[seed], compile={"enabled": True}),
                 weights={"origin": "checkpoint", "path": best[seed], "sha256": str(seed) * 64, "ema": None})
    (row,) = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert row["n"] == 2 and row["psnr"] == 31.0 and row["seeds"] == "0 1"
    assert row["provenance"] == "1 train + 2 eval" and row["flags"] == "" and row["variant"] == ""
    md = (tmp_path / "t" / "table.md").read_text()
    assert "| 1 train + 2 eval |" in md


def test_last_and_best_checkpoint_of_one_run_are_two_rows(tmp_path):
    for ckpt, sha, psnr in (("best-epoch004", "b" * 64, 31.0), ("last", "c" * 64, 30.2)):
        path = f"/runs/0/checkpoints/{ckpt}.ckpt"
        _summary(tmp_path, ckpt, seed=0, psnr=psnr, train_config=_train_config(0),
                 config=_eval_config(ckpt_path=path),
                 weights={"origin": "checkpoint", "path": path, "sha256": sha})
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert sorted((r["variant"], r["psnr"]) for r in rows) == [("checkpoint=best", 31.0), ("checkpoint=last", 30.2)]


def test_execution_only_keys_split_nothing_and_model_keys_do(tmp_path):
    """The keys the issue found splitting one variant (all execution-only or locations) leave one row of three
    seeds; a model-defining key splits it."""
    noise = [{"loss": {"weights_path": "/w/resnet.pth", "download": False}, "compile": {"enabled": True},
              "save_test_outputs": True, "nonfinite_loss": "skip", "clip": {"checkpoint": "/c/a.pt"}},
             {"loss": {"weights_path": "/other/resnet.pth", "download": True}, "compile": {"enabled": False,
              "mode": "max-autotune"}, "nonfinite_loss": "raise", "clip": {"checkpoint": "/c/b.pt"}},
             {"trainer": {"accelerator": "gpu", "strategy": "ddp"}, "data": {"num_workers": 0, "pin_memory": True}}]
    for seed, extra in enumerate(noise):
        cfg = _train_config(seed)
        for group, values in extra.items():
            cfg.setdefault(group, {}) if isinstance(values, dict) else None
            if isinstance(values, dict):
                cfg[group].update(values)
            else:
                cfg[group] = values
        _summary(tmp_path, f"s{seed}", seed=seed, psnr=30.0 + seed, config=cfg)
    (row,) = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert row["n"] == 3 and row["variant"] == ""
    _summary(tmp_path, "other-loss", seed=0, config=_train_config(0, loss={"_target_": "clipdehaze.losses.L1Loss"}))
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert sorted(r["variant"] for r in rows) == ["_target_=<absent>", "_target_=clipdehaze.losses.L1Loss"]


def test_evaluation_options_are_part_of_the_row_in_every_output(tmp_path):
    """One weights file scored plain and with tta=x8 (its protocol line names the self-ensemble): two rows; the x8
    row says so in table.md, table.csv and table.tex, its published difference is marked, and table.tex keeps the
    image count and the subset flag."""
    from clipdehaze.utils.tta import TTA_DESCRIPTIONS

    weights = {"origin": "published", "path": "/w/dehazeformer-t.pth", "sha256": "d" * 64}
    _summary(tmp_path / "runs", "plain", psnr=36.59, weights=weights, images=100, available=500,
             config=_eval_config())
    _summary(tmp_path / "runs", "x8", psnr=36.81, weights=weights, images=100, available=500,
             config=_eval_config(tta="x8"), protocol=f"{PROTO}; {TTA_DESCRIPTIONS['x8']}")
    exp = tmp_path / "exp" / "p"
    exp.mkdir(parents=True)
    (exp / "published.csv").write_text("method,generator,dataset,psnr,ssim,params,macs,source\n"
                                       "DehazeFormer-T,dehazeformer_t,sots_indoor,35.15,0.989,,,Table 1\n")
    out = tmp_path / "t"
    result = make_table([tmp_path / "runs"], "p", out, experiments_root=tmp_path / "exp")
    rows = {r["evaluation"]: r for r in result["rows"]}
    assert set(rows) == {"", "tta=x8"} and result["protocols"] == [PROTO]
    assert rows["tta=x8"]["method"] == "dehazeformer_t (weights=dehazeformer-t.pth@dddddddd, tta=x8)"
    assert rows["tta=x8"]["delta_note"] == "ours with tta=x8" and rows[""]["delta_note"] == ""
    md = (out / "table.md").read_text()
    assert "+1.66 (ours with tta=x8)" in md and "| +1.44 |" in md
    assert "tta=x8" in (out / "table.csv").read_text()
    tex = (out / "table.tex").read_text()
    assert "tta=x8" in tex and "+1.66 (ours with tta=x8)" in tex
    assert " & 100 & " in tex and "subset 100/500" in tex


def test_missing_metrics_and_missing_provenance_are_flagged(tmp_path):
    for seed in (0, 1):
        _summary(tmp_path / "a", str(seed), seed=seed, psnr=30.0 + seed, config=_train_config(seed))
    _summary(tmp_path / "a", "2", seed=2, config=_train_config(2), metrics={"test/psnr_sots_indoor": 31.0})
    (row,) = make_table([tmp_path / "a"], None, tmp_path / "t")["rows"]
    assert row["n"] == 3 and row["ssim_n"] == 2 and row["ssim_missing_seeds"] == "2"
    assert "no ssim in seed 2" in row["flags"]
    assert "0.9000 ± 0.0000 [0.9000, 0.9000] (missing: seed 2)" in (tmp_path / "t" / "table.md").read_text()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text(json.dumps({"generator": "dcp", "data": "x", "seed": 0,
                                                               "params": 0, "metrics": {"test/psnr_x": 20.0}}))
    (old,) = make_table([tmp_path / "old"], None, tmp_path / "t")["rows"]
    assert old["flags"] == "no metric protocol recorded; no image manifest recorded; weights not recorded"


def test_an_unclassified_key_splits_and_is_reported(tmp_path):
    for seed in (0, 1):
        _summary(tmp_path, str(seed), seed=seed, config={**_train_config(seed), "brand_new_knob": seed})
    rows = make_table([tmp_path], None, tmp_path / "t")["rows"]
    assert sorted(r["variant"] for r in rows) == ["brand_new_knob=0", "brand_new_knob=1"]
    assert all(r["flags"] == "unclassified config keys: brand_new_knob" for r in rows)


def test_row_ids_are_stable_and_names_unique(tmp_path):
    """Ids do not depend on which other runs were collected; two rows that would read the same get their id."""
    _summary(tmp_path / "a", "x", config=_train_config(0), weights={"origin": "none"}, gen="dcp")
    (alone,) = make_table([tmp_path / "a"], None, tmp_path / "t")["rows"]
    _summary(tmp_path / "b", "y", config=_train_config(0), weights={"origin": "none"}, gen="dcp",
             protocol="BasicSR protocol: fixture")
    both = make_table([tmp_path / "a", tmp_path / "b"], None, tmp_path / "t")["rows"]
    assert alone["id"] in {r["id"] for r in both}
    assert sorted(r["method"] for r in both) == sorted(f"dcp [{r['id']}]" for r in both)


# ------------------------------------------------------------------------------------------------------------
# Every config key has a class
def _composed_keys(extra: list[str] | None = None) -> dict[str, set[str]]:
    """Every leaf key of every shipped config: train, eval and predict, each option of each of its groups at least
    once (one composition per option index, experiments one by one), the model group generated from the variant
    files by the registration the CLIs use."""
    from hydra import compose
    from omegaconf import OmegaConf

    from clipdehaze.provenance import flatten
    from clipdehaze.utils.hydra_utils import _initialize, config_groups

    groups = config_groups()
    keys: dict[str, set[str]] = {}
    with _initialize():
        for name in ("train", "eval", "predict"):
            own = [g for g in compose(config_name=name, return_hydra_config=True).hydra.runtime.choices
                   if g in groups]
            rest = [g for g in own if g != "experiment"]
            n = max(len(groups[g]) for g in rest)
            combos = [[f"{g}={groups[g][i % len(groups[g])]}" for g in rest] for i in range(n)]
            # Experiments are training recipes: they override the loss group, which only train composes.
            # A setting's default.json recipe (<family>_<data>_default) is upstream's fallback: it needs model=.
            combos += [[f"experiment={e}", *([f"model={e.split('_')[0]}_t"] if e.endswith("_default") else [])]
                       for e in groups["experiment"] if name == "train"]
            for overrides in combos:
                cfg = compose(config_name=name, overrides=overrides + list(extra or []))
                for k in flatten(OmegaConf.to_container(cfg, resolve=False)):
                    keys.setdefault(k, set()).add(f"{name} {' '.join(overrides)}")
    return keys


@pytest.mark.slow
def test_every_shipped_config_key_has_a_class():
    from clipdehaze.runs.keys import classify

    keys = _composed_keys()
    assert len(keys) > 150 and "model.embed_dims" in keys and "tta" in keys and "tile" in keys
    unclassified = {k: sorted(where)[0] for k, where in keys.items() if classify(k) is None}
    assert not unclassified, f"declare these keys in clipdehaze.runs.keys: {unclassified}"


def test_an_undeclared_key_is_reported_by_the_property_check(compose_cfg):
    """The check above finds a key nobody declared (what a new config option would be)."""
    from omegaconf import OmegaConf

    from clipdehaze.provenance import flatten
    from clipdehaze.runs.keys import classify

    cfg = compose_cfg("train", ["+brand_new.knob=3", "model=cliphaze_t"])
    unclassified = [k for k in flatten(OmegaConf.to_container(cfg, resolve=False)) if classify(k) is None]
    assert unclassified == ["brand_new.knob"]


def test_evaluation_defaults_are_the_shipped_ones():
    import yaml

    from clipdehaze.runs.keys import EVALUATION, EVALUATION_DEFAULTS, KEYS
    from clipdehaze.utils.resources import project_dir

    shipped = {**yaml.safe_load((project_dir("conf") / "predict.yaml").read_text()),
               **yaml.safe_load((project_dir("conf") / "eval.yaml").read_text())}
    assert EVALUATION_DEFAULTS == {k: shipped[k] for k in EVALUATION_DEFAULTS}
    assert set(EVALUATION_DEFAULTS) == {k for k, c in KEYS.items() if c == EVALUATION}
