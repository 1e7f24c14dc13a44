"""Synthetic degradations: the haze scattering model, depth priors, density fields, rain / snow / raindrop /
all-weather, the dataset writer and the default datasets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from clipdehaze.data import PairedImageDataset, SyntheticHazeDataModule
from clipdehaze.data.cli import main as data_cli
from clipdehaze.data.datamodule import SyntheticWeatherDataModule
from clipdehaze.data.synth import (
    DEFAULT_SPLITS,
    DEGRADATIONS,
    SYNTH_VERSION,
    AllWeatherConfig,
    HazeConfig,
    RainConfig,
    RaindropConfig,
    SnowConfig,
    SplitRecipe,
    add_haze,
    add_rain,
    add_raindrop,
    add_snow,
    density_field,
    depth_map,
    ensure_default_dataset,
    is_dataset_complete,
    synthesize_dataset,
)


def _photos(n: int, size=(48, 64)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {f"photo_{i}": rng.integers(0, 256, (*size, 3), dtype=np.uint8) for i in range(n)}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# the physical model


def test_homogeneous_haze_matches_scattering_model():
    clean = np.full((8, 10, 3), (0.2, 0.5, 0.8), np.float32)
    cfg = HazeConfig(beta_range=(1.2, 1.2), A_range=(0.9, 0.9), depth_priors=("constant",), depth_range=(0.5, 0.5),
                     nonhomogeneous=0.0)
    hazy, params = add_haze(clean, np.random.default_rng(0), cfg)
    t = np.exp(-1.2 * 0.5)
    expected = np.array([0.2, 0.5, 0.8]) * t + 0.9 * (1 - t)
    assert np.allclose(hazy, expected, atol=1e-6)
    assert params["beta"] == 1.2 and params["A"] == [0.9] * 3 and params["nonhomogeneous"] is False
    assert params["t_min"] == pytest.approx(t, abs=1e-6) and params["t_mean"] == pytest.approx(t, abs=1e-6)


def test_tinted_airlight_and_nonhomogeneous_transmission():
    clean = np.zeros((64, 64, 3), np.float32)  # black scene: hazy = A (1 - t), so t is readable
    cfg = HazeConfig(beta_range=(1.0, 1.0), A_range=(0.8, 0.8), A_color=0.1, depth_priors=("constant",),
                     depth_range=(1.0, 1.0), nonhomogeneous=1.0, nh_density_range=(0.2, 1.6))
    hazy, params = add_haze(clean, np.random.default_rng(3), cfg)
    a = np.array(params["A"])
    assert params["nonhomogeneous"] and np.all(np.abs(a / 0.8 - 1) <= 0.1 + 1e-6) and len(set(a)) == 3
    t = 1 - hazy[..., 0] / a[0]
    assert t.min() == pytest.approx(np.exp(-1.6), abs=1e-3) and t.max() == pytest.approx(np.exp(-0.2), abs=1e-3)


def test_density_field_smooth_and_normalised():
    for seed in range(5):
        f = density_field((96, 128), np.random.default_rng(seed))
        assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
        # Blob widths >= 0.15 * 96 px: neighbouring pixels differ by a few percent at most.
        assert max(np.abs(np.diff(f, axis=0)).max(), np.abs(np.diff(f, axis=1)).max()) < 0.1
    same = density_field((32, 32), np.random.default_rng(7)), density_field((32, 32), np.random.default_rng(7))
    assert np.array_equal(*same)


def test_depth_priors():
    img = np.zeros((40, 60, 3), np.float32)
    img[:, :30] = (0.9, 0.9, 0.92)  # bright, grey: far under the colour attenuation prior
    img[:, 30:] = (0.6, 0.05, 0.05)  # saturated, darker: near
    v = depth_map(img, "vertical", (0.2, 1.0))
    assert v[0].min() == pytest.approx(1.0) and v[-1].max() == pytest.approx(0.2) and np.all(np.diff(v[:, 0]) < 0)
    r = depth_map(img, "radial")
    assert r[20, 30] > r[0, 0] and r[20, 30] > r[-1, -1]
    assert np.allclose(depth_map(img, "constant", (0.3, 0.7)), 0.7)
    lum = depth_map(img, "luminance", (0.1, 0.9))
    assert lum[:, :10].mean() > lum[:, -10:].mean() and lum.min() >= 0.1 - 1e-6 and lum.max() <= 0.9 + 1e-6
    with pytest.raises(ValueError, match="unknown depth prior"):
        depth_map(img, "sideways")


def test_degradation_registry_and_config_validation():
    assert DEGRADATIONS["haze"].input_dir == "hazy" and DEGRADATIONS["haze"].config_type is HazeConfig
    assert DEGRADATIONS["haze"].target_dir == "GT"
    with pytest.raises(ValueError, match="depth_priors"):
        HazeConfig(depth_priors=("nope",))
    with pytest.raises(ValueError, match="beta_range"):
        HazeConfig(beta_range=(2.0, 1.0))


# ----------------------------------------------------------------------------------------------
# dataset writer

RECIPE = {"train": SplitRecipe(crops=2, patch_size=32, scale_range=(0.6, 1.0), variants=2),
          "test": SplitRecipe(variants=2, multiple_of=16)}


def test_same_seed_same_bytes(tmp_path):
    a = synthesize_dataset(_photos(4), tmp_path / "a", seed=5, recipe=RECIPE)
    b = synthesize_dataset(_photos(4), tmp_path / "b", seed=5, recipe=RECIPE)
    c = synthesize_dataset(_photos(4), tmp_path / "c", seed=6, recipe=RECIPE)
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)


def test_dataset_layout_meta_and_pairing(tmp_path):
    root = synthesize_dataset(_photos(4), tmp_path / "ds", seed=0, test_fraction=0.25, recipe=RECIPE)
    meta = json.loads((root / "meta.json").read_text())
    train, test = set(meta["splits"]["train"]), set(meta["splits"]["test"])
    assert len(test) == 1 and len(train) == 3 and not train & test
    assert all("_" not in name for name in train | test)  # '_' would break RESIDE-style pairing
    assert meta["counts"] == {"train": {"pairs": 12, "targets": 6}, "test": {"pairs": 2, "targets": 1}}
    assert meta["version"] and meta["seed"] == 0 and meta["config"]["beta_range"] == [0.6, 1.8]
    rec = meta["pairs"]["train"][0]
    assert {"input", "target", "source", "box", "beta", "A", "depth_prior", "nonhomogeneous"} <= set(rec)
    assert {r["source"] for r in meta["pairs"]["test"]} == test

    ds = PairedImageDataset(root, "train", mode="test")
    assert len(ds) == 12 and ds[0]["input"].shape == (3, 32, 32)
    assert ds.pairs[0][0].name == "photo-0-c000_0.png" and ds.pairs[0][1].name == "photo-0-c000.png"
    test_ds = PairedImageDataset(root, "test", mode="test")
    assert test_ds[0]["input"].shape == (3, 48, 64)  # whole image, already a multiple of 16


def test_explicit_splits_must_be_disjoint_and_known(tmp_path):
    photos = _photos(3)
    with pytest.raises(ValueError, match="both split"):
        synthesize_dataset(photos, tmp_path / "x", splits={"train": ["photo_0", "photo_1"], "test": ["photo_1"]})
    with pytest.raises(ValueError, match="not among the sources"):
        synthesize_dataset(photos, tmp_path / "x", splits={"train": ["photo_9"]})
    root = synthesize_dataset(photos, tmp_path / "ok", splits={"train": ["photo_0"], "val": ["photo_1"]})
    assert sorted(p.name for p in root.iterdir()) == ["meta.json", "train", "val"]


def test_failed_build_leaves_nothing(tmp_path):
    photos = _photos(2)
    photos["tiny"] = np.zeros((8, 8, 3), np.uint8)  # smaller than the patch: fails after others were written
    with pytest.raises(ValueError, match="smaller than patch_size"):
        synthesize_dataset(photos, tmp_path / "ds", splits={"train": list(photos)}, recipe=RECIPE["train"])
    assert list(tmp_path.iterdir()) == []
    synthesize_dataset(_photos(2), tmp_path / "ds")
    with pytest.raises(FileExistsError):
        synthesize_dataset(_photos(2), tmp_path / "ds")
    synthesize_dataset(_photos(3), tmp_path / "ds", overwrite=True)
    assert len(json.loads((tmp_path / "ds" / "meta.json").read_text())["splits"]["train"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_synth_cli_from_folder(tmp_path, capsys):
    src = tmp_path / "clean"
    src.mkdir()
    for name, arr in _photos(4, size=(40, 40)).items():
        from PIL import Image

        Image.fromarray(arr).save(src / f"{name}.png")
    (src / "readme.txt").write_text("ignored")
    out = tmp_path / "out"
    args = ["synth", "--source", str(src), "--out", str(out), "--crops", "1", "--patch-size", "32", "--variants", "1",
            "--test-variants", "1", "--beta", "0.5", "0.5", "--depth", "vertical", "--nonhomogeneous", "0"]
    assert data_cli(args) == 0
    assert "train: 3 pairs / 3 GT, test: 1 pairs / 1 GT" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["beta_range"] == [0.5, 0.5] and meta["config"]["depth_priors"] == ["vertical"]
    assert all(r["beta"] == 0.5 for r in meta["pairs"]["train"])
    assert data_cli(["check", str(out)]) == 0
    assert data_cli(args) == 1  # exists, no --overwrite
    assert data_cli(["synth", "--default", "--beta", "1", "2"]) == 2  # custom default needs --out


def test_synth_cli_names_every_photo_too_small_before_writing(tmp_path, capsys):
    """A folder of a user's photos with two smaller than the patch: one error naming both files and their sizes,
    the option that fixes it, and no output folder."""
    from PIL import Image

    src = tmp_path / "photos"
    src.mkdir()
    for name, arr in _photos(3, size=(48, 48)).items():
        Image.fromarray(arr).save(src / f"{name}.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(src / "small one.jpg")
    Image.fromarray(np.zeros((50, 20, 3), np.uint8)).save(src / "narrow.png")
    out = tmp_path / "out"
    args = ["synth", "--source", str(src), "--out", str(out), "--crops", "1", "--patch-size", "32", "--variants", "1",
            "--test-variants", "1", "--test-fraction", "0.4"]
    assert data_cli(args) == 1
    err = capsys.readouterr().err
    assert "2 source photo(s) too small" in err and "pass a smaller --patch-size (patch_size, now 32)" in err
    assert f"{src / 'small one.jpg'} (train): 40x30 is smaller than patch_size=32" in err or \
        f"{src / 'small one.jpg'} (test)" in err
    assert str(src / "narrow.png") in err and "20x50" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    assert len(list(src.iterdir())) == 5


# ----------------------------------------------------------------------------------------------
# the default dataset


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    start = time.perf_counter()
    root = ensure_default_dataset(cache, seed=0)
    return root, time.perf_counter() - start


@pytest.mark.exclusive   # wall-clock bound
@pytest.mark.slow
def test_default_dataset_builds_fast_and_is_disjoint(default_dataset):
    root, seconds = default_dataset
    assert seconds < 30, f"default dataset took {seconds:.1f} s"
    meta = json.loads((root / "meta.json").read_text())
    assert root.name == f"synthetic_haze_{meta['version']}_seed0"
    assert meta["counts"]["train"]["pairs"] >= 100 and meta["counts"]["test"]["pairs"] >= 4
    assert not set(meta["splits"]["train"]) & set(meta["splits"]["test"])
    assert {r["source"] for r in meta["pairs"]["test"]} == set(DEFAULT_SPLITS["test"])
    assert PairedImageDataset(root, "train", mode="test")[0]["input"].shape == (3, 256, 256)
    test = PairedImageDataset(root, "test", mode="test")
    assert all(max(test[i]["input"].shape[1:]) <= 400 for i in range(len(test)))


@pytest.mark.exclusive   # wall-clock bound
def test_default_dataset_reused_and_repaired(default_dataset):
    root, _ = default_dataset
    meta_mtime = (root / "meta.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_default_dataset(root.parent, seed=0) == root
    assert time.perf_counter() - start < 1.0 and (root / "meta.json").stat().st_mtime_ns == meta_mtime
    victim = next((root / "train" / "hazy").iterdir())
    victim.unlink()  # an incomplete dataset is regenerated, not trusted
    assert ensure_default_dataset(root.parent, seed=0) == root and victim.is_file()


@pytest.mark.slow
def test_synthetic_datamodule(default_dataset):
    root, _ = default_dataset
    dm = SyntheticHazeDataModule(cache_dir=str(root.parent), crop_size=64, batch_size=4, num_workers=0)
    assert dm.hparams["root"] is None and dm.root == str(root)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == batch["target"].shape == (4, 3, 64, 64)
    dm.setup("test")
    assert next(iter(dm.test_dataloader()))["input"].shape == (1, 3, 256, 400)


# ----------------------------------------------------------------------------------------------
# adverse weather: rain, snow, raindrop and the all-weather mixture

WEATHER = ["rain", "snow", "raindrop", "allweather"]


def _smooth_photo(h: int = 64, w: int = 80) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    return np.stack([0.3 + 0.3 * x, 0.4 + 0.2 * y, 0.5 - 0.2 * x * y], axis=-1).astype(np.float32)


@pytest.mark.parametrize("kind", ["rain", "snow", "raindrop"])
def test_weather_kinds_degrade_deterministically(kind):
    clean = _smooth_photo()
    deg = DEGRADATIONS[kind]
    out, params = deg.apply(clean, np.random.default_rng(0), deg.config_type())
    again, _ = deg.apply(clean, np.random.default_rng(0), deg.config_type())
    assert out.dtype == np.float32 and out.shape == clean.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert np.array_equal(out, again) and np.abs(out - clean).mean() > 1e-4
    json.dumps(params)  # recorded in meta.json
    assert (deg.input_dir, deg.target_dir) == ("input", "gt")


def test_rain_adds_light_along_a_slant():
    clean = np.full((96, 96, 3), 0.3, np.float32)
    cfg = RainConfig(layers=(1, 1), angle_range=(0.0, 0.0), angle_jitter=0.0, veil_range=(0.0, 0.0),
                     length_range=(0.3, 0.3))
    rainy, params = add_rain(clean, np.random.default_rng(1), cfg)
    assert (rainy >= clean - 1e-6).all()  # screen blend: streaks only brighten
    streaks = rainy[..., 0] - 0.3
    # Vertical streaks: brightness varies far less along a column than along a row.
    assert np.abs(np.diff(streaks, axis=0)).mean() < 0.5 * np.abs(np.diff(streaks, axis=1)).mean()
    assert params["layers"][0]["angle"] == 0.0 and params["veil"] == 0.0


def test_snow_layers_have_several_sizes_and_raindrops_stay_local():
    clean = np.full((128, 128, 3), 0.2, np.float32)
    snowy, params = add_snow(clean, np.random.default_rng(2), SnowConfig(layers=(3, 3), veil_range=(0.0, 0.0)))
    radii = [layer["radius_px"] for layer in params["layers"]]
    assert len(radii) == 3 and radii[-1] > 3 * radii[0]
    assert (snowy >= clean - 1e-6).all()  # near-white flakes on a dark scene
    dropped, params = add_raindrop(_smooth_photo(128, 128), np.random.default_rng(3),
                                   RaindropConfig(drops_range=(2, 2), radius_range=(0.05, 0.05)))
    changed = np.abs(dropped - _smooth_photo(128, 128)).max(axis=-1) > 1e-4
    assert params["drops"] == 1 and 0 < changed.mean() < 0.05  # one drop of radius ~6 px, nothing else touched


def test_weather_config_validation():
    with pytest.raises(ValueError, match="length_range"):
        RainConfig(length_range=(0.2, 0.1))
    with pytest.raises(ValueError, match="layers"):
        SnowConfig(layers=(0, 2))
    with pytest.raises(ValueError, match="radius_range"):
        RaindropConfig(radius_range=(0.1, 0.01))
    with pytest.raises(ValueError, match="kinds"):
        AllWeatherConfig(kinds=("fog",))


def test_allweather_mixes_every_kind(tmp_path):
    root = synthesize_dataset(_photos(4, size=(40, 40)), tmp_path / "aw", seed=0, kind="allweather",
                              recipe=SplitRecipe(variants=6, multiple_of=8))
    meta = json.loads((root / "meta.json").read_text())
    weathers = {r["weather"] for split in meta["pairs"].values() for r in split}
    assert weathers == {"haze", "rain", "snow", "raindrop"}
    assert meta["kind"] == "allweather" and meta["config"]["rain"]["layers"] == [1, 3]
    only = synthesize_dataset(_photos(2, size=(40, 40)), tmp_path / "snow_only", seed=0, kind="allweather",
                              config=AllWeatherConfig(kinds=("snow",)), recipe=SplitRecipe(variants=2))
    assert {r["weather"] for s in json.loads((only / "meta.json").read_text())["pairs"].values() for r in s} == {"snow"}


@pytest.mark.parametrize("kind", WEATHER)
def test_weather_dataset_layout_and_check(kind, tmp_path, capsys):
    root = synthesize_dataset(_photos(3), tmp_path / kind, seed=1, kind=kind, recipe=RECIPE)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["gt", "input"]
    ds = PairedImageDataset(root, "train", input_dir="input", target_dir="gt", mode="test")
    assert len(ds) == len(json.loads((root / "meta.json").read_text())["pairs"]["train"]) > 0
    assert ds[0]["input"].shape == ds[0]["target"].shape == (3, 32, 32)
    # check finds the kind's folders from meta.json.
    assert data_cli(["check", str(root)]) == 0 and "OK" in capsys.readouterr().out


def test_synth_cli_weather_kinds(tmp_path, capsys):
    src = tmp_path / "clean"
    src.mkdir()
    from PIL import Image

    for name, arr in _photos(3, size=(40, 40)).items():
        Image.fromarray(arr).save(src / f"{name}.png")
    out = tmp_path / "rain"
    assert data_cli(["synth", "--source", str(src), "--out", str(out), "--kind", "rain", "--crops", "1",
                     "--patch-size", "32", "--variants", "1"]) == 0
    assert json.loads((out / "meta.json").read_text())["kind"] == "rain" and (out / "train" / "input").is_dir()
    assert data_cli(["check", str(out)]) == 0
    assert data_cli(["check", str(out), "--input-dir", "hazy"]) == 1  # explicit folders still win
    capsys.readouterr()
    assert data_cli(["synth", "--source", str(src), "--out", str(tmp_path / "x"), "--kind", "snow",
                     "--beta", "1", "2"]) == 2
    assert "apply to --kind haze only" in capsys.readouterr().err


@pytest.mark.exclusive   # wall-clock bound
@pytest.mark.slow
def test_default_allweather_dataset_and_datamodule(tmp_path):
    start = time.perf_counter()
    root = ensure_default_dataset(tmp_path, seed=0, kind="allweather")
    assert time.perf_counter() - start < 30
    assert root.name == f"synthetic_allweather_{SYNTH_VERSION}_seed0" and is_dataset_complete(root)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["counts"]["train"]["pairs"] == 144 and len({r["weather"] for r in meta["pairs"]["train"]}) == 4
    assert ensure_default_dataset(tmp_path, seed=0, kind="allweather") == root  # reused
    dm = SyntheticWeatherDataModule(cache_dir=str(tmp_path), crop_size=64, batch_size=4, num_workers=0)
    assert dm.root == str(root) and (dm.input_dir, dm.target_dir) == ("input", "gt")
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["input"].shape == (4, 3, 64, 64)
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        SyntheticWeatherDataModule(cache_dir=str(tmp_path), kind="fog")
