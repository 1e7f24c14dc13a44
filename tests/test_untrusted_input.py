"""Untrusted files and bad input: no code runs from a file, nothing already written is lost, nothing is silently
wrong, and a bad option gets one sentence naming it. Every class is a corpus of cases generated here."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipdehaze.data.cli import main as data_cli
from clipdehaze.evaluate import evaluate
from clipdehaze.lit_module import DehazeLitModule
from clipdehaze.pipeline import module_for_inference
from clipdehaze.predict import predict
from clipdehaze.train import train
from clipdehaze.utils.checkpoint import CheckpointError, load_generator_weights
from clipdehaze.utils.trust import UntrustedConfigError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _script(name: str) -> str:
    """The installed console script, as the README writes the command."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e .)")
    return str(path)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def _data(root: Path) -> list[str]:
    return ["data=paired", f"data.root={root}", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
            "data.name=tiny"]


def _save_ckpt(path: Path, **hparam_changes) -> Path:
    """A checkpoint as training writes it (state_dict + plain hyper_parameters), with ``hparam_changes``."""
    torch.manual_seed(0)
    module = DehazeLitModule(generator={"name": "dehazeformer_test"})
    hp = {**dict(module.hparams), **hparam_changes}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hp}, path)
    return path


# ------------------------------------------------------------------------------------------------------------
# Security: crafted checkpoints


class _RunsOnUnpickle:
    """Pickled by torch.save as a call to ``open(marker, "w")``: loading it with weights_only=False writes."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _crafted_hparams(tmp: Path, side: Path) -> list[tuple[str, dict]]:
    """(case, hyper-parameter changes) whose building would leave a file in ``side`` (or run a program)."""
    def m(name: str) -> str:
        return str(side / name)

    pickled = tmp / "second_file.pt"
    torch.save(_RunsOnUnpickle(side / "unpickled"), pickled)
    evil_module = f"evil_module_{os.getpid()}"
    (tmp / "importable").mkdir(exist_ok=True)
    (tmp / "importable" / f"{evil_module}.py").write_text(
        f"open({m('imported')!r}, 'w').close()\nclass Loss:\n    pass\n")
    write = {"_target_": "builtins.open", "file": m("open"), "mode": "w"}
    return [
        ("builtins.open as loss", {"loss": write}),
        ("Path.touch as optimizer", {"optimizer": {"_target_": "pathlib.Path.touch",
                                                   "self": {"_target_": "pathlib.Path", "_args_": [m("touch")]}}}),
        ("torch.save as scheduler", {"scheduler": {"scheduler": {"_target_": "torch.save", "obj": 1, "f": m("save")},
                                                   "interval": "epoch"}}),
        ("torch.load(weights_only=False) of a pickle as clip",
         {"clip": {"_target_": "torch.load", "f": str(pickled), "weights_only": False}}),
        ("subprocess nested in an allowed loss",
         {"loss": {"_target_": "clipdehaze.losses.WeightedSumLoss", "weights": {"l1": 1.0},
                   "terms": {"l1": {"_target_": "subprocess.run", "args": ["touch", m("subprocess")]}}}}),
        ("os.system as loss", {"loss": {"_target_": "os.system", "command": f"touch {m('system')}"}}),
        ("the project's own file writer", {"loss": {"_target_": "clipdehaze.utils.checkpoint.atomic_torch_save",
                                                    "obj": 1, "path": m("project")}}),
        ("a callable reached through an allowed module", {"loss": {"_target_": "clipdehaze.losses.pixel.torch.save",
                                                                   "obj": 1, "f": m("through")}}),
        ("shutil.copyfile as clip", {"clip": {"_target_": "shutil.copyfile", "src": str(pickled), "dst": m("copy")}}),
        ("a module that writes on import", {"loss": {"_target_": f"{evil_module}.Loss"}}),
        ("a writer as an optimizer argument", {"optimizer": {"_target_": "torch.optim.AdamW", "lr": write}}),
        ("a writer inside the generator config", {"generator": {"name": "dehazeformer_test", "x": write}}),
        ("a writer inside the metrics config", {"metrics": {"protocol": "dehazeformer", "x": write}}),
        ("an optimizer where the loss goes", {"loss": {"_target_": "torch.optim.AdamW"}}),
        ("an environment interpolation", {"loss": {"_target_": "clipdehaze.losses.CharbonnierLoss",
                                                   "eps": "${oc.env:HOME}"}}),
    ]


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """[(case, checkpoint path)] and the folder any side effect would land in (asserted empty by the tests)."""
    side = tmp_path / "side_effects"
    side.mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "importable"))
    cases = [(name, _save_ckpt(tmp_path / f"crafted{i}.ckpt", **changes))
             for i, (name, changes) in enumerate(_crafted_hparams(tmp_path, side))]
    yield cases, side
    assert not any(name.startswith("evil_module_") for name in sys.modules)


def _refused(call, case: str, path: Path, side: Path) -> None:
    with pytest.raises(UntrustedConfigError) as info:
        call()
    assert str(path) in str(info.value), (case, str(info.value))
    assert "refusing to build" in str(info.value) or "interpolation" in str(info.value), (case, str(info.value))
    assert not any(side.iterdir()), (case, sorted(p.name for p in side.iterdir()))


def test_crafted_checkpoint_for_eval_builds_nothing(crafted, compose_cfg, tiny_paired_root, tmp_path):
    cases, side = crafted
    for case, path in cases:
        cfg = compose_cfg("eval", [f"ckpt_path={path}", *_data(tiny_paired_root)], out=tmp_path / "eval")
        _refused(lambda: evaluate(cfg), case, path, side)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_crafted_checkpoint_for_predict_builds_nothing(crafted, compose_cfg, tmp_path):
    cases, side = crafted
    src = tmp_path / "photos"
    src.mkdir()
    Image.new("RGB", (40, 30), (90, 100, 110)).save(src / "a.jpg")
    for case, path in cases:
        cfg = compose_cfg("predict", [f"ckpt_path={path}", f"input={src}", f"output={tmp_path / 'restored'}"])
        _refused(lambda: predict(cfg), case, path, side)
    assert not (tmp_path / "restored").exists()


def test_crafted_checkpoint_for_resume_builds_nothing(crafted, compose_cfg, tiny_paired_root, tmp_path):
    cases, side = crafted
    for case, path in cases:
        cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=fast_dev_run", f"ckpt_path={path}",
                                    *_data(tiny_paired_root)], out=tmp_path / "run")
        _refused(lambda: train(cfg), case, path, side)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_crafted_checkpoint_as_weights_path_loads_only_tensors(crafted, compose_cfg):
    """weights_path rebuilds the model from the project's configs by name and takes only the tensors, so what the
    file's hyper-parameters name is never built (the refusal message points here)."""
    cases, side = crafted
    reference = DehazeLitModule.load_checkpoint(str(_save_ckpt(side.parent / "clean.ckpt")))
    for case, path in cases:
        cfg = compose_cfg("eval", ["model=dehazeformer_test", f"weights_path={path}"])
        module = module_for_inference(cfg)
        assert all(torch.equal(a, b) for a, b in zip(module.generator.state_dict().values(),
                                                       reference.generator.state_dict().values())), case
        assert not any(side.iterdir()), case


def test_every_shipped_config_passes_the_allow_list(compose_cfg):
    """No false refusals: the hyper-parameters of every loss, optimizer, scheduler and CLIP config (and every data
    config, for run configs read back) pass, so real checkpoints load."""
    from omegaconf import OmegaConf

    from clipdehaze.utils.hydra_utils import config_groups
    from clipdehaze.utils.trust import check_config, check_hparams

    groups = {g: o for g, o in config_groups().items() if g in ("loss", "optimizer", "scheduler", "clip", "data")}
    for i in range(max(len(options) for options in groups.values())):  # every option of every group at least once
        cfg = compose_cfg("train", [f"{g}={options[i % len(options)]}" for g, options in groups.items()])
        hp = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("loss", "optimizer", "scheduler", "clip")}
        check_hparams({**hp, "generator": {"name": "dehazeformer_test"}}, "composed")
        check_config(OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=False), "data", "composed", "data")


@pytest.mark.slow
def test_crafted_checkpoint_commands_refuse_and_write_nothing(crafted, tiny_paired_root, tmp_path):
    """The documented commands, run from a folder outside the checkout, on a crafted checkpoint."""
    cases, side = crafted
    case, path = cases[0]
    work = tmp_path / "work"
    work.mkdir()
    photo = work / "photo.jpg"
    Image.new("RGB", (40, 30), (90, 100, 110)).save(photo)
    commands = {
        "eval": [_script("clipdehaze-eval"), f"ckpt_path={path}", *_data(tiny_paired_root)],
        "predict": [_script("clipdehaze-predict"), f"ckpt_path={path}", f"input={photo}", "output=restored/"],
    }
    for name, cmd in commands.items():
        out = _run(cmd, work)
        assert out.returncode != 0, (name, out.stdout[-2000:])
        assert f"{path}: refusing to build 'builtins.open'" in out.stderr, (name, out.stderr[-2000:])
    assert not any(side.iterdir())
    assert not (work / "restored").exists()
    assert not list(work.rglob("metrics.json"))


@pytest.mark.slow
def test_resumed_run_never_builds_a_best_checkpoint_named_by_its_state(crafted, compose_cfg, tiny_paired_root,
                                                                       tmp_path):
    """A run folder from elsewhere: its last.ckpt is clean, but the checkpoint callback's state names a crafted
    file as the best checkpoint, which train tests after fitting."""
    cases, side = crafted
    quick = ["model=dehazeformer_test", "debug=quick", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
             "trainer.limit_val_batches=1", "callbacks.rich_progress_bar=null", *_data(tiny_paired_root)]
    train(compose_cfg("train", quick, out=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
    ckpt["callbacks"][key]["best_model_path"] = str(cases[0][1])
    torch.save(ckpt, last)
    cfg = compose_cfg("train", [*quick, "resume=auto"], out=tmp_path / "run")
    _refused(lambda: train(cfg), cases[0][0], cases[0][1], side)


# ------------------------------------------------------------------------------------------------------------
# Security: corrupt and non-finite weights


def _record_offsets(path: Path) -> list[tuple[str, int, int]]:
    """(name, first data byte, size) of every tensor record of a torch.save zip."""
    data = path.read_bytes()
    out = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" in info.filename and info.file_size:
                name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
                out.append((info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size))
    return out


def test_bit_flips_inside_tensors_are_refused(tmp_path):
    """torch.load accepts these files and returns changed weights; the CRC-32 check refuses each, naming it."""
    good = _save_ckpt(tmp_path / "good.ckpt")
    weights = tmp_path / "good.pth"
    torch.save({"state_dict": torch.load(good, weights_only=True)["state_dict"]}, weights)
    rng = np.random.default_rng(0)
    cases = 0
    for src in (good, weights):
        records = _record_offsets(src)
        for k in rng.choice(len(records), size=4, replace=False):
            name, start, size = records[k]
            data = bytearray(src.read_bytes())
            data[start + int(rng.integers(size))] ^= 1 << int(rng.integers(8))
            flipped = tmp_path / f"flipped_{cases}{src.suffix}"
            flipped.write_bytes(bytes(data))
            torch.load(flipped, weights_only=True)  # the failure this guards against: no error from torch
            load = (lambda p=flipped: DehazeLitModule.load_checkpoint(str(p))) if src is good else \
                (lambda p=flipped: load_generator_weights(DehazeLitModule(generator={"name": "dehazeformer_test"})
                                                          .generator, p))
            with pytest.raises(CheckpointError, match=rf"{flipped.name}: corrupt file: record .*CRC-32"):
                load()
            cases += 1
    assert cases == 8


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fmt", ["ckpt", "pth", "safetensors"])
def test_non_finite_weights_are_refused(tmp_path, value, fmt):
    from safetensors.torch import save_file

    module = DehazeLitModule(generator={"name": "dehazeformer_test"})
    sd = module.state_dict()
    key = [k for k in sd if sd[k].is_floating_point()][3]
    sd[key].view(-1)[0] = value
    path = tmp_path / f"bad.{fmt}"
    if fmt == "ckpt":
        torch.save({"state_dict": sd, "hyper_parameters": dict(module.hparams)}, path)
        load = lambda: DehazeLitModule.load_checkpoint(str(path))  # noqa: E731
    else:
        gen_sd = {k[len("generator."):]: v.contiguous() for k, v in sd.items()}
        torch.save(gen_sd, path) if fmt == "pth" else save_file(gen_sd, str(path))
        load = lambda: load_generator_weights(module.generator, path)  # noqa: E731
    with pytest.raises(CheckpointError, match=rf"{path.name}: non-finite weights \(NaN/Inf\) in .*{key.split('.')[-1]}"):
        load()


def test_unusable_weights_files_are_named(tmp_path):
    from safetensors.torch import save_file

    gen = DehazeLitModule(generator={"name": "dehazeformer_test"}).generator
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(tmp_path / "w.safetensors"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tmp_path / "w.safetensors").read_bytes()[:200])
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    torch.save(["a", "b"], tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("not weights")
    cases = {truncated: "cannot read weights", tmp_path / "tensor.pth": "not a state_dict",
             tmp_path / "list.pth": "not a state_dict", tmp_path / "text.pth": "cannot read weights"}
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=rf"{path.name}: {message}"):
            load_generator_weights(gen, path)


def test_eval_of_a_nan_checkpoint_stops_before_any_work(compose_cfg, tiny_paired_root, tmp_path):
    """It used to write black images and NaN metrics with exit 0."""
    module = DehazeLitModule(generator={"name": "dehazeformer_test"})
    sd = module.state_dict()
    next(v for v in sd.values() if v.is_floating_point()).fill_(float("nan"))
    path = tmp_path / "diverged.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": dict(module.hparams)}, path)
    cfg = compose_cfg("eval", [f"ckpt_path={path}", *_data(tiny_paired_root)], out=tmp_path / "eval")
    with pytest.raises(CheckpointError, match="diverged.ckpt: non-finite weights"):
        evaluate(cfg)
    assert not (tmp_path / "eval" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------------------
# Data loss: synth --overwrite, predict's output folder, eval's run dir, a full disk


def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (target) under ``root``."""
    return {p.relative_to(root).as_posix(): (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def _photo_folder(folder: Path, n: int = 4, size: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"photo{i}.png")
    return folder


_SYNTH = ["--crops", "1", "--patch-size", "32", "--variants", "1", "--test-variants", "1", "--test-max-side", "40",
          "--multiple-of", "8"]


def _synth(source: Path, out: Path, *extra: str) -> int:
    return data_cli(["synth", "--source", str(source), "--out", str(out), *_SYNTH, *extra])


def test_synth_overwrite_never_deletes_what_it_did_not_write(tmp_path, capsys):
    photos = _photo_folder(tmp_path / "photos")
    earlier = tmp_path / "earlier"

    def dataset_plus(name: str, extra: str | None) -> Path:
        out = tmp_path / name
        assert _synth(photos, out) == 0
        if extra:
            (out / extra).write_text("my notes")
        return out

    (tmp_path / "a_file").write_text("not a folder")
    _photo_folder(tmp_path / "someone_elses")
    (tmp_path / "link").symlink_to(tmp_path / "someone_elses")
    cases = {  # --out, exit code
        "out equal to source": (photos, 2),
        "out inside source": (photos / "dataset", 2),
        "source inside out": (tmp_path, 2),
        "a folder of photos": (tmp_path / "someone_elses", 1),
        "a file": (tmp_path / "a_file", 1),
        "a symlink to a folder": (tmp_path / "link", 1),
        "a dataset plus notes beside it": (dataset_plus("with_notes", "notes.txt"), 1),
        "a dataset plus a file among its images": (dataset_plus("with_image", "train/GT/mine.png"), 1),
    }
    capsys.readouterr()
    for case, (out, code) in cases.items():
        before = _snapshot(tmp_path)
        assert _synth(photos, out, "--overwrite") == code, case
        assert _snapshot(tmp_path) == before, case
        err = capsys.readouterr().err
        assert str(out) in err and ("overlap" in err or "refusing" in err or "did not write" in err
                                    or "does not list" in err), (case, err)
    assert _synth(photos, earlier) == 0
    before = json.loads((earlier / "meta.json").read_text())["seed"]
    assert _synth(photos, earlier, "--overwrite", "--seed", "5") == 0  # its own dataset: replaced
    assert json.loads((earlier / "meta.json").read_text())["seed"] == 5 != before
    (tmp_path / "empty").mkdir()
    assert _synth(photos, tmp_path / "empty", "--overwrite") == 0


def test_synthetic_data_root_pointing_at_photos_is_refused_not_replaced(tmp_path):
    """``data=synthetic data.root=<a folder>`` generates the dataset there; a folder of other files is refused."""
    from clipdehaze.data import SyntheticHazeDataModule

    photos = _photo_folder(tmp_path / "my_photos")
    before = _snapshot(photos)
    with pytest.raises(FileExistsError, match=r"my_photos is not a synthetic dataset written by clipdehaze"):
        SyntheticHazeDataModule(root=str(photos), num_workers=0).setup("fit")
    assert _snapshot(photos) == before


def _predict_cfg(compose_cfg, src: Path, out: Path, *extra: str):
    return compose_cfg("predict", ["model=dcp", f"input={src}", f"output={out}", *extra])


def test_predict_replaces_only_its_own_outputs(compose_cfg, tmp_path):
    from clipdehaze.predict import MARK

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (24, 20), (90, 110, 130)).save(src / "a.jpg")
    Image.new("RGB", (24, 20), (50, 60, 70)).save(src / "b.png")
    out = tmp_path / "out"
    out.mkdir()
    foreign = {  # what sits at out/a.png: a user's picture, other bytes, another program's PNG, a dangling link
        "a user's PNG": lambda p: Image.new("RGB", (5, 5), (1, 2, 3)).save(p),
        "bytes that are not an image": lambda p: p.write_bytes(b"precious"),
        "another program's PNG": lambda p: Image.new("RGB", (5, 5)).save(p, pnginfo=_png_info({"Software": "GIMP"})),
        "a dangling symlink": lambda p: p.symlink_to(tmp_path / "gone.png"),
    }
    for case, make in foreign.items():
        make(out / "a.png")
        before = _snapshot(out)
        with pytest.raises(FileExistsError, match=r"out/a\.png, not written by clipdehaze-predict; pass overwrite=true"):
            predict(_predict_cfg(compose_cfg, src, out))
        assert _snapshot(out) == before, case  # refused before anything was written (b.png neither)
        (out / "a.png").unlink()

    written = predict(_predict_cfg(compose_cfg, src, out))
    assert sorted(p.name for p in written) == ["a.png", "b.png"]
    Image.new("RGB", (24, 20)).save(out / "a.png", pnginfo=_png_info(MARK))  # an earlier output of ours, edited
    predict(_predict_cfg(compose_cfg, src, out))
    assert np.asarray(Image.open(out / "a.png")).max() > 0  # replaced without overwrite=true
    (out / "b.png").write_bytes(b"precious")
    predict(_predict_cfg(compose_cfg, src, out, "overwrite=true"))
    assert Image.open(out / "b.png").size == (24, 20)

    (out / "a.png").unlink()
    (out / "a.png").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out/a\.png is a folder"):
        predict(_predict_cfg(compose_cfg, src, out, "overwrite=true"))
    (tmp_path / "restored.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=r"output=.*restored\.png is an existing file"):
        predict(_predict_cfg(compose_cfg, src, tmp_path / "restored.png"))
    assert (tmp_path / "restored.png").read_bytes() == b"x"


def _png_info(text: dict[str, str]):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    return info


def _fake_run(folder: Path, task: str) -> Path:
    """The files a run of ``task`` leaves in its run dir."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"task_name: {task}\nseed: 1\n")
    (folder / "metrics.json").write_text('{"metrics": {"test/psnr": 30.0}, "generator": "dehazeformer_t"}')
    (folder / "config_resolved.yaml").write_text("seed: 1\n")
    (folder / f"{task}.log").write_text("log\n")
    Image.new("RGB", (8, 8)).save(folder / "grid.png")
    if task == "train":
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    return folder


def test_foreign_run_dirs_are_recognised(tmp_path):
    from clipdehaze.utils.hydra_utils import foreign_run

    partial = {"checkpoints only": "checkpoints", "metrics only": "metrics.json", "a grid only": "grid.png",
               "another task's log": "train.log", "a Hydra folder only": ".hydra"}
    for case, name in partial.items():
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        (folder / name).mkdir() if name in ("checkpoints", ".hydra") else (folder / name).write_text("x")
        assert foreign_run(folder, "eval") is not None, case
    unreadable = tmp_path / "unreadable"
    _fake_run(unreadable, "eval")
    (unreadable / ".hydra" / "config.yaml").write_text("{: not yaml")
    assert foreign_run(unreadable, "eval") is not None
    assert "a train run" in foreign_run(_fake_run(tmp_path / "train_run", "train"), "eval")
    assert "a predict run" in foreign_run(_fake_run(tmp_path / "predict_run", "predict"), "eval")
    assert foreign_run(_fake_run(tmp_path / "eval_run", "eval"), "eval") is None  # an earlier eval: its own
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    assert foreign_run(tmp_path / "notes", "eval") is None
    assert foreign_run(tmp_path / "missing", "eval") is None


@pytest.mark.slow
def test_eval_and_predict_refuse_a_training_run_dir(tiny_paired_root, tmp_path):
    run = _fake_run(tmp_path / "outputs" / "train" / "runs" / "2026-01-01_00-00-00-000000_ab12", "train")
    before = _snapshot(run)
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (24, 20)).save(photo)
    commands = [[_script("clipdehaze-eval"), "model=dcp", *_data(tiny_paired_root), f"hydra.run.dir={run}"],
                [_script("clipdehaze-predict"), "model=dcp", f"input={photo}", "output=restored",
                 f"hydra.run.dir={run}"]]
    for cmd in commands:
        out = _run(cmd, tmp_path)
        assert out.returncode != 0, out.stdout[-2000:]
        assert f"hydra.run.dir puts this" in out.stderr and f"{run}, but it holds a train run" in out.stderr, \
            out.stderr[-2000:]
        assert _snapshot(run) == before
    assert not (tmp_path / "restored").exists()


@pytest.fixture
def enospc(monkeypatch):
    """``enospc(name)``: from now on the fsync of ``name``'s temporary file fails as on a full disk."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell which file an fsync is for")
    real = os.fsync

    def arm(name: str) -> None:
        def fsync(fd):
            if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    return arm


RESULT_FILES = ("metrics.json", "per_image.csv", "config_resolved.yaml", "grid.png")


def test_a_full_disk_loses_only_the_file_that_did_not_fit(compose_cfg, tiny_paired_root, tmp_path, enospc):
    from clipdehaze.utils.files import ResultWriteError

    for failing in RESULT_FILES:
        out = tmp_path / failing
        enospc(failing)
        with pytest.raises(ResultWriteError, match=rf"could not write {out / failing}: No space left on device"):
            evaluate(compose_cfg("eval", ["model=dcp", *_data(tiny_paired_root)], out=out))
        left = {p.name for p in out.iterdir() if p.name in RESULT_FILES}
        assert left == set(RESULT_FILES) - {failing}, failing
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        if failing != "metrics.json":
            assert json.loads((out / "metrics.json").read_text())["metrics"]["test/psnr_tiny"] > 5
    # A replacement that does not fit leaves the earlier complete file in place.
    out = tmp_path / "rerun"
    enospc("nothing")
    evaluate(compose_cfg("eval", ["model=dcp", *_data(tiny_paired_root)], out=out))
    earlier = (out / "metrics.json").read_bytes()
    enospc("metrics.json")
    with pytest.raises(ResultWriteError):
        evaluate(compose_cfg("eval", ["model=dcp", *_data(tiny_paired_root)], out=out))
    assert (out / "metrics.json").read_bytes() == earlier


def test_training_writes_metrics_before_the_grid(compose_cfg, tiny_paired_root, tmp_path, enospc):
    from clipdehaze.utils.files import ResultWriteError

    enospc("grid.png")
    cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=fast_dev_run", *_data(tiny_paired_root)],
                      out=tmp_path / "run")
    with pytest.raises(ResultWriteError, match=r"could not write .*run/grid\.png: No space left on device; written: "
                                               r".*metrics\.json"):
        train(cfg)
    assert "test/psnr_tiny" in json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
