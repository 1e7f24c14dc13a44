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
from clipdehaze.build import module_for_inference
from clipdehaze.predict import predict
from clipdehaze.train import train
from clipdehaze.utils.checkpoint import CheckpointError, load_generator_weights
from clipdehaze.utils.trust import UntrustedConfigError
from hostile import snapshot



def _script(name: str) -> str:
    """The installed console script, as the README writes the command."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e .)")
    return str(path)


@pytest.fixture(autouse=True)
def _commands(cli):
    """The session's warm console-script runner, for :func:`_run` (its server starts on the first command)."""
    _CLI[:] = [cli]


_CLI: list = []


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A console script run as typed (through the session's command server: conftest's ``cli``)."""
    return _CLI[0].script(cmd[0], cmd[1:], cwd, timeout=300)


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


@pytest.mark.slow
def test_crafted_checkpoint_for_eval_builds_nothing(crafted, compose_cfg, tiny_paired_root, tmp_path):
    cases, side = crafted
    for case, path in cases:
        cfg = compose_cfg("eval", [f"ckpt_path={path}", *_data(tiny_paired_root)], out=tmp_path / "eval")
        _refused(lambda: evaluate(cfg), case, path, side)
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.slow
def test_crafted_checkpoint_for_predict_builds_nothing(crafted, compose_cfg, tmp_path):
    cases, side = crafted
    src = tmp_path / "photos"
    src.mkdir()
    Image.new("RGB", (40, 30), (90, 100, 110)).save(src / "a.jpg")
    for case, path in cases:
        cfg = compose_cfg("predict", [f"ckpt_path={path}", f"input={src}", f"output={tmp_path / 'restored'}"])
        _refused(lambda: predict(cfg), case, path, side)
    assert not (tmp_path / "restored").exists()


@pytest.mark.slow
def test_crafted_checkpoint_for_resume_builds_nothing(crafted, compose_cfg, tiny_paired_root, tmp_path):
    cases, side = crafted
    for case, path in cases:
        cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=fast_dev_run", f"ckpt_path={path}",
                                    *_data(tiny_paired_root)], out=tmp_path / "run")
        _refused(lambda: train(cfg), case, path, side)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
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


@pytest.mark.slow
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
                                                                       trained_tiny_run, tmp_path):
    """A run folder from elsewhere: its last.ckpt is clean, but the checkpoint callback's state names a crafted
    file as the best checkpoint, which train tests after fitting."""
    import shutil

    from conftest import TINY_TRAINING

    cases, side = crafted
    shutil.copytree(trained_tiny_run[0], tmp_path / "run")   # a finished run; resuming it tests its best checkpoint
    quick = [*TINY_TRAINING, f"data.root={tiny_paired_root}", "callbacks.rich_progress_bar=null"]
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
    leaf = key.split(".")[-1]
    with pytest.raises(CheckpointError, match=rf"{path.name}: non-finite weights \(NaN/Inf\) in .*{leaf}"):
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
        before = snapshot(tmp_path)
        assert _synth(photos, out, "--overwrite") == code, case
        assert snapshot(tmp_path) == before, case
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
    before = snapshot(photos)
    with pytest.raises(FileExistsError, match=r"my_photos is not a synthetic dataset written by clipdehaze"):
        SyntheticHazeDataModule(root=str(photos), num_workers=0).setup("fit")
    assert snapshot(photos) == before


def _predict_cfg(compose_cfg, src: Path, out: Path, *extra: str):
    return compose_cfg("predict", ["model=dcp", f"input={src}", f"output={out}", *extra])


@pytest.mark.slow
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
        before = snapshot(out)
        with pytest.raises(FileExistsError, match=r"out/a\.png, not written by clipdehaze-predict; pass overwrite="):
            predict(_predict_cfg(compose_cfg, src, out))
        assert snapshot(out) == before, case  # refused before anything was written (b.png neither)
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
    before = snapshot(run)
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (24, 20)).save(photo)
    sweep = tmp_path / "outputs" / "train" / "multiruns" / "2026-01-01_00-00-00-000000_cd34"
    _fake_run(sweep / "0", "train")
    before_sweep = snapshot(sweep)
    commands = [  # (option, the run dir it names, command)
        ("hydra.run.dir", run, [_script("clipdehaze-eval"), "model=dcp", *_data(tiny_paired_root),
                                f"hydra.run.dir={run}"]),
        ("hydra.sweep.dir", sweep / "0", [_script("clipdehaze-eval"), "-m", "model=dcp,identity",
                                          *_data(tiny_paired_root), f"hydra.sweep.dir={sweep}"]),
        ("hydra.run.dir", run, [_script("clipdehaze-predict"), "model=dcp", f"input={photo}", "output=restored",
                                f"hydra.run.dir={run}"]),
    ]
    for option, where, cmd in commands:
        out = _run(cmd, tmp_path)
        assert out.returncode != 0, out.stdout[-2000:]
        assert f"{option} puts this" in out.stderr and f"{where}, but it holds a train run" in out.stderr, \
            out.stderr[-2000:]
        assert snapshot(run) == before and snapshot(sweep) == before_sweep
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------------------------------
# Silent wrong results: non-finite pixels and metrics


def _float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32), mode="F").save(path)
    return path


def _float_corpus(h: int = 20, w: int = 24) -> dict[str, tuple[np.ndarray, int]]:
    """case -> (float image, how many NaN pixels it holds)."""
    base = np.linspace(0.1, 0.9, h * w, dtype=np.float32).reshape(h, w)
    cases = {}
    for name, rows, cols, value in [("NaN in a corner", 0, 0, np.nan),
                                    ("a NaN block", slice(5, 9), slice(6, 10), np.nan),
                                    ("all NaN", slice(None), slice(None), np.nan),
                                    ("+Inf pixels", 3, slice(2, 7), np.inf), ("-Inf pixels", slice(0, 4), 5, -np.inf),
                                    ("values above 1", 7, 7, 5.0)]:
        img = base.copy()
        img[rows, cols] = value
        cases[name] = (img, int(np.isnan(img).sum()))
    mixed = base.copy()
    mixed[1, 2], mixed[3, 4] = np.inf, np.nan
    cases["NaN and Inf"] = (mixed, 1)
    return cases


def test_float_images_nan_refused_naming_file_inf_clipped(tmp_path):
    from clipdehaze.data.io import ImageReadError, load_image

    for i, (case, (img, nans)) in enumerate(_float_corpus().items()):
        path = _float_tiff(tmp_path / f"case{i}.tif", img)
        if nans:
            r, c = (int(a[0]) for a in np.nonzero(np.isnan(img)))
            with pytest.raises(ImageReadError, match=rf"case{i}\.tif: {nans} NaN pixel\(s\) \(the first at row {r}, "
                                                     rf"column {c}\)"):
                load_image(path)
        else:
            x = load_image(path)
            assert torch.isfinite(x).all(), case
            assert torch.equal(x[0], torch.from_numpy(np.clip(img, 0, 1))), case


def test_predict_skips_a_nan_image_by_name_and_restores_an_inf_one(compose_cfg, tmp_path):
    corpus = _float_corpus()
    src = tmp_path / "in"
    src.mkdir()
    _float_tiff(src / "nan.tif", corpus["a NaN block"][0])
    _float_tiff(src / "inf.tif", corpus["+Inf pixels"][0])
    Image.new("RGB", (24, 20), (90, 110, 130)).save(src / "plain.png")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"1 of 3 input\(s\) unreadable or not restorable .*nan\.tif; 2 written"):
        predict(_predict_cfg(compose_cfg, src, out))
    assert sorted(p.name for p in out.iterdir()) == ["inf.png", "plain.png"]
    restored = np.asarray(Image.open(out / "inf.png"))
    assert restored.std() > 5  # not the black image a non-finite pixel used to give


def test_predict_never_writes_a_nan_output_as_a_black_image(compose_cfg, tmp_path, monkeypatch):
    import clipdehaze.predict as predict_module

    real_restore = predict_module.restore

    def unstable_on_width_31(module, x, *tiling):
        y = real_restore(module, x, *tiling)
        if x.shape[-1] == 31:
            y[..., 2:5, 3] = float("nan")
        return y

    monkeypatch.setattr(predict_module, "restore", unstable_on_width_31)
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (31, 20), (90, 110, 130)).save(src / "unstable.png")
    Image.new("RGB", (24, 20), (90, 110, 130)).save(src / "fine.png")
    with pytest.raises(SystemExit, match=r"1 of 2 input\(s\) unreadable or not restorable .*unstable\.png; 1 written"):
        predict(_predict_cfg(compose_cfg, src, tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fine.png"]


def test_nan_in_a_test_image_stops_eval_naming_it(compose_cfg, tmp_path):
    from clipdehaze.data.io import ImageReadError
    from conftest import make_paired_folder

    root = make_paired_folder(tmp_path / "data", {"train": [(40, 40)] * 2, "test": [(20, 24)] * 2})
    (root / "test" / "hazy" / "0001.png").unlink()
    _float_tiff(root / "test" / "hazy" / "0001.tif", _float_corpus()["NaN in a corner"][0])
    cfg = compose_cfg("eval", ["model=dcp", *_data(root)], out=tmp_path / "eval")
    with pytest.raises(ImageReadError, match=r"hazy/0001\.tif: 1 NaN pixel"):
        evaluate(cfg)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def _strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_outputs_give_valid_json_and_name_the_images(compose_cfg, tiny_paired_root, tmp_path, monkeypatch):
    """An output with NaN pixels (an unstable model) makes that image's metrics and the means NaN: metrics.json
    stays valid JSON (null) and a warning names the images. (+-Inf outputs are clamped by every protocol.)"""
    real_forward = DehazeLitModule.forward

    def whole(out):
        return out.fill_(float("nan"))

    def one_pixel(out):
        out[..., 3, 4] = float("nan")
        return out

    cases = {"a NaN image": (whole, {0}), "one NaN pixel": (one_pixel, {1}), "both images NaN": (whole, {0, 1})}
    for case, (poison, indices) in cases.items():
        def forward(self, x, batch=None, poison=poison, indices=indices):
            out = real_forward(self, x, batch)
            return poison(out) if batch is not None and set(batch["index"].tolist()) & indices else out

        monkeypatch.setattr(DehazeLitModule, "forward", forward)
        out = tmp_path / case.replace(" ", "_")
        names = ", ".join(f"{i:04d}.png" for i in sorted(indices))
        with pytest.warns(UserWarning, match=rf"non-finite metric values .* {len(indices)} test image\(s\): {names};"):
            evaluate(compose_cfg("eval", ["model=dcp", *_data(tiny_paired_root)], out=out))
        summary = _strict_json(out / "metrics.json")
        assert summary["metrics"]["test/psnr_tiny"] is None and summary["metrics"]["test/ssim_tiny"] is None, case


def test_to_json_writes_null_for_every_non_finite_number():
    from clipdehaze.utils.files import to_json

    corpus = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"),
              "nested": {"a": [1.0, float("nan"), {"b": float("inf")}]}, "tuple": (float("-inf"), 2),
              "fine": 1.5, "text": "NaN", "path": Path("/x")}
    parsed = json.loads(to_json(corpus), parse_constant=lambda t: pytest.fail(f"invalid JSON token {t}"))
    assert parsed == {"nan": None, "inf": None, "-inf": None, "nested": {"a": [1.0, None, {"b": None}]},
                      "tuple": [None, 2], "fine": 1.5, "text": "NaN", "path": "/x"}


# ------------------------------------------------------------------------------------------------------------
# Silent wrong results: dataset listing, `clipdehaze-data check`, EXIF orientation


def _junk(folder: Path, outside: Path) -> dict[str, str]:
    """Entries a dataset folder collects, each with the reason the listing must give."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0009.png").symlink_to(outside / "moved_away.png")
    (folder / "0010.png").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "0011.gif")
    (folder / "._0000.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / ".DS_Store").write_bytes(b"\x00")
    (folder / "Thumbs.db").write_bytes(b"\x00")
    (folder / "notes.txt").write_text("x")
    (folder / "0012.heic").write_bytes(b"\x00")
    (folder / "old").mkdir()
    os.mkfifo(folder / "0013.png")
    return {"0009.png": "broken symlink", "0010.png": "a folder named like an image",
            "0011.gif": "unsupported format .gif", "._0000.png": "macOS resource-fork", ".DS_Store": "hidden file",
            "Thumbs.db": "not an image (.db)",
            "notes.txt": "not an image (.txt)", "0012.heic": "unsupported format .heic", "old": "a folder",
            "0013.png": "not a regular file"}


def test_listing_reports_every_skipped_entry_with_its_reason(tmp_path):
    from clipdehaze.data import PairedImageDataset
    from conftest import make_paired_folder

    root = make_paired_folder(tmp_path / "data", {"train": [(40, 40)] * 3})
    reasons = _junk(root / "train" / "hazy", tmp_path)
    with pytest.warns(UserWarning) as record:
        ds = PairedImageDataset(root, "train", mode="test")
    message = " ".join(str(w.message) for w in record)
    assert f"{len(reasons)} entries are not readable images and were skipped" in message
    for name, reason in reasons.items():
        assert f"{name} ({reason}" in message, (name, message)
    assert [p.name for p, _ in ds.pairs] == ["0000.png", "0001.png", "0002.png"]


@pytest.mark.parametrize("names", [("0001.png", "0001.jpg"), ("0001.png", "0001.PNG"), ("0001.tif", "0001.tiff"),
                                   ("0001_0.8_0.2.png", "0001_0.8_0.2.jpg")])
def test_two_inputs_sharing_a_stem_are_refused(tmp_path, names):
    from clipdehaze.data import PairedImageDataset
    from conftest import make_paired_folder

    root = make_paired_folder(tmp_path / "data", {"test": [(32, 32)] * 2})
    hazy = root / "test" / "hazy"
    for p in hazy.iterdir():
        p.unlink()
    for n in names:
        Image.new("RGB", (32, 32), (200, 200, 200)).save(hazy / n, format="PNG" if "png" in n.lower() else None)
    first, second = sorted(hazy / n for n in names)
    with pytest.raises(ValueError, match=rf"ambiguous inputs: .*{first.name} and .*{second.name} .*count twice"):
        PairedImageDataset(root, "test", mode="test")
    assert data_cli(["check", str(root)]) == 1


def test_check_fails_on_empty_ambiguous_and_broken_datasets(tmp_path, capsys):
    from conftest import make_paired_folder

    def folders(name: str) -> Path:
        for d in ("hazy", "GT"):
            (tmp_path / name / d).mkdir(parents=True)
        return tmp_path / name

    empty = folders("empty")
    only_hazy = folders("only_hazy")
    Image.new("RGB", (16, 16)).save(only_hazy / "hazy" / "0001.png")
    ambiguous_gt = make_paired_folder(tmp_path / "ambiguous_gt", {"test": [(16, 16)]})
    Image.new("RGB", (16, 16)).save(ambiguous_gt / "test" / "GT" / "0000.jpg")
    broken = make_paired_folder(tmp_path / "broken_link", {"test": [(16, 16)] * 2})
    (broken / "test" / "hazy" / "0002.png").symlink_to(tmp_path / "nowhere.png")
    folder_like = make_paired_folder(tmp_path / "folder_like", {"test": [(16, 16)] * 2})
    (folder_like / "test" / "GT" / "0002.png").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = {
        empty: "no pairs (0 image(s) in hazy/, 0 in GT/)",
        only_hazy: "no pairs (1 image(s) in hazy/, 0 in GT/)",
        ambiguous_gt: "ambiguous targets",
        broken: "0002.png: skipped, broken symlink",
        folder_like: "0002.png: skipped, a folder named like an image",
        tmp_path / "missing": "missing: does not exist",
        tmp_path / "a_file": "a_file: not a folder",
    }
    capsys.readouterr()
    for root, message in cases.items():
        assert data_cli(["check", str(root)]) == 1, root
        out = capsys.readouterr().out
        assert message in out and "OK:" not in out, (root, out)
    gif = make_paired_folder(tmp_path / "with_gif", {"test": [(16, 16)] * 2})
    Image.new("RGB", (8, 8)).save(gif / "test" / "hazy" / "0005.gif")
    assert data_cli(["check", str(gif)]) == 0  # a stray GIF is reported, not fatal
    assert "0005.gif: skipped, unsupported format .gif" in capsys.readouterr().out


def _with_orientation(path: Path, orientation: int, size: int = 32, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, exif=exif)


@pytest.mark.parametrize("hazy,gt", [(6, 1), (1, 3), (8, 6), (2, 1), (6, 6)])
def test_pairs_with_different_exif_orientations_are_warned_naming_both(tmp_path, capsys, hazy, gt):
    from clipdehaze.data import PairedImageDataset

    root = tmp_path / "data"
    for d in ("hazy", "GT"):
        (root / "test" / d).mkdir(parents=True)
    _with_orientation(root / "test" / "hazy" / "0001.png", hazy)
    _with_orientation(root / "test" / "GT" / "0001.png", gt)
    ds = PairedImageDataset(root, "test", mode="test")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds[0]
        ds[0]  # once per pair, not per epoch
    found = [str(w.message) for w in caught if "EXIF orientations differ" in str(w.message)]
    assert data_cli(["check", str(root)]) == 0
    out = capsys.readouterr().out
    if hazy == gt:
        assert not found and "EXIF" not in out
    else:
        assert len(found) == 1
        for message in (found[0], out):
            assert f"hazy/0001.png has {hazy}, its target {root}/test/GT/0001.png has {gt}" in message, message


# ------------------------------------------------------------------------------------------------------------
# Unclear failures: one sentence naming the option or file and the fix, before any work starts


@pytest.mark.parametrize("override,option", [
    ("data.batch_size=0", "batch_size=0"), ("data.batch_size=-2", "batch_size=-2"),
    ("data.batch_size=2.5", "batch_size=2.5"), ("+data.val_batch_size=0", "val_batch_size=0"),
    ("data.num_workers=-1", "num_workers=-1"), ("data.crop_size=-8", "crop_size=-8"),
    ("data.val_crop_size=-1", "val_crop_size=-1"), ("+data.max_train_samples=0", "max_train_samples=0"),
    ("+data.max_test_samples=-3", "max_test_samples=-3"),
])
def test_bad_data_options_are_named_before_anything_runs(compose_cfg, tiny_paired_root, tmp_path, override, option):
    cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=fast_dev_run", *_data(tiny_paired_root), override],
                      out=tmp_path / "run")
    with pytest.raises(Exception, match=rf"data\.{option} is invalid: it must be ") as info:
        train(cfg)  # Hydra wraps the data module's ValueError, quoting its sentence
    assert isinstance(info.value.__cause__ or info.value, ValueError)
    assert not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("model,override,minimum", [
    ("dehazeformer_test", "data.crop_size=16", 25), ("dehazeformer_test", "data.crop_size=24", 25),
    ("mixdehazenet_test", "data.crop_size=32", 37), ("dehazeformer_test", "data.val_crop_size=20", 25),
])
def test_crop_below_the_models_minimum_is_named(compose_cfg, tiny_paired_root, tmp_path, model, override, minimum):
    option = override.split("=")[0]
    cfg = compose_cfg("train", [f"model={model}", "debug=fast_dev_run", *_data(tiny_paired_root), override],
                      out=tmp_path / "run")
    with pytest.raises(ValueError, match=rf"^{option}={override.split('=')[1]} is below the smallest input "
                                         rf"model={model} takes \({minimum} px per side\); set {option}={minimum}"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_inputs_are_named(compose_cfg, tiny_paired_root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for src, message in {tmp_path / "nowhere": "no such file or folder", empty: "no images"}.items():
        with pytest.raises(FileNotFoundError, match=rf"^input={src}: {message}"):
            predict(_predict_cfg(compose_cfg, src, tmp_path / "out"))
    cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=fast_dev_run", *_data(tiny_paired_root),
                                f"data.root={tmp_path / 'no_dataset'}"], out=tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"no_dataset/train/hazy.*no_dataset does not exist"):
        train(cfg)


@pytest.mark.parametrize("argv", [["clip=null", "model=mixcldehazenet_test"], ["data=null"], ["model=null"]])
@pytest.mark.slow
def test_a_group_set_to_null_gets_the_tilde_form(argv):
    from clipdehaze.utils.hydra_utils import check_override_syntax

    group = argv[0].split("=")[0]
    with pytest.raises(SystemExit, match=rf"^{group}=null: a config group cannot be set to null .* drop it with "
                                         rf"~{group}, or choose one of: "):
        check_override_syntax(argv)


@pytest.mark.slow
def test_clip_cache_with_clip_null_says_what_to_pass():
    with pytest.raises(SystemExit, match=r"^clip=null: .*~clip, or choose one of: .*tiny_random"):
        data_cli(["clip-cache", "data=synthetic", "model=mixcldehazenet_test", "clip=null"])


_AWKWARD_PATHS = ["in=put", "it's", 'say "hi"', "[1]", "(copy)", "{a}", "a,b", "cost $5", "tab\there", "end\\",
                  "x=${y}", "mix 'a'=\"b\" [c],(d)"]


@pytest.mark.slow
def test_paths_with_override_syntax_get_a_quoted_form_that_reads_back_exactly(compose_cfg, tmp_path):
    import shlex

    from clipdehaze.utils.hydra_utils import check_override_syntax

    unparseable = 0
    for name in _AWKWARD_PATHS:
        path = str(tmp_path / name)
        try:
            check_override_syntax([f"input={path}", "output=out"])
            quoted = None
        except SystemExit as e:
            unparseable += 1
            assert str(e).startswith(f"input={path}: Hydra cannot read this value"), str(e)
            quoted = str(e).rsplit(": ", 1)[1]
        if quoted is None:  # plain enough for Hydra as typed; the documented quoting must read it back too
            from clipdehaze.utils.hydra_utils import hydra_quote, shell_quote

            quoted = shell_quote(f"input={hydra_quote(path)}")
        (arg,) = shlex.split(quoted)  # what the shell hands over
        check_override_syntax([arg])
        assert compose_cfg("predict", [arg]).input == path, (name, quoted)
    assert unparseable >= 7


@pytest.mark.slow
def test_predict_reads_a_path_with_override_syntax_quoted_as_documented(tmp_path):
    import shlex

    src = tmp_path / "hazy=1 it's [a]"
    src.mkdir()
    Image.new("RGB", (24, 20), (90, 110, 130)).save(src / "a.jpg")
    out = _run([_script("clipdehaze-predict"), "model=dcp", f"input={src}", "output=restored"], tmp_path)
    assert out.returncode != 0 and f"input={src}: Hydra cannot read this value" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "restored").exists()
    (quoted,) = shlex.split(out.stderr.strip().splitlines()[-1].rsplit(": ", 1)[1])
    out = _run([_script("clipdehaze-predict"), "model=dcp", quoted, "output=restored"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "restored" / "a.png").is_file()


def test_the_readmes_quoting_examples_read_back_as_the_paths_they_show():
    import re
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from clipdehaze.utils.hydra_utils import check_override_syntax

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("**Paths holding", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    expected = {"input": "photos/hazy=1 [set A]/", "data.root": "data/it's here"}
    parser = OverridesParser.create()
    seen = {}
    for line in block.strip().splitlines():
        argv = shlex.split(line)[1:]
        check_override_syntax(argv)
        for arg in argv:
            override = parser.parse_override(arg)
            if override.key_or_group in expected:
                seen[override.key_or_group] = override.value()
    assert seen == expected
