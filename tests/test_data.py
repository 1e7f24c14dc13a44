"""Image I/O, paired datasets, the data module and ``clipdehaze-data check`` on tiny generated files."""

from __future__ import annotations

import pickle
import struct
import warnings
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from clipdehaze.data import (
    ImageReadError,
    ListPairedDataset,
    PairedDataModule,
    PairedImageDataset,
    load_image,
    match_pairs,
    save_image,
)
from clipdehaze.data.cli import main as data_cli
from clipdehaze.data.datasets import augment_pair, pad_to_min_size

RNG = np.random.default_rng(0)


def _rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path: Path, arr: np.ndarray, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save_kwargs)
    return path


def _png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit-per-channel PNG written by hand (Pillow cannot write 48-bit RGB)."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    color_type = {1: 0, 3: 2}[c]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _paired_folder(base: Path, names: dict[str, str], size=(40, 48), input_dir="hazy", target_dir="GT",
                   identity=False) -> Path:
    """``names``: input file name -> target file name. ``identity``: input pixels equal the target's."""
    targets: dict[str, np.ndarray] = {}
    for inp, tgt in names.items():
        img = targets.setdefault(tgt, _rgb(*size))
        _write(base / target_dir / tgt, img)
        _write(base / input_dir / inp, img if identity else _rgb(*size))
    return base


# ----------------------------------------------------------------------------------------------
# io


def test_save_load_roundtrip_is_atomic(tmp_path):
    x = torch.rand(3, 17, 23)
    out = save_image(x, tmp_path / "sub" / "a.png")
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.png"]  # no temp file left behind
    y = load_image(out)
    assert y.dtype == torch.float32 and y.shape == (3, 17, 23)
    assert torch.equal(y, torch.round(x * 255) / 255)


def test_grayscale_palette_cmyk_become_rgb(tmp_path):
    grey = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    y = load_image(_write(tmp_path / "l.png", grey))
    assert y.shape == (3, 9, 7) and torch.equal(y[0], y[2])
    assert torch.allclose(y[0], torch.from_numpy(grey).float() / 255)

    rgb = _rgb(8, 8)
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    as_rgb = _write(tmp_path / "q.png", np.asarray(pal.convert("RGB")))
    assert torch.equal(load_image(tmp_path / "p.png"), load_image(as_rgb))

    Image.fromarray(np.full((8, 8, 3), (255, 0, 0), np.uint8)).convert("CMYK").save(tmp_path / "c.jpg")
    c = load_image(tmp_path / "c.jpg").mean(dim=(1, 2))
    assert c[0] > 0.9 and c[1] < 0.1 and c[2] < 0.1


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, :, 3] = 255  # first row opaque, the rest fully transparent
    y = load_image(_write(tmp_path / "a.png", rgba))
    assert torch.allclose(y[:, 0, 0], torch.tensor([10, 20, 30]) / 255)
    assert torch.equal(y[:, 1:], torch.ones(3, 3, 4))


def test_16bit_grey_scaled_by_65535(tmp_path):
    grey = np.array([[0, 1000, 40000, 65535]], np.uint16)
    path = _write(tmp_path / "g16.png", grey)
    assert Image.open(path).mode.startswith("I;16")
    y = load_image(path)
    assert torch.allclose(y[0, 0], torch.tensor([0, 1000, 40000, 65535]) / 65535.0)
    assert y.max() == 1.0 and 0.6 < y[0, 0, 2] < 0.62  # scaled, not clipped at 255


def test_16bit_rgb_right_scale_8bit_precision(tmp_path):
    arr = RNG.integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    y = load_image(_png16(tmp_path / "rgb16.png", arr))
    assert (y - torch.from_numpy(arr.astype(np.float32) / 65535).permute(2, 0, 1)).abs().max() < 1 / 255


def test_exif_orientation_applied(tmp_path):
    stored = np.zeros((16, 32, 3), np.uint8)  # H=16, W=32: left half red, right half blue
    stored[:, :16] = (255, 0, 0)
    stored[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    y = load_image(_write(tmp_path / "o.jpg", stored, exif=exif, quality=95))
    assert y.shape == (3, 32, 16)
    top, bottom = y[:, :14].mean(dim=(1, 2)), y[:, 18:].mean(dim=(1, 2))
    assert top[0] > 0.8 and top[2] < 0.2  # the stored left (red) is displayed on top
    assert bottom[2] > 0.8 and bottom[0] < 0.2


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpg", "empty", "text", "missing"])
def test_unreadable_files_raise_naming_the_file(tmp_path, kind):
    if kind.startswith("truncated"):
        ext = kind.split("_")[1]
        path = _write(tmp_path / f"bad.{ext}", _rgb(64, 64))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path = tmp_path / "bad.png"
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("not an image")
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))  # survives the trip back from a DataLoader worker
    assert again.path == path and again.reason == info.value.reason


# ----------------------------------------------------------------------------------------------
# pairing


def test_match_pairs_naming_schemes():
    p = Path
    same, _ = match_pairs([p("h/1.png")], [p("g/1.png")])
    assert same == [(p("h/1.png"), p("g/1.png"))]
    reside, unpaired = match_pairs([p("h/0001_0.8_0.2.jpg"), p("h/0001_0.9_0.1.jpg"), p("h/0002_1_0.2.jpg")],
                                   [p("g/0001.png"), p("g/0002.png")])
    assert [t.name for _, t in reside] == ["0001.png", "0001.png", "0002.png"] and not unpaired
    nh, _ = match_pairs([p("h/01_hazy.png"), p("h/02_outdoor_hazy.jpg")], [p("g/01_GT.png"), p("g/02_outdoor_GT.jpg")])
    assert [t.name for _, t in nh] == ["01_GT.png", "02_outdoor_GT.jpg"]
    # Numbered names sharing a prefix must not pair with each other's files.
    wrong, unpaired = match_pairs([p("h/im_002.png")], [p("g/im_001.png")])
    assert wrong == [] and unpaired == [p("h/im_002.png")]
    with pytest.raises(ValueError, match="ambiguous"):
        match_pairs([p("h/1.png")], [p("g/1.png"), p("g/1.jpg")])


def test_folder_layouts_and_names(tmp_path):
    _paired_folder(tmp_path / "d" / "train", {"a.png": "a.png", "b.png": "b.png"})
    ds = PairedImageDataset(tmp_path / "d", "train", mode="test")
    assert len(ds) == 2 and ds[1]["name"] == "b.png" and ds[1]["index"] == 1

    _paired_folder(tmp_path / "r", {"0001_0.8_0.2.jpg": "0001.png", "0001_1.0_0.1.jpg": "0001.png"},
                   input_dir="rainy", target_dir="clean")
    ds = PairedImageDataset(tmp_path / "r", None, input_dir="rainy", target_dir="clean", mode="test")
    assert [(i.name, t.name) for i, t in ds.pairs] == [("0001_0.8_0.2.jpg", "0001.png"),
                                                       ("0001_1.0_0.1.jpg", "0001.png")]
    s = ds[0]
    assert set(s) == {"input", "target", "name", "index"} and s["input"].shape == s["target"].shape == (3, 40, 48)


def test_non_image_files_ignored(tmp_path):
    base = _paired_folder(tmp_path, {"a.png": "a.png"})
    for d in ("hazy", "GT"):
        (base / d / "notes.txt").write_text("x")
        (base / d / "Thumbs.db").write_bytes(b"\0" * 10)
        (base / d / ".DS_Store").write_bytes(b"\0")
        (base / d / "._a.png").write_bytes(b"\0\5\26\7")  # macOS AppleDouble: image suffix, not an image
    ds = PairedImageDataset(base, None)
    assert [i.name for i, _ in ds.pairs] == ["a.png"]


def test_unpaired_inputs_error_or_skip(tmp_path):
    base = _paired_folder(tmp_path, {"a.png": "a.png"})
    for i in range(7):
        _write(base / "hazy" / f"x{i}.png", _rgb(4, 4))
    with pytest.raises(ValueError, match=r"7 of 8 input images.*x0\.png.*\(7 in all\)"):
        PairedImageDataset(base, None)
    with pytest.warns(UserWarning, match="skipping"):
        ds = PairedImageDataset(base, None, on_unpaired="skip")
    assert len(ds) == 1


def test_missing_folder_error_describes_layout(tmp_path):
    _paired_folder(tmp_path / "train", {"a.png": "a.png"})
    with pytest.raises(FileNotFoundError) as info:
        PairedImageDataset(tmp_path, "train", target_dir="clear")
    msg = str(info.value)
    assert f"{tmp_path}/train/hazy/ and {tmp_path}/train/clear/" in msg and "GT/" in msg and "hazy/" in msg
    with pytest.raises(FileNotFoundError, match="use split=None"):
        PairedImageDataset(tmp_path / "train", "train")


def test_size_mismatch_names_both_files(tmp_path):
    _write(tmp_path / "hazy" / "a.png", _rgb(10, 12))
    _write(tmp_path / "GT" / "a.png", _rgb(10, 13))
    ds = PairedImageDataset(tmp_path, None, mode="test")
    with pytest.raises(ValueError, match=r"hazy/a\.png is 12x10 .*GT/a\.png is 13x10"):
        ds[0]


def test_corrupt_file_in_dataset_names_it(tmp_path):
    base = _paired_folder(tmp_path, {"a.png": "a.png"})
    (base / "GT" / "a.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"GT/a\.png.*empty"):
        PairedImageDataset(base, None)[0]


def test_train_crop_and_augment_keep_pairs_aligned(tmp_path):
    base = _paired_folder(tmp_path, {"a.png": "a.png", "b.png": "b.png"}, size=(40, 48), identity=True)
    ds = PairedImageDataset(base, None, mode="train", crop_size=24, augment=("hflip", "vflip", "rot90"))
    full = load_image(base / "GT" / "a.png")
    windows = {(t, left): full[:, t:t + 24, left:left + 24] for t in range(17) for left in range(25)}
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        s = ds[0]
        assert s["input"].shape == (3, 24, 24) and torch.equal(s["input"], s["target"])
        # The sample is a dihedral transform of one window of the full image.
        variants = {(t, left, k, f) for (t, left), w in windows.items() for k in range(4) for f in (0, 1)
                    if torch.equal(torch.rot90(w.flip(-1) if f else w, k, (-2, -1)), s["input"])}
        assert variants
        seen |= {v[:2] for v in variants}
    assert len(seen) > 5  # positions vary


def test_augment_covers_dihedral_group():
    x = torch.arange(9.0).reshape(1, 3, 3)
    torch.manual_seed(0)
    both = {tuple(augment_pair([x], ("hflip", "rot90"))[0].flatten().tolist()) for _ in range(200)}
    only_h = {tuple(augment_pair([x], ("hflip",))[0].flatten().tolist()) for _ in range(50)}
    assert len(both) == 8 and len(only_h) == 2


def test_val_center_crop_and_test_full(tmp_path):
    base = _paired_folder(tmp_path, {"a.png": "a.png"}, size=(41, 50))
    full = load_image(base / "hazy" / "a.png")
    val = PairedImageDataset(base, None, mode="val", crop_size=24)[0]
    assert torch.equal(val["input"], full[:, 8:32, 13:37])  # DehazeFormer align: (H - c) // 2
    test = PairedImageDataset(base, None, mode="test", crop_size=24)[0]
    assert torch.equal(test["input"], full)


def test_small_images_padded_or_rejected(tmp_path):
    base = _paired_folder(tmp_path, {"a.png": "a.png"}, size=(5, 7), identity=True)
    for mode in ("train", "val"):
        s = PairedImageDataset(base, None, mode=mode, crop_size=16)[0]
        assert s["input"].shape == (3, 16, 16) and torch.equal(s["input"], s["target"])
    padded = pad_to_min_size([load_image(base / "GT" / "a.png")], 16)[0]
    assert torch.equal(padded[:, 5:10, 4:11], load_image(base / "GT" / "a.png"))  # reflect-padded around
    with pytest.raises(ValueError, match=r"hazy/a\.png is 7x5 \(WxH\), smaller than crop_size=16"):
        PairedImageDataset(base, None, mode="train", crop_size=16, pad_if_smaller=False)[0]


def test_same_seed_same_crops(tmp_path):
    base = _paired_folder(tmp_path, {"a.png": "a.png"}, size=(64, 64))
    ds = PairedImageDataset(base, None, crop_size=16)
    L.seed_everything(3, verbose=False)
    first = [ds[0]["input"] for _ in range(4)]
    L.seed_everything(3, verbose=False)
    second = [ds[0]["input"] for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(first[0], x) for x in first[1:])


def test_input_only_needs_no_targets(tmp_path):
    _write(tmp_path / "hazy" / "a.png", _rgb(8, 8))
    ds = PairedImageDataset(tmp_path, None, mode="test", input_only=True)
    assert set(ds[0]) == {"input", "name", "index"}
    with pytest.raises(FileNotFoundError, match="GT"):
        PairedImageDataset(tmp_path, None)


def test_list_dataset_two_columns_and_transweather(tmp_path):
    _paired_folder(tmp_path / "rain", {"input_1.png": "input_1.png"}, input_dir="input", target_dir="gt")
    _paired_folder(tmp_path / "snow", {"s.png": "s_clean.png"}, input_dir="in", target_dir="clean")
    (tmp_path / "allweather.txt").write_text(
        "# comment\n/rain/input/input_1.png\n\nsnow/in/s.png snow/clean/s_clean.png\n")
    ds = ListPairedDataset("allweather.txt", tmp_path, mode="test")
    # Only the folder component 'input' is replaced; the file name keeps its 'input'.
    assert [(i.relative_to(tmp_path).as_posix(), t.relative_to(tmp_path).as_posix()) for i, t in ds.pairs] == [
        ("rain/input/input_1.png", "rain/gt/input_1.png"), ("snow/in/s.png", "snow/clean/s_clean.png")]
    assert ds[1]["name"] == "s.png" and ds[1]["target"].shape == (3, 40, 48)

    (tmp_path / "bad.txt").write_text("snow/in/s.png\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: cannot derive a target"):
        ListPairedDataset(tmp_path / "bad.txt", tmp_path)
    (tmp_path / "missing.txt").write_text("rain/input/nope.png\n")
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        ListPairedDataset(tmp_path / "missing.txt", tmp_path)


# ----------------------------------------------------------------------------------------------
# data module


@pytest.fixture
def split_root(tmp_path) -> Path:
    _paired_folder(tmp_path / "train", {f"{i:04d}_0.{i}_0.1.jpg": f"{i:04d}.png" for i in range(1, 8)}, size=(40, 44))
    _paired_folder(tmp_path / "test", {"0100.png": "0100.png"}, size=(30, 36))
    _write(tmp_path / "test" / "hazy" / "0101.png", _rgb(34, 38))
    _write(tmp_path / "test" / "GT" / "0101.png", _rgb(34, 38))
    return tmp_path


def test_datamodule_batches(split_root):
    cfg = OmegaConf.create({"augment": ["hflip", "rot90"]})  # as Hydra passes it
    dm = PairedDataModule(str(split_root), name="tiny", crop_size=16, augment=cfg.augment, batch_size=3,
                          num_workers=0, val_split=None)
    assert dm.hparams["augment"] == ["hflip", "rot90"] and type(dm.hparams["augment"][0]) is str
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and all(b["input"].shape == (3, 3, 16, 16) for b in batches)  # 7 // 3, drop_last
    assert batches[0]["target"].shape == (3, 3, 16, 16) and len(batches[0]["name"]) == 3
    val = list(dm.val_dataloader())
    assert len(val) == 2 and val[0]["input"].shape == (1, 3, 16, 16)
    dm.setup("test")
    assert [b["input"].shape[-2:] for b in dm.test_dataloader()] == [(30, 36), (34, 38)]

    full = PairedDataModule(str(split_root), val_crop_size=0, num_workers=0, max_train_samples=3)
    full.setup("fit")
    assert len(full.train_set) == 3 and next(iter(full.val_dataloader()))["input"].shape == (1, 3, 30, 36)
    assert len(full.train_dataloader()) == 1  # fewer samples than batch_size: keep the partial batch


def test_datamodule_pad_if_smaller_from_config(split_root, compose_cfg):
    """``data.pad_if_smaller`` reaches the datasets: false names the small file and sizes, true pads it."""
    from hydra.utils import instantiate

    def datamodule(pad: bool):
        cfg = compose_cfg("train", ["data=paired", f"data.root={split_root}", "data.crop_size=48", "data.batch_size=2",
                                    "data.num_workers=0", f"data.pad_if_smaller={str(pad).lower()}"])
        dm = instantiate(cfg.data)
        dm.setup("fit")
        return dm

    with pytest.raises(ValueError, match=r"test/hazy/0100\.png is 36x30 \(WxH\), smaller than crop_size=48"):
        next(iter(datamodule(False).val_dataloader()))
    with pytest.raises(ValueError, match=r"train/hazy/\S+\.jpg is 44x40 \(WxH\), smaller than crop_size=48"):
        next(iter(datamodule(False).train_dataloader()))
    padded = datamodule(True)
    assert next(iter(padded.train_dataloader()))["input"].shape == (2, 3, 48, 48)
    assert next(iter(padded.val_dataloader()))["input"].shape == (1, 3, 48, 48)


@pytest.mark.slow
def test_pad_if_smaller_overridable_for_every_data_config(compose_cfg):
    names = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "data").glob("*.yaml"))
    for name in names:
        cfg = compose_cfg("train", [f"data={name}", "data.pad_if_smaller=false"])
        assert cfg.data.pad_if_smaller is False, name


def test_datamodule_reproducible_with_workers(split_root):
    def first_batch(**kw):
        dm = PairedDataModule(str(split_root), crop_size=16, batch_size=4, num_workers=2, **kw)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b = first_batch(seed=5), first_batch(seed=5)
    assert a["name"] == b["name"] and torch.equal(a["input"], b["input"])
    L.seed_everything(11, verbose=False)
    c = first_batch()
    L.seed_everything(11, verbose=False)
    d = first_batch()
    assert c["name"] == d["name"] and torch.equal(c["input"], d["input"])


# ----------------------------------------------------------------------------------------------
# clipdehaze-data check


def test_check_cli_good_and_bad(split_root, capsys):
    assert data_cli(["check", str(split_root)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "train" in out and "test" in out

    _write(split_root / "train" / "hazy" / "0099_1_1.png", _rgb(8, 8))  # unpaired
    bad = split_root / "test" / "GT" / "0101.png"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    _write(split_root / "test" / "GT" / "0100.png", _rgb(31, 36))  # size mismatch
    assert data_cli(["check", str(split_root), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "0099_1_1.png: no target" in out
    assert f"{bad}: unreadable" in out
    assert "hazy/0100.png: size 36x30 differs from its target" in out and "GT/0100.png (36x31)" in out
    assert "3 problem(s)" in out


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        data_cli(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "synth" in out and "check" in out and "verify a paired dataset" in out


# ----------------------------------------------------------------------------------------------
# the real samples beside the checkout (skipped without them)


def test_shared_samples_pair(shared_dir):
    sots = shared_dir / "data" / "sots-outdoor-sample"
    rain = shared_dir / "data" / "rain100l-sample"
    if not sots.is_dir() or not rain.is_dir():
        from conftest import require_or_skip

        require_or_skip("shared", f"shared/data samples not present in {shared_dir}")
    ds = PairedImageDataset(sots, None, mode="test")
    assert [(i.name, t.name) for i, t in ds.pairs] == [("0001_0.8_0.2.jpg", "0001.png"),
                                                       ("0002_0.8_0.08.jpg", "0002.png")]
    assert ds[0]["input"].shape == ds[0]["target"].shape == (3, 413, 550)
    ds = PairedImageDataset(rain, None, input_dir="rainy", mode="val", crop_size=256)
    assert len(ds) == 2 and ds[0]["input"].shape == (3, 256, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data_cli(["check", str(sots)]) == 0
