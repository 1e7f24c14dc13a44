"""The papers' published numbers as data (``experiments/*/published.csv``): every row names its source and the table
it was read from, a generator of our registry (or none, for a compared method we do not implement), a dataset of our
data configs, numbers in plausible ranges, and one number per generator and dataset, the pair ``clipdehaze-table``
matches on. Two oracles outside the files: the published implementations' parameter counts (the manifests) and the
(variant, dataset) pairs upstream DehazeFormer released training configs for."""

import pytest
import yaml
from conftest import manifest_param_count

from clipdehaze.models import list_generators
from clipdehaze.table import EXPERIMENTS, read_published
from clipdehaze.utils.resources import project_dir

#: IDKiro/DehazeFormer @5af7c34 ``configs/<setting>/dehazeformer-<v>.json``: one published number per config (the
#: main table reports DehazeFormer-L on SOTS-indoor only; -W and -D's SOTS-indoor numbers come from the README).
DEHAZEFORMER_CONFIGS = {"sots_indoor": "tsbwdml", "sots_outdoor": "tsbm", "reside6k": "tsbm", "rs_haze": "tsbm"}

#: A paper's #Param is rounded to 3-4 digits; a transcription slip or two swapped rows misses by far more.
PARAMS_RTOL = 0.005


def _dataset_names() -> set[str]:
    return {yaml.safe_load(f.read_text())["name"] for f in (project_dir("conf") / "data").glob("*.yaml")}


def published_problems(rows: list[dict], generators: set[str], datasets: set[str]) -> list[str]:
    """Everything wrong with the rows of one published.csv, one sentence each (empty when nothing is)."""
    problems, seen = [], {}
    for line, r in enumerate(rows, start=2):
        where = f"line {line} ({r['method']} on {r['dataset']})"
        generator = (r.get("generator") or "").strip()
        if not (r.get("source") or "").strip():
            problems.append(f"{where}: no source")
        if not (r.get("table") or "").strip():
            problems.append(f"{where}: no table label")
        if generator and generator not in generators:
            problems.append(f"{where}: generator {generator!r} is not in the registry")
        if not generator and r["method"].lower().replace("-", "_") in generators:
            problems.append(f"{where}: {r['method']} is one of ours, so the generator column must name it")
        if r["dataset"] not in datasets:
            problems.append(f"{where}: dataset {r['dataset']!r} is no data config's name")
        if r["psnr"] is None or not 10 <= r["psnr"] <= 50:
            problems.append(f"{where}: PSNR {r['psnr']} outside 10-50 dB")
        if r["ssim"] is not None and not 0 < r["ssim"] <= 1:
            problems.append(f"{where}: SSIM {r['ssim']} outside (0, 1]")
        if r["params"] is not None and not 0 < r["params"] < 1000:
            problems.append(f"{where}: params {r['params']} is not a count in M")
        if r["macs"] is not None and not 0 < r["macs"] < 10000:
            problems.append(f"{where}: MACs {r['macs']} is not a count in G")
        key = (generator or r["method"], r["dataset"])
        if key in seen:
            first_line, first_table = seen[key]
            problems.append(f"{where}: duplicate of line {first_line}" if first_table == r.get("table") else
                            f"{where}: second number for {key} after line {first_line} (another table); "
                            "clipdehaze-table compares one published number per generator and dataset")
        else:
            seen[key] = (line, r.get("table"))
    return problems


def param_mismatches(rows: list[dict]) -> list[str]:
    """Rows whose #Param (M) differs from the published implementation's count by more than PARAMS_RTOL."""
    out = []
    for r in rows:
        if r.get("generator") and r["params"] is not None:
            count = manifest_param_count(r["generator"]) / 1e6
            if abs(r["params"] - count) > PARAMS_RTOL * count:
                out.append(f"{r['generator']} on {r['dataset']}: {r['params']} M vs {count:.4f} M")
    return out


def _papers() -> list[str]:
    return sorted(p.parent.name for p in EXPERIMENTS.glob("*/published.csv"))


def test_every_published_csv_passes_the_checks():
    generators, datasets = set(list_generators()), _dataset_names()
    assert {"dehazeformer", "mixdehazenet", "sar_weather"} <= set(_papers())
    for paper in _papers():
        assert published_problems(read_published(paper), generators, datasets) == [], paper


def test_the_checks_catch_bad_rows(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "published.csv").write_text(
        "method,generator,dataset,psnr,ssim,params,macs,source,table\n"
        "DehazeFormer-T,dehazeformer_t,sots_indoor,35.15,0.989,0.686,6.658,paper,Tab. 2\n"  # fine
        "DehazeFormer-S,dehazeformer_s,sots_indoor,36.82,0.992,,,,Tab. 2\n"
        "DehazeFormer-X,dehazeformer_x,sots_indoor,36.0,0.99,,,paper,Tab. 2\n"
        "DehazeFormer-B,dehazeformer_b,sots,37.84,0.994,,,paper,Tab. 2\n"
        "DehazeFormer-M,dehazeformer_m,sots_indoor,384.6,9.94,,,paper,Tab. 2\n"
        "DehazeFormer-T,dehazeformer_t,sots_indoor,35.15,0.989,,,paper,Tab. 2\n"
        "DehazeFormer-T,dehazeformer_t,sots_indoor,35.20,0.990,,,paper v2,Tab. 3\n"
        "MixDehazeNet-B,,sots_outdoor,35.67,0.9852,,,repo,\n"
        "DehazeFormer-L,dehazeformer_l,sots_indoor,40.05,0.996,25440,279.7,paper,Tab. 2\n")
    problems = published_problems(read_published("p", tmp_path), set(list_generators()), _dataset_names())
    expected = ["line 3 (DehazeFormer-S on sots_indoor): no source",
                "line 4 (DehazeFormer-X on sots_indoor): generator 'dehazeformer_x' is not in the registry",
                "line 5 (DehazeFormer-B on sots): dataset 'sots' is no data config's name",
                "line 6 (DehazeFormer-M on sots_indoor): PSNR 384.6 outside 10-50 dB",
                "line 6 (DehazeFormer-M on sots_indoor): SSIM 9.94 outside (0, 1]",
                "line 7 (DehazeFormer-T on sots_indoor): duplicate of line 2",
                "line 8 (DehazeFormer-T on sots_indoor): second number for ('dehazeformer_t', 'sots_indoor') after "
                "line 2 (another table); clipdehaze-table compares one published number per generator and dataset",
                "line 9 (MixDehazeNet-B on sots_outdoor): no table label",
                "line 9 (MixDehazeNet-B on sots_outdoor): MixDehazeNet-B is one of ours, so the generator column must "
                "name it",
                "line 10 (DehazeFormer-L on sots_indoor): params 25440.0 is not a count in M"]
    assert problems == expected


@pytest.mark.parametrize("paper", ["dehazeformer", "mixdehazenet"])
def test_published_parameter_counts_match_the_implementations(paper):
    """The paper's #Param (DehazeFormer: the paper's own numbers; MixDehazeNet: our count, said so in the source)
    agrees with the manifest of the published implementation, so no row carries another variant's numbers."""
    rows = read_published(paper)
    assert any(r["params"] is not None for r in rows)
    assert param_mismatches(rows) == []


def test_a_swapped_parameter_count_is_caught():
    row = {**next(r for r in read_published("dehazeformer") if r["generator"] == "dehazeformer_d"), "params": 4.634}
    assert param_mismatches([row]) == ["dehazeformer_d on sots_indoor: 4.634 M vs 4.9831 M"]


def test_dehazeformer_rows_are_the_upstream_recipes():
    """Every (variant, dataset) upstream released a config for has its published row, and nothing else does."""
    rows = read_published("dehazeformer")
    expected = {(f"dehazeformer_{v}", ds) for ds, variants in DEHAZEFORMER_CONFIGS.items() for v in variants}
    assert {(r["generator"], r["dataset"]) for r in rows} == expected
    assert len(rows) == len(expected) == 19
