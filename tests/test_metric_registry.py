"""The metric registry (one decorated function per file) and the no-reference metrics: NIQE and BRISQUE against
the LIVE MATLAB releases' published values, the dark-channel haze indicator against its definition."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipdehaze.metrics import ImageQualityMetrics, compute_metric, get_metric, list_metrics, register_metric

TOY = '''
import torch
from clipdehaze.metrics.registry import register_metric


@register_metric("toy_mean_abs", reference=True, higher_is_better=False, label="toy |Δ|", digits=3)
def toy_mean_abs(output, target):
    return (output.detach().clamp(0, 1).double() - target.double()).abs().flatten(1).mean(1)
'''


@pytest.fixture
def toy_metric(tmp_path):
    """A metric kept outside the package: one file, imported (which registers it)."""
    path = tmp_path / "toy_metric_file.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_metric_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("toy_metric_file", None)


def _image(path: Path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255


def test_builtin_metrics_are_found_by_name_without_being_imported_first():
    names = list_metrics()
    assert {"psnr", "ssim", "niqe", "brisque", "dark_channel"} <= set(names)
    assert "registry" not in names and "protocols" not in names and "_nss" not in names
    assert get_metric("niqe").reference is False and get_metric("psnr", "basicsr").options == ("crop_border",
                                                                                                "test_y_channel")
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        get_metric("nope")
    with pytest.raises(KeyError, match="defined for protocol"):
        get_metric("psnr", None)


def test_registering_checks_names_and_kinds():
    with pytest.raises(ValueError, match="lower-case"):
        register_metric("Bad Name", reference=False, higher_is_better=True)
    with pytest.raises(ValueError, match="already registered as a no-reference"):
        register_metric("niqe", reference=True, higher_is_better=False)(lambda o, t: o)


def test_no_reference_metrics_score_images_without_ground_truth():
    metric = ImageQualityMetrics(None, ["niqe", "brisque", "dark_channel"])
    assert metric.reference_free
    assert metric.describe().startswith("NIQE (Mittal et al. 2013")
    x = torch.rand(2, 3, 200, 200, generator=torch.Generator().manual_seed(0))
    metric.update(x, None, [0, 1])
    rows = metric.per_image()
    assert [set(r) for r in rows] == [{"index", "niqe", "brisque", "dark_channel"}] * 2
    with pytest.raises(ValueError, match="need the ground truth"):
        ImageQualityMetrics("dehazeformer", ["psnr", "niqe"]).update(x, None, [0, 1])
    with pytest.raises(ValueError, match="defined for protocol"):
        ImageQualityMetrics(None, ["psnr"])
    # Added to a protocol, the protocol line comes first and the no-reference ones follow.
    both = ImageQualityMetrics("dehazeformer", ["psnr", "ssim", "niqe"])
    assert both.describe().startswith("DehazeFormer protocol") and "NIQE" in both.describe()


def test_niqe_matches_the_matlab_release_on_tid2013_images(iqa_calibration):
    """Published: the LIVE release's computequality.m on five TID2013 images (pyiqa 0.1.16,
    ResultsCalibra/results_official.csv, row ``niqe``); the issue's bar is ±0.05."""
    with open(iqa_calibration / "results_official.csv") as f:
        official = {r["Method"]: r for r in csv.DictReader(f)}["niqe"]
    for name, published in official.items():
        if name == "Method":
            continue
        value = compute_metric("niqe", _image(iqa_calibration / "dist_dir" / name), protocol=None).item()
        assert value == pytest.approx(float(published), abs=0.05), name


def test_brisque_matches_the_release_where_matlab_is_not_rounding_noise(iqa_calibration):
    """Published: the LIVE release's brisquescore.m (allmodel/allrange) on the same images (row ``brisque``).
    I03/I04/I06 agree within 0.005. I08 and I19 hold flat areas (1.7 % / 31 % of the pixels) where MATLAB's
    I - μ is rounding noise whose sign decides the whole-image AGGD fits; computed exactly (0 there) they read
    +0.55 / +2.13 from the published values (docs: README, metric protocols)."""
    with open(iqa_calibration / "results_official.csv") as f:
        official = {r["Method"]: r for r in csv.DictReader(f)}["brisque"]
    for name in ("I03.bmp", "I04.bmp", "I06.bmp"):
        value = compute_metric("brisque", _image(iqa_calibration / "dist_dir" / name), protocol=None).item()
        assert value == pytest.approx(float(official[name]), abs=0.005), name
    for name, off in (("I08.bmp", 0.545), ("I19.bmp", 2.128)):
        value = compute_metric("brisque", _image(iqa_calibration / "dist_dir" / name), protocol=None).item()
        assert value - float(official[name]) == pytest.approx(off, abs=0.01), name


def test_niqe_needs_two_blocks_and_says_so_with_nan():
    assert torch.isnan(compute_metric("niqe", torch.rand(1, 3, 120, 150), protocol=None)).all()
    assert torch.isfinite(compute_metric("niqe", torch.rand(1, 3, 96, 192), protocol=None)).all()


def test_dark_channel_is_hes_definition_and_rises_with_haze():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 20, 23, generator=g)
    darkest = x[0].amin(0)
    expected = torch.stack([torch.stack([darkest[max(0, i - 7):i + 8, max(0, j - 7):j + 8].min()
                                         for j in range(23)]) for i in range(20)]).double().mean()
    assert compute_metric("dark_channel", x, protocol=None).item() == pytest.approx(expected.item(), abs=1e-12)
    clear = torch.rand(1, 3, 64, 64, generator=g)
    hazy = 0.6 * clear + 0.35
    assert compute_metric("dark_channel", hazy, protocol=None) > compute_metric("dark_channel", clear, protocol=None)


def test_no_reference_scores_of_real_hazy_photos(shared_dir):
    photos = shared_dir / "data" / "real-hazy" / "fattal"
    if not photos.is_dir():
        from conftest import require_or_skip

        require_or_skip("shared", f"{photos} not found: the real hazy photographs are in shared/data/real-hazy")
    from clipdehaze.metrics.dark_channel import mean_dark_channel

    x = _image(photos / "canon_input.png")
    niqe, brisque = (compute_metric(n, x, protocol=None).item() for n in ("niqe", "brisque"))
    assert 0 < niqe < 30 and -20 < brisque < 150
    # A real hazy photo leaves most of its dark channel lifted above a haze-free image's near-zero level.
    assert mean_dark_channel(x).item() > 0.1


def test_a_toy_metric_in_one_file_reaches_train_metrics_json_and_the_table(toy_metric, compose_cfg,
                                                                           tiny_paired_root, tmp_path):
    from clipdehaze.table import make_table
    from clipdehaze.train import train

    cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=quick", "trainer.max_epochs=1", "data=paired",
                                f"data.root={tiny_paired_root}", "data.crop_size=48", "data.name=tiny",
                                "metrics.names=[psnr,ssim,toy_mean_abs]"], out=tmp_path / "run")
    summary = train(cfg)
    assert "test/toy_mean_abs_tiny" in summary["metrics"] and "val/toy_mean_abs" in summary["metrics"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"]["test/toy_mean_abs_tiny"] == pytest.approx(summary["metrics"]["test/toy_mean_abs_tiny"])
    with open(tmp_path / "run" / "per_image.csv") as f:
        assert next(csv.reader(f)) == ["index", "name", "psnr", "ssim", "toy_mean_abs"]
    result = make_table([tmp_path / "run"], None, tmp_path / "table")
    (row,) = result["rows"]
    assert row["toy_mean_abs"] == pytest.approx(summary["metrics"]["test/toy_mean_abs_tiny"])
    table = (tmp_path / "table" / "table.md").read_text()
    assert "toy \\|Δ\\| ↓" in table and "PSNR (dB) ↑" in table  # the label's "|" escaped: it is no column


def test_lpips_without_backbone_weights_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(ValueError, match=r"lpips: LPIPS needs torchvision's ImageNet AlexNet weights at .*alexnet-"):
        ImageQualityMetrics("dehazeformer", ["psnr", "lpips"])
