"""Data as users download it: ``clipdehaze-data prepare`` on a tiny fake download in every registered layout, then
``check`` and the data module; the data configs pointed at folders; the subset option."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdehaze.data.cli import check_dataset
from clipdehaze.data.cli import main as data_cli
from clipdehaze.data.datamodule import PairedDataModule
from clipdehaze.data.layouts import layouts, namings
from clipdehaze.data.prepare import PrepareError, prepare_dataset


def _img(path: Path, seed: int, size: tuple[int, int] = (12, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _files(root: Path, names: list[str]) -> Path:
    for k, name in enumerate(names):
        _img(root / name, k)
    return root


# Per layout: the files of a fake download (as the layout's docstring describes the official one), and the pairs
# prepare must make, written out by hand: split -> [(hazy name, GT name)].
DOWNLOADS: dict[str, tuple[list[str], dict[str, list[tuple[str, str]]]]] = {
    "its": (["ITS_v2/hazy/1_1_0.90179.png", "ITS_v2/hazy/1_2_0.97842.png", "ITS_v2/hazy/2_1_0.71234.png",
             "ITS_v2/clear/1.png", "ITS_v2/clear/2.png", "ITS_v2/trans/1_1.png"],
            {"train": [("1_1_0.90179.png", "1.png"), ("1_2_0.97842.png", "1.png"), ("2_1_0.71234.png", "2.png")]}),
    "ots": (["hazy/part1/0005_0.8_0.04.jpg", "hazy/part1/0005_1_0.2.jpg", "hazy/part2/0006_0.9_0.16.jpg",
             "clear/0005.jpg", "clear/0006.jpg"],
            {"train": [("0005_0.8_0.04.jpg", "0005.jpg"), ("0005_1_0.2.jpg", "0005.jpg"),
                       ("0006_0.9_0.16.jpg", "0006.jpg")]}),
    "sots_indoor": (["indoor/hazy/1400_1.png", "indoor/hazy/1400_2.png", "indoor/hazy/1401_1.png",
                     "indoor/gt/1400.png", "indoor/gt/1401.png", "outdoor/hazy/0001_0.8_0.2.jpg",
                     "outdoor/gt/0001.png"],
                    {"test": [("1400_1.png", "1400.png"), ("1400_2.png", "1400.png"), ("1401_1.png", "1401.png")]}),
    "sots_outdoor": (["indoor/hazy/1400_1.png", "indoor/gt/1400.png", "outdoor/hazy/0001_0.8_0.2.jpg",
                      "outdoor/hazy/0002_1_0.08.jpg", "outdoor/gt/0001.png", "outdoor/gt/0002.png"],
                     {"test": [("0001_0.8_0.2.jpg", "0001.png"), ("0002_1_0.08.jpg", "0002.png")]}),
    "dehazeformer": (["RESIDE-IN/train/hazy/1_1_0.90179.png", "RESIDE-IN/train/GT/1.png",
                      "RESIDE-IN/test/hazy/1400.png", "RESIDE-IN/test/GT/1400.png"],
                     {"train": [("1_1_0.90179.png", "1.png")], "test": [("1400.png", "1400.png")]}),
    "reside6k": (["train/hazy/a.png", "train/GT/a.png", "test/hazy/b.jpg", "test/GT/b.png"],
                 {"train": [("a.png", "a.png")], "test": [("b.jpg", "b.png")]}),
    "rs_haze": (["RSHaze/train/hazy/0001.png", "RSHaze/train/GT/0001.png", "RSHaze/test/hazy/0009.png",
                 "RSHaze/test/GT/0009.png"],
                {"train": [("0001.png", "0001.png")], "test": [("0009.png", "0009.png")]}),
    "haze4k": (["train/IN/1_0.68_0.66.png", "train/IN/2_0.59_1.95.png", "train/GT/1.png", "train/GT/2.png",
                "test/IN/1_0.89_1.56.png", "test/GT/1.png", "test/trans/1.png"],
               {"train": [("1_0.68_0.66.png", "1.png"), ("2_0.59_1.95.png", "2.png")],
                "test": [("1_0.89_1.56.png", "1.png")]}),
    # Dense-HAZE: hazy/ + GT/; 01-45 train, 51-55 test, the challenge's validation image 46 in neither.
    "dense_haze": ([f"hazy/{n:02d}_hazy.png" for n in (1, 45, 46, 51, 55)]
                   + [f"GT/{n:02d}_GT.png" for n in (1, 45, 46, 51, 55)],
                   {"train": [("01_hazy.png", "01_GT.png"), ("45_hazy.png", "45_GT.png")],
                    "test": [("51_hazy.png", "51_GT.png"), ("55_hazy.png", "55_GT.png")]}),
    # NH-HAZE: one folder; 01-50 train, 51-55 test.
    "nh_haze": ([f"NH-HAZE/{n:02d}_{tag}.png" for n in (1, 50, 51, 55) for tag in ("hazy", "GT")],
                {"train": [("01_hazy.png", "01_GT.png"), ("50_hazy.png", "50_GT.png")],
                 "test": [("51_hazy.png", "51_GT.png"), ("55_hazy.png", "55_GT.png")]}),
    "o_haze": ([f"hazy/{n:02d}_outdoor_hazy.jpg" for n in (1, 40, 41)]
               + [f"GT/{n:02d}_outdoor_GT.jpg" for n in (1, 40, 41)],
               {"train": [("01_outdoor_hazy.jpg", "01_outdoor_GT.jpg"), ("40_outdoor_hazy.jpg", "40_outdoor_GT.jpg")],
                "test": [("41_outdoor_hazy.jpg", "41_outdoor_GT.jpg")]}),
}


def test_every_registered_layout_has_a_fake_download():
    assert sorted(DOWNLOADS) == sorted(lay.name for lay in layouts())


def _pairs(out: Path, split: str) -> list[tuple[str, str]]:
    dm = PairedDataModule(str(out), train_split=split if split == "train" else None, val_split=split,
                          test_split=split, num_workers=0, crop_size=8)
    dm.setup("fit" if split == "train" else "test")
    ds = dm.train_set if split == "train" else dm.test_set
    return [(i.name, t.name) for i, t in ds.pairs]


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_prepare_then_check_and_load(name, tmp_path, capsys):
    files, expected = DOWNLOADS[name]
    download = _files(tmp_path / "download", files)
    out = tmp_path / "data" / "set"
    assert data_cli(["prepare", name, str(download), str(out)]) == 0
    summary = capsys.readouterr().out
    assert f"(layout {name})" in summary and "symbolic links" in summary
    report = check_dataset(out)
    assert report.ok, report.problems
    assert sorted(s for s in expected) == sorted(p.name for p in out.iterdir())
    for split, pairs in expected.items():
        assert _pairs(out, split) == sorted(pairs)
        for f in (out / split / "hazy").iterdir():
            assert f.is_symlink() and f.resolve().is_relative_to(download.resolve())
    assert not list(tmp_path.glob("data/.*"))  # no temporary folder left


def test_ntire_split_override_and_left_out(tmp_path, capsys):
    download = _files(tmp_path / "dl", DOWNLOADS["dense_haze"][0])
    assert data_cli(["prepare", "dense_haze", str(download), str(tmp_path / "a")]) == 0
    assert "left out (in no split): 1 hazy images: 46_hazy.png" in capsys.readouterr().out
    assert data_cli(["prepare", "dense_haze", str(download), str(tmp_path / "b"), "--test-ids", "46,51-55",
                     "--train-ids", "1-45"]) == 0
    assert [h for h, _ in _pairs(tmp_path / "b", "test")] == ["46_hazy.png", "51_hazy.png", "55_hazy.png"]
    with pytest.raises(ValueError, match=r"\[51\] are both in the train and the test ids"):
        prepare_dataset("dense_haze", download, tmp_path / "c", test_ids="51-55", train_ids="1-51")
    with pytest.raises(PrepareError, match="--test-ids do not apply to layout its"):
        prepare_dataset("its", download, tmp_path / "d", test_ids="1")


def test_two_downloads_into_one_folder_make_reside_in(tmp_path):
    """ITS then SOTS-indoor into one <out> make DehazeFormer's RESIDE-IN, which data=its reads."""
    its = _files(tmp_path / "ITS", DOWNLOADS["its"][0])
    sots = _files(tmp_path / "SOTS", DOWNLOADS["sots_indoor"][0])
    out = tmp_path / "data" / "RESIDE-IN"
    (out).mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    prepare_dataset("its", its, out)
    prepare_dataset("sots_indoor", sots, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "test", "train"]
    assert (out / "notes.txt").read_text() == "mine" and check_dataset(out).ok


def test_never_replaces_a_users_folder(tmp_path):
    download = _files(tmp_path / "dl", DOWNLOADS["haze4k"][0])
    out = tmp_path / "out"
    _img(out / "test" / "hazy" / "mine.png", 99)
    before = (out / "test" / "hazy" / "mine.png").read_bytes()
    with pytest.raises(PrepareError, match=rf"{out / 'test'} already exists; prepare never replaces a folder"):
        prepare_dataset("haze4k", download, out)
    assert sorted(p.name for p in out.iterdir()) == ["test"]  # train/ not made either: checked before writing
    assert (out / "test" / "hazy" / "mine.png").read_bytes() == before
    with pytest.raises(PrepareError, match="overlap"):
        prepare_dataset("haze4k", download, download / "out")


def test_links_hardlinks_copies_and_the_fallback(tmp_path, monkeypatch, capsys):
    download = _files(tmp_path / "dl", DOWNLOADS["reside6k"][0])
    src = (download / "train" / "hazy" / "a.png").stat()
    prepare_dataset("reside6k", download, tmp_path / "hard", link="hardlink")
    hard = tmp_path / "hard" / "train" / "hazy" / "a.png"
    assert not hard.is_symlink() and hard.stat().st_ino == src.st_ino
    prepare_dataset("reside6k", download, tmp_path / "copy", link="copy")
    copy = tmp_path / "copy" / "train" / "hazy" / "a.png"
    assert not copy.is_symlink() and copy.stat().st_ino != src.st_ino and copy.read_bytes() == hard.read_bytes()

    def no_symlinks(self, target, target_is_directory=False):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(Path, "symlink_to", no_symlinks)
    report = prepare_dataset("reside6k", download, tmp_path / "fallback")
    assert report.made == {"copy": 4} and "symbolic links are not possible" in report.fallback
    assert "copied instead of linked: symbolic links are not possible" in report.summary()
    assert not (tmp_path / "fallback" / "train" / "hazy" / "a.png").is_symlink()


def test_atomic_nothing_left_when_interrupted(tmp_path, monkeypatch):
    import clipdehaze.data.prepare as prep

    download = _files(tmp_path / "dl", DOWNLOADS["haze4k"][0])
    calls = []

    def fail_third(item, root, mode, report):
        calls.append(item)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(item, root, mode, report)

    real = prep._make
    monkeypatch.setattr(prep, "_make", fail_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("haze4k", download, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [tmp_path / "dl"]


def test_unknown_layout_lists_what_was_found_and_the_layouts(tmp_path, capsys):
    download = _files(tmp_path / "dl", ["photos/a.jpg", "photos/b.jpg", "clear/1.png"])
    (download / "README.txt").write_text("x")
    assert data_cli(["prepare", "its", str(download), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{download} is not a RESIDE ITS (indoor training set) download" in err
    assert "clear/ (1 images)" in err and "photos/ (2 images)" in err and "README.txt" in err
    for lay in layouts():
        assert f"  {lay.name} " in err
    assert not (tmp_path / "out").exists()
    # A folder in another known layout is named as such.
    archive = _files(tmp_path / "archive", DOWNLOADS["reside6k"][0])
    with pytest.raises(PrepareError, match="It looks like layout dehazeformer, haze4k, reside6k, rs_haze: "
                                           "clipdehaze-data prepare dehazeformer "):
        prepare_dataset("its", archive, tmp_path / "x")


def test_a_hazy_image_without_ground_truth_stops_before_writing(tmp_path):
    download = _files(tmp_path / "dl", ["hazy/1_1_0.9.png", "hazy/7_1_0.9.png", "clear/1.png"])
    with pytest.raises(PrepareError, match=r"train: 1 of 2 hazy images have no ground truth .*7_1_0\.9\.png"):
        prepare_dataset("its", download, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_namings_are_registered_in_order():
    assert [n.name for n in namings()] == ["identical", "outdoor_rain", "reside", "ntire"]


# ------------------------------------------------------------------------------------------------------------
# Data configs pointed at folders


def _reside_test(root: Path, gt: str = "GT", n: int = 3) -> Path:
    for k in range(n):
        _img(root / "hazy" / f"{1400 + k}_1.png", k)
        _img(root / gt / f"{1400 + k}.png", 50 + k)
    return root


def test_sots_reads_its_folder_and_a_folder_of_its_images(compose_cfg, tmp_path, caplog):
    import logging

    from clipdehaze.evaluate import evaluate

    _reside_test(tmp_path / "data" / "RESIDE-IN" / "test")
    cfg = compose_cfg("eval", ["model=dcp", "data=sots_indoor", f"paths.data_dir={tmp_path / 'data'}",
                               "data.num_workers=0"],
                      out=tmp_path / "a")
    assert cfg.data.root == str(tmp_path / "data" / "RESIDE-IN") and evaluate(cfg)["images"] == 3
    flat = _reside_test(tmp_path / "my_sots", n=2)
    cfg = compose_cfg("eval", ["model=dcp", "data=sots_indoor", f"data.root={flat}", "data.num_workers=0"],
                      out=tmp_path / "b")
    with caplog.at_level(logging.INFO):
        assert evaluate(cfg)["images"] == 2
    assert any("holds hazy/ and GT/ directly (no test/ folder): reading them there" in m for m in caplog.messages)


def _split_error(root: Path, *overrides: str) -> str:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "paired.yaml"),
                          {"root": str(root), "name": "sots_indoor", "num_workers": 0, "seed": 0},
                          OmegaConf.from_dotlist(list(overrides)))
    dm = instantiate(cfg)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("test" if "train_split=train" not in overrides else "fit")
    return str(info.value)


def test_a_missing_split_names_the_folder_what_is_there_and_the_override(tmp_path):
    # Images one level down, in a folder other than test/.
    _reside_test(tmp_path / "a" / "indoor")
    msg = _split_error(tmp_path / "a")
    assert (f"data=sots_indoor: the test split is read from {tmp_path}/a/test/hazy/ and {tmp_path}/a/test/GT/ "
            f"(data.root={tmp_path}/a, data.test_split=test)") in msg
    assert f"{tmp_path}/a holds indoor/" in msg and "Fix: indoor/ holds them: data.test_split=indoor" in msg
    assert "split=None" not in msg
    # The ground truth folder spelled gt/ (SOTS's own spelling).
    _reside_test(tmp_path / "b" / "test", gt="gt")
    assert "Fix: test/ holds them: data.target_dir=gt" in _split_error(tmp_path / "b")
    # The official SOTS download itself: both ways out, each complete.
    _reside_test(tmp_path / "c" / "indoor", gt="gt")
    msg = _split_error(tmp_path / "c")
    assert "Fix: indoor/ holds them: data.test_split=indoor data.target_dir=gt; or " in msg
    assert (f"is an official sots_indoor download: make our layout from it with `clipdehaze-data prepare sots_indoor "
            f"{tmp_path}/c <out>`") in msg
    # Nothing there.
    msg = _split_error(tmp_path / "nowhere")
    assert f"{tmp_path}/nowhere does not exist" in msg and "or pass data.root=<folder>" in msg
    # A training split never falls back to the root (it would train on the test images): it says how.
    _reside_test(tmp_path / "flat")
    assert f"Fix: the images are directly in {tmp_path}/flat: data.train_split=''" in _split_error(
        tmp_path / "flat", "train_split=train")


def test_a_test_set_refuses_to_train(compose_cfg, tmp_path):
    from clipdehaze.train import train

    _reside_test(tmp_path / "data" / "RESIDE-IN" / "test")
    cfg = compose_cfg("train", ["model=dehazeformer_test", "data=sots_indoor", f"paths.data_dir={tmp_path / 'data'}",
                                "debug=fast_dev_run", "data.num_workers=0"], out=tmp_path / "run")
    with pytest.raises(ValueError, match=r"data=sots_indoor is a test set \(train_split=null\): evaluate with it"):
        train(cfg)


# ------------------------------------------------------------------------------------------------------------
# Subsets


def test_subset_even_or_first(tmp_path):
    root = tmp_path / "set"
    for k in range(10):
        _img(root / "test" / "hazy" / f"{k:04d}.png", k)
        _img(root / "test" / "GT" / f"{k:04d}.png", k)

    def names(**kw):
        dm = PairedDataModule(str(root), train_split=None, num_workers=0, max_test_samples=4, **kw)
        dm.setup("test")
        return [dm.test_set[i]["name"] for i in range(len(dm.test_set))]

    # Evenly spaced over 10 sorted files: round(i * 9 / 3) for i = 0..3.
    assert names() == names(subset="even") == ["0000.png", "0003.png", "0006.png", "0009.png"]
    assert names(subset="first") == ["0000.png", "0001.png", "0002.png", "0003.png"]
    with pytest.raises(ValueError, match=r"data.subset='random' is invalid: it must be even \(evenly spaced"):
        names(subset="random")


def test_subset_typed_without_plus_and_recorded(compose_cfg, tmp_path):
    from clipdehaze.evaluate import evaluate

    root = tmp_path / "set"
    for k in range(6):
        _img(root / "test" / "hazy" / f"{k:04d}.png", k)
        _img(root / "test" / "GT" / f"{k:04d}.png", k)
    cfg = compose_cfg("eval", ["model=dcp", "data=paired", f"data.root={root}", "data.num_workers=0",
                               "data.max_test_samples=2", "data.subset=first"], out=tmp_path / "run")
    evaluate(cfg)
    dataset = json.loads((tmp_path / "run" / "metrics.json").read_text())["dataset"]
    assert (dataset["images"], dataset["available"], dataset["subset"]) == (2, 6, True)
    assert dataset["subset_pick"] == {"max_test_samples": 2, "subset": "first"}
    rows = (tmp_path / "run" / "per_image.csv").read_text()
    assert "0000.png" in rows and "0001.png" in rows and "0005.png" not in rows


def test_the_docs_harness_can_fake_every_layouts_download():
    """A documented ``clipdehaze-data prepare <layout> ...`` of any layout runs in tests/test_docs_commands.py."""
    import docs_harness as H

    assert sorted(H.FAKE_DOWNLOADS) == sorted(lay.name for lay in layouts())
