"""Self-ensemble against its definition; predict a user can watch (progress, summary, compare, no-reference
scores); clipdehaze-eval on a folder without ground truth; both accepted by clipdehaze-table."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipdehaze.utils.tta import self_ensemble


class Asymmetric(torch.nn.Module):
    """Neither flip- nor rotation-equivariant: an asymmetric kernel plus a ramp along the rows, and it uses a side
    input map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        torch.manual_seed(0)
        torch.nn.init.normal_(self.conv.weight)

    def forward(self, x, density_map=None, embedding=None):
        ramp = torch.linspace(0, 1, x.shape[-2])[:, None]
        return self.conv(x) + ramp + (density_map if density_map is not None else 0) + embedding.mean()


def test_x8_is_the_mean_over_the_eight_dihedral_transforms():
    net = Asymmetric()
    x = torch.rand(1, 3, 10, 13)
    side = {"density_map": torch.rand(1, 1, 10, 13), "embedding": torch.rand(1, 4)}
    expected = 0
    for k in range(4):   # rotations, and the rotations of the mirror image, each mapped back
        for mirror in (False, True):
            g = (lambda t, k=k, m=mirror: torch.rot90(t.flip(-1) if m else t, k, (-2, -1)))
            g_inv = (lambda t, k=k, m=mirror: (lambda u: u.flip(-1) if m else u)(torch.rot90(t, -k, (-2, -1))))
            out = net(g(x), density_map=g(side["density_map"]), embedding=side["embedding"])
            expected = expected + g_inv(out) / 8
    with torch.no_grad():
        got = self_ensemble(net, x, "x8", side)
        assert torch.allclose(got, expected.detach(), atol=1e-6)
        flip = self_ensemble(net, x, "flip", side)
        mirrored = net(x.flip(-1), density_map=side["density_map"].flip(-1), embedding=side["embedding"]).flip(-1)
        assert torch.allclose(flip, (net(x, **side) + mirrored) / 2, atol=1e-6)
        assert torch.equal(self_ensemble(net, x, "none", side), net(x, **side))
        assert not torch.allclose(got, net(x, **side), atol=1e-3)   # the toy model is really not equivariant
    with pytest.raises(ValueError, match="tta='x4'"):
        self_ensemble(net, x, "x4")


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.random((12, 16, 3))
        img = Image.fromarray((small * 255).astype(np.uint8)).resize((224, 200), Image.BICUBIC)
        Image.fromarray((np.asarray(img) * 0.6 + 90).astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def test_predict_progress_summary_compare_and_scores(compose_cfg, tmp_path, caplog):
    from clipdehaze.predict import predict
    from clipdehaze.table import make_table

    src, out, run = _photos(tmp_path / "hazy"), tmp_path / "restored", tmp_path / "run"
    cfg = compose_cfg("predict", ["model=dcp", f"input={src}", f"output={out}", "metrics=no_reference",
                                  "compare=true", "tta=flip", "tile=128", "overlap=16"], out=run)
    with caplog.at_level(logging.INFO, logger="clipdehaze.predict"):
        written = predict(cfg)
    assert [p.name for p in written] == ["photo0.png", "photo1.png"]
    text = caplog.text
    assert "[1/2] photo0.png" in text and "ETA" in text
    assert f"restored 2 of 2 image(s) in" in text and str(out) in text and "mean niqe" in text
    pair = Image.open(out / "compare" / "photo0.png")
    assert pair.size == (2 * 224 + 8, 200)
    with open(out / "compare" / "scores.csv") as f:
        scores = list(csv.DictReader(f))
    assert [r["name"] for r in scores] == ["photo0.png", "photo1.png"]
    assert {"niqe_hazy", "niqe_restored", "brisque_hazy", "dark_channel_restored"} <= set(scores[0])
    # The restored image is less hazy by the dark channel than its input: DCP removes the constant veil.
    assert float(scores[0]["dark_channel_restored"]) < float(scores[0]["dark_channel_hazy"])
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["data"] == "hazy" and set(summary["metrics"]) == {"test/niqe_hazy", "test/brisque_hazy",
                                                                     "test/dark_channel_hazy"}
    assert "NIQE" in summary["metric_protocol"] and "self-ensemble flip" in summary["metric_protocol"]
    (row,) = make_table([run], None, tmp_path / "table")["rows"]
    assert row["niqe"] == pytest.approx(summary["metrics"]["test/niqe_hazy"]) and row["psnr"] is None
    # A full-reference metric cannot run without ground truth: refused before any image is read.
    bad = compose_cfg("predict", ["model=dcp", f"input={src}", f"output={tmp_path / 'o2'}", "metrics=dehazeformer"],
                      out=tmp_path / "run2")
    with pytest.raises(ValueError, match="predict has no ground truth"):
        predict(bad)


def test_eval_scores_a_folder_without_ground_truth(compose_cfg, tmp_path):
    from clipdehaze.evaluate import evaluate
    from clipdehaze.table import make_table

    src = _photos(tmp_path / "real")
    cfg = compose_cfg("eval", ["model=identity", "data=folder", f"data.root={src}", "data.name=real", "tta=x8"],
                      out=tmp_path / "ev")
    summary = evaluate(cfg)
    assert set(summary["metrics"]) >= {"test/niqe_real", "test/brisque_real", "test/dark_channel_real"}
    assert "self-ensemble x8" in summary["metric_protocol"] and "PSNR" not in summary["metric_protocol"]
    with open(tmp_path / "ev" / "per_image.csv") as f:
        assert next(csv.reader(f)) == ["index", "name", "niqe", "brisque", "dark_channel"]
    (row,) = make_table([tmp_path / "ev"], None, tmp_path / "table")["rows"]
    assert row["images"] == "2" and row["niqe"] == pytest.approx(summary["metrics"]["test/niqe_real"])


@pytest.mark.slow
def test_identity_and_dcp_on_real_hazy_photos(compose_cfg, shared_dir, tmp_path):
    from clipdehaze.evaluate import evaluate

    photos = shared_dir / "data" / "real-hazy" / "fattal"
    if not photos.is_dir():
        from conftest import require_or_skip

        require_or_skip("shared", f"{photos} not found: the real hazy photographs are in shared/data/real-hazy")
    scores = {}
    for model in ("identity", "dcp"):
        cfg = compose_cfg("eval", [f"model={model}", "data=folder", f"data.root={photos}", "data.name=fattal",
                                   "data.max_test_samples=3"], out=tmp_path / model)
        scores[model] = evaluate(cfg)["metrics"]
    # DCP lowers the dark channel it is built on; the hazy photos score as hazy.
    assert scores["dcp"]["test/dark_channel_fattal"] < scores["identity"]["test/dark_channel_fattal"]
