"""Hostile input, round 3 (issue #23): what the allow-list let through, files still overwritten, and the weak messages
left. Every case asserts its message and that nothing else changed (a byte-level snapshot of the folders involved,
:func:`hostile.snapshot`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipdehaze.evaluate import evaluate
from clipdehaze.lit_module import RUN_CONFIG_KEY, DehazeLitModule
from clipdehaze.predict import predict
from clipdehaze.train import train
from clipdehaze.utils.checkpoint import CheckpointError, load_generator_weights
from clipdehaze.utils.trust import UntrustedConfigError
from hostile import crafted_checkpoint, snapshot

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _data(root: Path) -> list[str]:
    return ["data=paired", f"data.root={root}", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
            "data.name=tiny"]


def _photos(folder: Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """``folder/<name>`` random RGB images of (H, W) ``sizes``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e .)")
    return str(path)


# ------------------------------------------------------------------------------------------------------------
# 1. Nothing a user did not ask to replace is replaced


@pytest.mark.slow
def test_predict_compare_checks_its_folder_for_foreign_files(compose_cfg, tmp_path):
    from clipdehaze.predict import MARK

    src = _photos(tmp_path / "in", {"a.png": (20, 24), "b.png": (20, 24)})
    out = tmp_path / "out"
    (out / "compare").mkdir(parents=True)
    (tmp_path / "run").mkdir()  # compose_cfg's run dir
    args = ["model=dcp", f"input={src}", f"output={out}", "compare=true"]
    foreign = {  # what sits in out/compare/, and the file the refusal names
        "a user's picture": ("a.png", lambda p: Image.new("RGB", (5, 5), (1, 2, 3)).save(p), []),
        "another program's scores": ("scores.csv", lambda p: p.write_text("photo,my score\na,1\n"),
                                     ["metrics=no_reference"]),
    }
    for case, (name, make, extra) in foreign.items():
        make(out / "compare" / name)
        before = snapshot(tmp_path)
        with pytest.raises(FileExistsError, match=rf"already holds {out / 'compare' / name}, not written by "
                                                  r"clipdehaze-predict; pass overwrite=true"):
            predict(compose_cfg("predict", [*args, *extra]))
        assert snapshot(tmp_path) == before, case
        (out / "compare" / name).unlink()
    # Without compare=true nothing is written there, so a user's file in compare/ is no obstacle (no false refusal).
    Image.new("RGB", (5, 5), (1, 2, 3)).save(out / "compare" / "a.png")
    mine = (out / "compare" / "a.png").read_bytes()
    predict(compose_cfg("predict", args[:-1]))
    assert (out / "compare" / "a.png").read_bytes() == mine
    (out / "compare" / "a.png").unlink()
    # Its own earlier outputs (marked PNGs, its scores.csv) are replaced without overwrite=true.
    predict(compose_cfg("predict", [*args, "metrics=no_reference"]))
    assert {p.name for p in (out / "compare").iterdir()} == {"a.png", "b.png", "scores.csv"}
    Image.new("RGB", (5, 5)).save(out / "compare" / "b.png", pnginfo=_png_info(MARK))
    predict(compose_cfg("predict", [*args, "metrics=no_reference"]))
    assert Image.open(out / "compare" / "b.png").size == (2 * 24 + 8, 20)
    # compare/ as the input folder: never written into.
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"compare=true writes into {out / 'compare'}, the input folder"):
        predict(compose_cfg("predict", ["model=dcp", f"input={out / 'compare'}", f"output={out}", "compare=true"]))
    assert snapshot(tmp_path) == before
    # compare/ as a file.
    (out / "compare").rename(tmp_path / "moved")
    (out / "compare").write_text("notes")
    before = snapshot(tmp_path)
    with pytest.raises(NotADirectoryError, match=rf"{out / 'compare'}, where compare=true writes, is an existing file"):
        predict(compose_cfg("predict", args))
    assert snapshot(tmp_path) == before


def _png_info(text: dict[str, str]):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    return info


def _fake_run(folder: Path, task: str, results: bool = True) -> Path:
    """The files a run of ``task`` leaves in its run dir (``results=False``: a run that stopped before any)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"task_name: {task}\nseed: 1\n")
    (folder / f"{task}.log").write_text("log\n")
    if results:
        (folder / "metrics.json").write_text('{"metrics": {"test/psnr": 30.0}, "generator": "dehazeformer_t"}')
        (folder / "config_resolved.yaml").write_text("seed: 1\n")
        Image.new("RGB", (8, 8)).save(folder / "grid.png")
    if task == "train" and results:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
        (folder / "csv").mkdir()
        (folder / "csv" / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    return folder


@pytest.mark.slow
def test_train_refuses_a_run_dir_holding_another_runs_results(compose_cfg, tmp_path, monkeypatch):
    from clipdehaze.utils.hydra_utils import RunDirGuard

    def check(run: Path, *overrides: str) -> None:
        RunDirGuard._check(run, compose_cfg("train", list(overrides)), "hydra.run.dir", run)

    base = tmp_path / "runs"
    runs = {task: _fake_run(base / task, task) for task in ("eval", "predict", "train")}
    refused = {  # (run dir, overrides) -> what the message says it holds, and whether resume=auto is offered
        ("eval", ()): ("it holds an eval run", False),
        ("predict", ()): ("it holds a predict run", False),
        ("train", ()): ("it holds an earlier train run (metrics.json, grid.png, config_resolved.yaml, checkpoints, "
                        "csv)", True),
        ("eval", ("resume=auto",)): ("it holds an eval run", False),  # an eval cannot be continued
    }
    for (task, overrides), (why, offers_resume) in refused.items():
        before = snapshot(base)
        with pytest.raises(SystemExit) as info:
            check(runs[task], *overrides)
        message = str(info.value)
        assert message.startswith(f"hydra.run.dir puts this train run into {runs[task]}, but {why}, whose files "
                                  "it would replace: "), message
        assert ("continue that run with resume=auto" in message) == offers_resume, message
        assert f"pass overwrite=true to move its files into {runs[task]}/replaced-<time>/" in message
        assert snapshot(base) == before, (task, overrides)
    # Accepted, nothing touched: continuing the training run, a training run that stopped before any result, a
    # folder of notes, and a DDP rank started by rank 0 (which checked).
    _fake_run(base / "stopped", "train", results=False)
    (base / "notes").mkdir()
    (base / "notes" / "todo.txt").write_text("x")
    before = snapshot(base)
    check(runs["train"], "resume=auto")
    check(runs["train"], f"ckpt_path={runs['train'] / 'checkpoints' / 'last.ckpt'}")
    check(base / "stopped")
    check(base / "notes")
    monkeypatch.setenv("LOCAL_RANK", "1")
    check(runs["eval"])
    monkeypatch.delenv("LOCAL_RANK")
    assert snapshot(base) == before
    # overwrite=true moves the run's files aside, byte for byte, and leaves the user's own files where they were.
    (runs["eval"] / "my_notes.txt").write_text("mine")
    before = snapshot(runs["eval"])
    check(runs["eval"], "overwrite=true")
    (aside,) = runs["eval"].glob("replaced-*")
    after = snapshot(runs["eval"])
    moved = {k.replace(f"{aside}", str(runs["eval"])): v for k, v in after.items() if k.startswith(str(aside) + "/")}
    kept = (str(runs["eval"]), str(runs["eval"] / "my_notes.txt"))
    assert moved == {k: v for k, v in before.items() if k not in kept}
    assert sorted(p.name for p in runs["eval"].iterdir()) == ["my_notes.txt", aside.name]
    check(runs["eval"])  # what is left is no run: a fresh training may start there


@pytest.mark.slow
def test_train_command_refuses_an_eval_run_dir_then_overwrite_moves_it_aside(tiny_paired_root, tmp_path):
    run = _fake_run(tmp_path / "eval_run", "eval")
    before = snapshot(run)
    cmd = [_script("clipdehaze-train"), "model=dehazeformer_test", "debug=fast_dev_run",
           "callbacks.rich_progress_bar=null", *_data(tiny_paired_root), f"hydra.run.dir={run}"]
    out = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert f"hydra.run.dir puts this train run into {run}, but it holds an eval run" in out.stderr, out.stderr[-2000:]
    assert snapshot(run) == before
    out = subprocess.run([*cmd, "overwrite=true"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (aside,) = run.glob("replaced-*")
    assert {k.replace(str(aside), str(run)): v for k, v in snapshot(aside).items() if k != str(aside)} == \
        {k: v for k, v in before.items() if k != str(run)}
    assert json.loads((run / "metrics.json").read_text())["generator"] == "dehazeformer_test"


_QUICK = ["model=dehazeformer_test", "debug=quick", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
          "trainer.limit_val_batches=1", "callbacks.rich_progress_bar=null"]


@pytest.mark.slow
def test_resume_auto_refuses_a_checkpoint_written_with_other_settings(compose_cfg, tiny_paired_root, tmp_path,
                                                                      caplog):
    from clipdehaze.train import checked_ckpt_path, recipe_differences

    run = tmp_path / "run"
    train(compose_cfg("train", [*_QUICK, *_data(tiny_paired_root)], out=run))
    last = run / "checkpoints" / "last.ckpt"
    before = snapshot(run)
    for change, shown in {"optimizer.lr=1e-3": "optimizer.lr: 0.0002 -> 0.001", "seed=7": "seed: 42 -> 7",
                          "data.name=other": "data.name: 'tiny' -> 'other'", "ema.enabled=true":
                          "ema.enabled: False -> True"}.items():
        for how in ("resume=auto", "ckpt_path=last"):
            cfg = compose_cfg("train", [*_QUICK, *_data(tiny_paired_root), how, change], out=run)
            with pytest.raises(ValueError, match=rf"^{how} would continue {last}, written by a run with other settings "
                                                 rf"\((.*; )?{shown}[;)].* or continue it with these settings on "
                                                 rf"purpose: ckpt_path={last}$"):
                train(cfg)
        assert snapshot(run) == before, change
    # The way out named: an explicit ckpt_path continues it, saying what differs.
    cfg = compose_cfg("train", [*_QUICK, *_data(tiny_paired_root), f"ckpt_path={last}", "optimizer.lr=1e-3"], out=run)
    with caplog.at_level(logging.WARNING):
        assert checked_ckpt_path(cfg, run)[0] == str(last)
    assert "optimizer.lr: 0.0002 -> 0.001" in caplog.text
    # Execution-only settings may change (more epochs, another logger, fewer workers, a moved dataset).
    same = compose_cfg("train", [*_QUICK, *_data(tiny_paired_root), "resume=auto", "trainer.max_epochs=3",
                                 "logger=tensorboard", "data.num_workers=1", f"data.root={tmp_path / 'moved'}",
                                 "callbacks.model_summary=null", "compile.enabled=true"], out=run)
    assert checked_ckpt_path(same, run) == (str(last), torch.load(last, weights_only=True)["global_step"])
    stored = torch.load(last, weights_only=True)[RUN_CONFIG_KEY]
    from omegaconf import OmegaConf

    assert recipe_differences(stored, OmegaConf.to_container(same, resolve=True)) == []
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------------------------------
# 2. Stored configs can ask for nothing but a model to be built


_TINY_CLIP = {"_target_": "clipdehaze.models.clip.FrozenCLIP", "model_name": "clipdehaze_tiny", "pretrained": None,
              "checkpoint": None, "seed": 0, "warn_random": False}


def _payloads(tmp: Path, side: Path) -> dict[str, tuple[Path, str]]:
    """case -> (crafted checkpoint, the key its refusal names). Built as asked, each would download, read a file
    outside the run, data and caches (``secret``) or write into ``side``."""
    secret = tmp / "secret.bin"
    secret.write_bytes(b"not for hashing" * 10)
    clip = {"generator": "mixcldehazenet_test", "base": {"clip": _TINY_CLIP}}
    charbonnier = {"_target_": "clipdehaze.losses.CharbonnierLoss"}
    cases = {
        "FrozenCLIP(cache_dir=<side>, pretrained=openai)": (
            {**clip, "clip": {**_TINY_CLIP, "model_name": "ViT-B-32", "pretrained": "openai",
                              "cache_dir": str(side / "cache")}}, "hyper_parameters.clip.cache_dir"),
        "FrozenCLIP(checkpoint=<secret>)": ({**clip, "clip": {**_TINY_CLIP, "checkpoint": str(secret)}},
                                            "hyper_parameters.clip.checkpoint"),
        "FrozenCLIP(pretrained=<secret>)": ({**clip, "clip": {**_TINY_CLIP, "pretrained": str(secret)}},
                                            "hyper_parameters.clip.pretrained"),
        **{f"loss {key}": ({"loss": {**charbonnier, key: value}}, f"hyper_parameters.loss.{key}")
           for key, value in (("_partial_", True), ("_args_", [0.5]), ("_recursive_", False), ("_convert_", "all"))},
        "nested _args_": ({"loss": {"_target_": "clipdehaze.losses.WeightedSumLoss", "weights": {"l1": 1.0},
                                    "terms": {"l1": {"_target_": "clipdehaze.losses.L1Loss", "_args_": [1]}}}},
                          "hyper_parameters.loss.terms.l1._args_"),
    }
    out = {}
    for i, (case, (changes, key)) in enumerate(cases.items()):
        changes = dict(changes)
        kwargs = {k: changes.pop(k) for k in ("generator", "base") if k in changes}
        out[case] = (crafted_checkpoint(tmp / f"payload{i}.ckpt", **kwargs, **changes), key)
    return out


@pytest.mark.slow
def test_stored_arguments_are_refused_naming_file_and_key(compose_cfg, tiny_paired_root, tmp_path):
    side = tmp_path / "side_effects"
    side.mkdir()
    src = _photos(tmp_path / "photos", {"a.png": (30, 40)})
    payloads = _payloads(tmp_path, side)
    (tmp_path / "run").mkdir()
    before = snapshot(tmp_path)
    for case, (path, key) in payloads.items():
        for tool, args in (("eval", [*_data(tiny_paired_root)]), ("predict", [f"input={src}",
                                                                              f"output={tmp_path / 'out'}"])):
            cfg = compose_cfg(tool, [f"ckpt_path={path}", *args], out=tmp_path / "run")
            with pytest.raises(UntrustedConfigError, match=rf"^{path}: refusing {key}"):
                (evaluate if tool == "eval" else predict)(cfg)
            assert snapshot(tmp_path) == before, (case, tool)


@pytest.mark.slow
def test_training_only_sections_of_a_checkpoint_are_never_built(compose_cfg, tiny_paired_root, tmp_path,
                                                                  monkeypatch):
    """A checkpoint's loss may ask for a download or a file of its choosing (a crafted one, or a legitimate CR-loss
    run trained with loss.download=true and its ResNet-152 file): eval and predict never build the loss, so nothing
    is downloaded or read, and the weights are scored. Refusing would lock users out of their own CR-loss runs."""
    import clipdehaze.losses.contrastive as contrastive
    import torch.hub

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not for hashing" * 10)
    payloads = {
        "L1WithCR(download=True)": {"_target_": "clipdehaze.losses.L1WithCR", "download": True},
        "L1WithCR(weights_path=<secret>)": {"_target_": "clipdehaze.losses.L1WithCR", "weights_path": str(secret)},
    }
    ckpts = {case: crafted_checkpoint(tmp_path / f"loss{i}.ckpt", loss=loss) for i, (case, loss) in
             enumerate(payloads.items())}

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint's training loss was built or a download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(contrastive.L1WithCR, "__init__", refuse)
    src = _photos(tmp_path / "photos", {"a.png": (30, 40)})
    before = snapshot(tmp_path / "photos", secret, *ckpts.values())
    for i, (case, ckpt) in enumerate(ckpts.items()):
        for tool, args in (("eval", [*_data(tiny_paired_root)]), ("predict", [f"input={src}",
                                                                              f"output={tmp_path / f'out{i}'}"])):
            run = tmp_path / f"run-{tool}-{i}"
            cfg = compose_cfg(tool, [f"ckpt_path={ckpt}", *args], out=run)
            (evaluate if tool == "eval" else predict)(cfg)
            assert str(secret) not in "".join(f.read_text(errors="replace") for f in run.rglob("*.json")), case
    assert snapshot(tmp_path / "photos", secret, *ckpts.values()) == before


@pytest.mark.slow
def test_stored_data_config_stays_in_the_data_cache_and_run_folders(compose_cfg, tmp_path):
    """eval without data= builds the checkpoint's data config: its locations must lie inside this run's own
    paths.data_dir, paths.cache_dir or run dir."""
    side = tmp_path / "side_effects"
    side.mkdir()
    data_dir = tmp_path / "data"
    from conftest import make_paired_folder

    inside = make_paired_folder(data_dir / "tiny", {"train": [(40, 40)] * 2, "test": [(40, 40)]})
    outside = make_paired_folder(tmp_path / "elsewhere", {"train": [(40, 40)] * 2, "test": [(40, 40)]})
    paired = {"_target_": "clipdehaze.data.PairedDataModule", "name": "tiny", "crop_size": 32, "batch_size": 1,
              "num_workers": 0}
    synthetic = {"_target_": "clipdehaze.data.SyntheticHazeDataModule", "name": "x", "crop_size": 32,
                 "batch_size": 1, "num_workers": 0}
    refused = {
        "SyntheticHazeDataModule(root=<side>)": ({**synthetic, "root": str(side / "planted")}, "root"),
        "PairedDataModule(root=<elsewhere>)": ({**paired, "root": str(outside)}, "root"),
        "root inside, test_root outside": ({**paired, "root": str(inside), "test_root": str(outside)}, "test_root"),
        "a sub-folder climbing out": ({**paired, "root": str(inside), "input_dir": "../../elsewhere/test/hazy"},
                                      "input_dir"),
        "a '..' path into the data folder and out": ({**paired, "root": f"{data_dir}/../elsewhere"}, "root"),
    }
    ckpts = {case: crafted_checkpoint(tmp_path / f"d{i}.ckpt", run_config={"data": data, "seed": 1})
             for i, (case, (data, _)) in enumerate(refused.items())}
    (tmp_path / "run").mkdir()
    before = snapshot(tmp_path)
    for case, (_, key) in refused.items():
        ckpt = ckpts[case]
        cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", f"paths.data_dir={data_dir}"], out=tmp_path / "run")
        with pytest.raises(UntrustedConfigError, match=rf"^{ckpt}: refusing clipdehaze_run_config\.data\.{key}=.*"
                                                       rf"only inside {data_dir}, .*Pass data=<name>"):
            evaluate(cfg)
        assert snapshot(tmp_path) == before, case
    # No false refusal: a root inside the configured data folder is scored.
    ckpt = crafted_checkpoint(tmp_path / "ok.ckpt", run_config={"data": {**paired, "root": str(inside)}, "seed": 1})
    result = evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", f"paths.data_dir={data_dir}"], out=tmp_path / "ok"))
    assert result["images"] == 1


def test_interpolation_in_a_stored_run_config_is_refused_naming_the_file(compose_cfg, tiny_paired_root, tmp_path):
    ckpt = crafted_checkpoint(tmp_path / "seed.ckpt", run_config={"seed": "${oc.env:HOME}", "clip_control": "real"})
    (tmp_path / "run").mkdir()
    before = snapshot(tmp_path)
    for cfg in (compose_cfg("eval", [f"ckpt_path={ckpt}", *_data(tiny_paired_root)], out=tmp_path / "run"),
                compose_cfg("eval", [f"ckpt_path={ckpt}", "test_clip_control=shuffled", *_data(tiny_paired_root)],
                            out=tmp_path / "run")):
        with pytest.raises(UntrustedConfigError, match=rf"^{ckpt}: clipdehaze_run_config\.seed holds an interpolation "
                                                       r"'\$\{oc\.env:HOME\}'"):
            evaluate(cfg)
        assert snapshot(tmp_path) == before


def test_sections_the_caller_supplies_are_not_built_from_the_file(tmp_path):
    """A section replaced by the user's own config (clip= in eval, every section in train's best checkpoint), or one
    a module for inference never builds (the loss), is not built from the file, so its arguments do not matter; its
    target still must pass."""
    download = crafted_checkpoint(tmp_path / "dl.ckpt", loss={"_target_": "clipdehaze.losses.L1WithCR",
                                                              "download": True})
    assert DehazeLitModule.load_checkpoint(str(download)).loss_fn is None
    cache = crafted_checkpoint(tmp_path / "cd.ckpt", generator="mixcldehazenet_test", base={"clip": _TINY_CLIP},
                               clip={**_TINY_CLIP, "cache_dir": str(tmp_path / "elsewhere")})
    assert DehazeLitModule.load_checkpoint(str(cache), clip=_TINY_CLIP).clip_prior is not None
    foreign = crafted_checkpoint(tmp_path / "os.ckpt", loss={"_target_": "os.system", "command": "true"})
    with pytest.raises(UntrustedConfigError, match="refusing to build 'os.system'"):
        DehazeLitModule.load_checkpoint(str(foreign), loss={"_target_": "clipdehaze.losses.L1Loss"})


@pytest.mark.slow
def test_shipped_configs_pass_the_argument_checks(compose_cfg):
    """No false refusals: what clipdehaze-train stores for every shipped loss, optimizer, scheduler and CLIP config
    builds again from the file, except clip=local, whose weights file the user names again (clip=local
    clip.checkpoint=...); every shipped data config read back lies in the data folder or the cache."""
    from omegaconf import OmegaConf

    from clipdehaze.utils.hydra_utils import config_groups
    from clipdehaze.utils.trust import check_arguments, check_hparam_arguments

    groups = {g: o for g, o in config_groups().items() if g in ("loss", "optimizer", "scheduler", "clip", "data")}
    for i in range(max(len(options) for options in groups.values())):
        choice = {g: options[i % len(options)] for g, options in groups.items()}
        overrides = [f"{g}={o}" for g, o in choice.items()]
        if choice["clip"] == "local":
            overrides.append("clip.checkpoint=/weights/clip.pt")
        if choice["data"] in ("paired", "folder"):
            overrides.append("data.root=${paths.data_dir}/mine")
        cfg = compose_cfg("train", overrides)
        hp = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("loss", "optimizer", "scheduler", "clip")}
        if choice["clip"] == "local":
            with pytest.raises(UntrustedConfigError, match=r"hyper_parameters\.clip\.checkpoint='/weights/clip\.pt'.*"
                                                           r"Pass clip=<name> \(e\.g\. clip=local clip\.checkpoint="):
                check_hparam_arguments(hp, "composed")
            hp.pop("clip")
        check_hparam_arguments(hp, "composed")
        check_arguments(OmegaConf.to_container(cfg.data, resolve=True), "composed", "data",
                        locations=[cfg.paths.data_dir, cfg.paths.cache_dir, cfg.paths.output_dir])


def test_pickle_payloads_are_refused_naming_the_file_and_the_call(compose_cfg, tiny_paired_root, tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return open, (str(tmp_path / "pwned"), "w")

    zipped = tmp_path / "zipped.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, zipped)
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps(Payload()))
    (tmp_path / "run").mkdir()
    before = snapshot(tmp_path)
    call = r"loading it would call (io|builtins)\.open, which is code, not weights"
    for path in (zipped, plain):
        with pytest.raises(CheckpointError, match=rf"^{path}: refusing to unpickle this file: {call}"):
            evaluate(compose_cfg("eval", [f"ckpt_path={path}", *_data(tiny_paired_root)], out=tmp_path / "run"))
        with pytest.raises(CheckpointError, match=rf"^{path}: refusing to unpickle this file: {call}"):
            load_generator_weights(DehazeLitModule(generator={"name": "dehazeformer_test"}).generator, path)
        assert snapshot(tmp_path) == before
    # A file that is no pickle at all is not called a payload.
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(CheckpointError, match=r"text\.pth: cannot read weights"):
        load_generator_weights(DehazeLitModule(generator={"name": "dehazeformer_test"}).generator,
                               tmp_path / "text.pth")


# ------------------------------------------------------------------------------------------------------------
# 3. Every weak case: one sentence naming the file, the option and the fix (or a correct result)


def test_an_image_below_the_models_minimum_is_named_in_eval_and_train(compose_cfg, tmp_path):
    from conftest import make_paired_folder

    root = make_paired_folder(tmp_path / "data", {"train": [(48, 48)] * 2, "test": [(1, 1), (40, 40)]})
    ckpt = crafted_checkpoint(tmp_path / "m.ckpt")
    before = snapshot(root)
    message = (rf"^test image {root}/test/hazy/0000\.png is 1x1 px \(WxH\), smaller than model=dehazeformer_test "
               r"takes \(25 px per side\); leave it out of the test set or upscale it to at least 25 px per side$")
    with pytest.raises(ValueError, match=message):
        evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", *_data(root)], out=tmp_path / "eval"))
    assert not (tmp_path / "eval" / "metrics.json").exists()
    with pytest.raises(ValueError, match=message):
        train(compose_cfg("train", ["model=dehazeformer_test", "debug=fast_dev_run",
                                    "callbacks.rich_progress_bar=null", *_data(root)], out=tmp_path / "train"))
    assert not (tmp_path / "train" / "metrics.json").exists()
    assert snapshot(root) == before


@pytest.mark.parametrize("shape", [(3, 1000), (1000, 3), (1, 1), (24, 700)])
def test_tile_auto_plans_images_thinner_than_the_model_takes(shape):
    """Probes run on the image as tiled_forward runs it (padded to the minimum side); the result equals the
    whole image restored padded."""
    from clipdehaze.utils.tiling import auto_tile, tiled_forward

    seen = []

    def fn(t, box):
        seen.append(tuple(t.shape[-2:]))
        assert min(t.shape[-2:]) >= 25, t.shape
        return t * 0.5 + 0.1

    x = torch.rand(1, 3, *shape)
    tile = auto_tile(fn, x, budget_bytes=2**40, overlap=32, min_size=25, measure=lambda work: (work(), 10**6)[1])
    y = tiled_forward(fn, x, tile=tile, overlap=32, min_size=25)
    assert y.shape == x.shape and torch.allclose(y, x * 0.5 + 0.1)
    # A budget that forces tiles: still no probe or tile below the minimum, and the strip comes back whole.
    tile = auto_tile(fn, x, budget_bytes=64 * 2**20, overlap=8, min_size=25,
                     measure=lambda work: (work(), 400 * 384 * 384)[1])
    y = tiled_forward(fn, x, tile=tile, overlap=8, min_size=25)
    assert y.shape == x.shape and torch.allclose(y, x * 0.5 + 0.1, atol=1e-6)


def test_predict_restores_a_folder_holding_extreme_aspect_ratios(compose_cfg, tmp_path):
    src = _photos(tmp_path / "in", {"wide.png": (3, 1000), "tall.png": (1000, 3), "plain.png": (40, 50)})
    ckpt = crafted_checkpoint(tmp_path / "m.ckpt")
    before = snapshot(src)
    written = predict(compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={src}", f"output={tmp_path / 'out'}"]))
    assert sorted(p.name for p in written) == ["plain.png", "tall.png", "wide.png"]
    assert {p.name: Image.open(p).size for p in written} == {"wide.png": (1000, 3), "tall.png": (3, 1000),
                                                             "plain.png": (50, 40)}
    assert snapshot(src) == before


def test_a_path_holding_an_interpolation_gets_the_escaped_form(compose_cfg, tmp_path, monkeypatch):
    from clipdehaze.utils.hydra_utils import check_override_syntax

    folder = tmp_path / "photos"
    folder.mkdir()
    literal = folder / "${oc.env:HOME}.png"
    Image.new("RGB", (24, 20), (1, 2, 3)).save(literal)
    before = snapshot(folder)
    with pytest.raises(SystemExit) as info:
        check_override_syntax([f"input={literal}", "output=out"])
    message = str(info.value)
    assert message.startswith(f"input={literal}: Hydra reads ${{...}} in a value as an interpolation and would look "
                              f"for another path, but {literal} is a file whose name holds ${{: escape it as \\${{"), \
        message
    (quoted,) = shlex.split(message.rsplit(" to mean that file: ", 1)[1])
    check_override_syntax([quoted])
    assert compose_cfg("predict", [quoted]).input == str(literal)
    assert snapshot(folder) == before
    # An interpolation meant as one (no file of that literal name) is Hydra's business, and so is an escaped one.
    monkeypatch.setenv("PHOTOS", str(folder))
    check_override_syntax(["input=${oc.env:PHOTOS}/a.png", f"input={folder}/\\${{oc.env:HOME}}.png"])


_SYNTH = ["--crops", "1", "--patch-size", "32", "--variants", "1", "--test-variants", "1", "--test-max-side", "40",
          "--multiple-of", "8"]


@pytest.mark.parametrize("flag,value,message", [
    ("--test-fraction", "1.5", "argument --test-fraction: 1.5 is not a share strictly between 0 and 1"),
    ("--test-fraction", "-1", "argument --test-fraction: -1 is not a share strictly between 0 and 1"),
    ("--test-fraction", "0", "argument --test-fraction: 0 is not a share strictly between 0 and 1"),
    ("--test-fraction", "1", "argument --test-fraction: 1 is not a share strictly between 0 and 1"),
    ("--variants", "0", "error: --variants 0: must be a whole number, 1 or more"),
    ("--test-variants", "0", "error: --test-variants 0: must be a whole number, 1 or more"),
    ("--crops", "-1", "error: --crops -1: must be a whole number, 0 or more"),
    ("--patch-size", "0", "error: --patch-size 0: must be a whole number of pixels, 1 or more"),
    ("--multiple-of", "0", "error: --multiple-of 0: must be a whole number of pixels, 1 or more"),
    ("--test-max-side", "0", "error: --test-max-side 0: must be a whole number of pixels, 1 or more"),
])
def test_synth_refuses_numbers_out_of_range(tmp_path, capsys, flag, value, message):
    from clipdehaze.data.cli import main as data_cli

    photos = _photos(tmp_path / "photos", {f"p{i}.png": (48, 48) for i in range(4)})
    before = snapshot(tmp_path)
    argv = ["synth", "--source", str(photos), "--out", str(tmp_path / "out"), *_SYNTH]
    argv = argv[:argv.index(flag)] + argv[argv.index(flag) + 2:] if flag in argv else argv
    if flag == "--test-fraction":  # checked by argparse, which exits
        with pytest.raises(SystemExit) as info:
            data_cli([*argv, flag, value])
        code = info.value.code
    else:
        code = data_cli([*argv, flag, value])
    assert code == 2
    assert message in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_synth_library_validates_its_recipe_and_split():
    from clipdehaze.data.synth import RecipeError, SplitRecipe, synthesize_dataset

    for field, value in (("variants", 0), ("crops", -1), ("patch_size", 0), ("scale_range", (2.0, 1.0)),
                         ("max_side", 0), ("multiple_of", 0), ("variants", 1.5), ("variants", True)):
        with pytest.raises(RecipeError, match=rf"^{field}=.*: must be "):
            SplitRecipe(**{field: value})
    for fraction in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"test_fraction={fraction}: must be a share strictly between 0 and 1"):
            synthesize_dataset([np.zeros((8, 8, 3))] * 3, "/nonexistent/never-written", test_fraction=fraction)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_synth_removes_only_its_own_stale_temp_folders(tmp_path, caplog):
    from clipdehaze.data.cli import main as data_cli

    photos = _photos(tmp_path / "photos", {f"p{i}.png": (48, 48) for i in range(4)})
    out = tmp_path / "dataset"

    def temp(name: str, mark: dict | None) -> Path:
        folder = tmp_path / f".dataset.tmp-{name}"
        (folder / "train" / "GT").mkdir(parents=True)
        (folder / "train" / "GT" / "x.png").write_bytes(b"half written")
        if mark is not None:
            (folder / ".clipdehaze-synth-in-progress").write_text(json.dumps(mark))
        return folder

    dead, host = _dead_pid(), socket.gethostname()
    stale = temp(f"{dead}-0badc0de", {"pid": dead, "host": host})
    kept = [temp(f"{os.getpid()}-0000aaaa", {"pid": os.getpid(), "host": host}),  # a run still going
            temp(f"{dead}-1111bbbb", {"pid": dead, "host": "another-host"}),     # another machine's pid
            temp(f"{dead}-2222cccc", None),                                       # no mark: not ours to judge
            temp(f"{dead + 1}-3333dddd", {"pid": dead, "host": host})]            # the name and mark disagree
    before = snapshot(*kept, photos)
    with caplog.at_level(logging.WARNING):
        assert data_cli(["synth", "--source", str(photos), "--out", str(out), *_SYNTH]) == 0
    assert not stale.exists()
    assert snapshot(*kept, photos) == before
    assert f"removed {stale}, the unfinished dataset of an interrupted run (process {dead})" in caplog.text
    assert ".clipdehaze-synth-in-progress" not in {p.name for p in out.rglob("*")}


@pytest.mark.slow
def test_synth_killed_leaves_a_temp_folder_the_next_run_removes(tmp_path):
    import signal
    import time

    photos = _photos(tmp_path / "photos", {f"p{i}.png": (300, 300) for i in range(8)})
    cmd = [_script("clipdehaze-data"), "synth", "--source", str(photos), "--out", str(tmp_path / "dataset"),
           "--crops", "40", "--patch-size", "64", "--variants", "4"]
    proc = subprocess.Popen(cmd, env=ENV)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".dataset.tmp-*/train")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "synth finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = tmp_path.glob(".dataset.tmp-*")
    out = subprocess.run([*cmd[:6], *_SYNTH], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert not left.exists() and f"removed {left}" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "photos"]


def _ema_checkpoint(path: Path, nan_in: str | None = None, drop_raw: bool = False) -> tuple[Path, dict, dict]:
    """An EMA checkpoint as clipdehaze-train writes it (state_dict: the average; current_model_state: the raw
    weights; the callback's state; ema.enabled in the run config) -> (file, average, raw)."""
    from clipdehaze.callbacks import RAW_STATE_KEY

    torch.manual_seed(0)
    module = DehazeLitModule(generator={"name": "dehazeformer_test"})
    raw = {k: v.clone() for k, v in module.state_dict().items()}
    average = {k: v + 0.01 if v.is_floating_point() else v.clone() for k, v in raw.items()}
    if nan_in is not None:
        key = next(k for k, v in raw.items() if v.is_floating_point())
        (average if nan_in == "average" else raw)[key].view(-1)[0] = float("nan")
    ckpt = {"state_dict": average, "hyper_parameters": dict(module.hparams), "callbacks": {"GeneratorEMA": {}},
            RUN_CONFIG_KEY: {"ema": {"enabled": True}, "seed": 0}}
    if not drop_raw:
        ckpt[RAW_STATE_KEY] = raw
    torch.save(ckpt, path)
    return path, average, raw


def test_the_ema_choice_is_honoured_exactly_or_refused_naming_the_file(tmp_path):
    def loaded(path, use_ema):
        return DehazeLitModule.load_checkpoint(str(path), use_ema=use_ema)

    def holds(module, state):
        return all(torch.equal(module.state_dict()[k], v) for k, v in state.items())

    nan_average, average_1, raw_1 = _ema_checkpoint(tmp_path / "nan_average.ckpt", nan_in="average")
    nan_raw, average_2, _ = _ema_checkpoint(tmp_path / "nan_raw.ckpt", nan_in="raw")
    no_raw, average_3, _ = _ema_checkpoint(tmp_path / "no_raw.ckpt", drop_raw=True)
    plain = crafted_checkpoint(tmp_path / "plain.ckpt")
    before = snapshot(tmp_path)
    module = loaded(nan_average, False)
    assert module.ema_weights is False and holds(module, raw_1)
    with pytest.raises(CheckpointError, match=rf"^{nan_average}: non-finite weights \(NaN/Inf\) in the EMA average "
                                              r"\(state_dict; use_ema=true\): .*; use_ema=false takes the raw weights, "
                                              r"which are finite, or use an earlier checkpoint$"):
        loaded(nan_average, True)
    module = loaded(nan_raw, True)
    assert module.ema_weights is True and holds(module, average_2)
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN/Inf\) in the raw weights "
                                              r"\(current_model_state; use_ema=false\): .*; use_ema=true takes the "
                                              r"EMA average, which are"):
        loaded(nan_raw, False)
    with pytest.raises(CheckpointError, match=rf"^{no_raw}: use_ema=false asks for the raw weights, but this EMA "
                                              r"checkpoint holds only the average \(its current_model_state is "
                                              r"missing\); pass use_ema=true"):
        loaded(no_raw, False)
    module = loaded(no_raw, True)
    assert module.ema_weights is True and holds(module, average_3)
    assert loaded(plain, False).ema_weights is None  # no average: use_ema has nothing to choose
    assert snapshot(tmp_path) == before


def test_eval_records_the_ema_choice_it_honoured(compose_cfg, tiny_paired_root, tmp_path):
    path, _, _ = _ema_checkpoint(tmp_path / "nan_average.ckpt", nan_in="average")
    result = evaluate(compose_cfg("eval", [f"ckpt_path={path}", "use_ema=false", *_data(tiny_paired_root)],
                                  out=tmp_path / "run"))
    assert result["weights"]["ema"] is False
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["weights"]["ema"] is False


def test_safetensors_weights_print_their_sha256(compose_cfg, tiny_paired_root, tmp_path, caplog):
    from safetensors.torch import save_file

    generator = DehazeLitModule(generator={"name": "dehazeformer_test"}).generator
    good = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(good))
    data = bytearray(good.read_bytes())
    data[-100] ^= 0x10  # inside a tensor: safetensors has no checksum, the file still loads
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))
    for path in (good, flipped):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            result = evaluate(compose_cfg("eval", ["model=dehazeformer_test", f"weights_path={path}",
                                                   *_data(tiny_paired_root)], out=tmp_path / path.stem))
        assert f"{path}: sha256 {digest} (safetensors files carry no checksum: compare it with the one the weights " \
               "were published with)" in caplog.text
        assert result["weights"]["sha256"] == digest
        assert json.loads((tmp_path / path.stem / "metrics.json").read_text())["weights"]["sha256"] == digest


def _nr_corpus(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (NIQE's reason, BRISQUE's reason or "" when it scores)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (0, 0, 0)).save(folder / "black.png")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(folder / "grey.png")
    _photos(folder, {"small.png": (40, 50), "fine.png": (200, 200)})
    constant = "the image is constant (every gray level {}; natural-scene statistics need texture)"
    return {"black.png": ("the image is too small (64x64, WxH; NIQE needs two whole 96x96 blocks)", constant.format(0)),
            "grey.png": (constant.format(128), constant.format(128)),
            "small.png": ("the image is too small (50x40, WxH; NIQE needs two whole 96x96 blocks)", "")}


def test_nan_no_reference_scores_say_why_and_never_crash(tmp_path):
    from clipdehaze.data.io import load_image
    from clipdehaze.metrics import compute_metric, nan_reason

    corpus = _nr_corpus(tmp_path)
    for name, (niqe_why, brisque_why) in corpus.items():
        x = load_image(tmp_path / name)[None]
        assert torch.isnan(compute_metric("niqe", x, protocol=None)).all(), name
        assert nan_reason("niqe", x) == niqe_why
        brisque = compute_metric("brisque", x, protocol=None)  # an all-black image used to divide by zero
        assert torch.isnan(brisque).all() == bool(brisque_why), name
        if brisque_why:
            assert nan_reason("brisque", x) == brisque_why
    fine = load_image(tmp_path / "fine.png")[None]
    assert torch.isfinite(compute_metric("niqe", fine, protocol=None)).all()
    assert torch.isfinite(compute_metric("brisque", fine, protocol=None)).all()
    broken = fine.clone()
    broken[..., 0, 0] = float("nan")
    assert nan_reason("niqe", broken) == ("the image has NaN/Inf pixels (the model is numerically unstable on this "
                                          "input)")


def test_predict_and_eval_name_each_nan_score_and_its_reason(compose_cfg, tmp_path, caplog):
    corpus = _nr_corpus(tmp_path / "photos")
    before = snapshot(tmp_path / "photos")
    with caplog.at_level(logging.WARNING):
        predict(compose_cfg("predict", ["model=identity", f"input={tmp_path / 'photos'}", f"output={tmp_path / 'out'}",
                                        "metrics=no_reference"], out=tmp_path / "predict_run"))
    for name, (niqe_why, brisque_why) in corpus.items():
        assert f"{tmp_path / 'photos' / name}: niqe of the restored image is NaN: {niqe_why}" in caplog.text
        if brisque_why:
            assert f"{tmp_path / 'photos' / name}: brisque of the restored image is NaN: {brisque_why}" in caplog.text
    summary = json.loads((tmp_path / "predict_run" / "metrics.json").read_text())
    assert summary["metrics"]["test/niqe_photos"] is None  # a NaN mean is null, valid JSON
    with pytest.warns(UserWarning) as record:
        evaluate(compose_cfg("eval", ["model=identity", "data=folder", f"data.root={tmp_path / 'photos'}",
                                      "data.num_workers=0"], out=tmp_path / "eval_run"))
    (message,) = [str(w.message) for w in record if "non-finite metric values" in str(w.message)]
    assert message.startswith("non-finite metric values for 3 test image(s): black.png, grey.png, small.png; the "
                              "means they enter are written as null to metrics.json (why: "), message
    assert "NaN/Inf pixels" not in message
    assert f"black.png: niqe NaN as {corpus['black.png'][0]}, brisque NaN as {corpus['black.png'][1]}" in message
    assert f"grey.png: niqe/brisque NaN as {corpus['grey.png'][0]}" in message
    assert snapshot(tmp_path / "photos") == before


def test_animated_images_are_refused_naming_file_frames_and_fix(compose_cfg, tmp_path):
    from clipdehaze.data.io import ImageReadError, load_image

    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif, apng = tmp_path / "anim.gif", tmp_path / "anim.png"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(apng, save_all=True, append_images=frames[1:2])
    (tmp_path / "run").mkdir()
    for path, fmt, n in ((gif, "GIF", 3), (apng, "PNG", 2)):
        with pytest.raises(ImageReadError, match=rf"^cannot read image {path}: an animated or multi-page {fmt} of {n} "
                                                 rf"frames, and only single images are read; save each frame as its "
                                                 rf"own image \(e\.g\. ffmpeg -i {path.name} frame_%04d\.png\)"):
            load_image(path)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit, match=rf"1 of 1 input\(s\) unreadable or not restorable .*{gif}; 0 written"):
        predict(compose_cfg("predict", ["model=identity", f"input={gif}", f"output={tmp_path / 'out'}"]))
    assert {k: v for k, v in snapshot(tmp_path).items() if k != str(tmp_path / "out")} == before
    assert not any((tmp_path / "out").iterdir())
    # One frame is an image; a JPEG's extra MPO picture (a phone's preview) is not a frame of the photo.
    frames[0].save(tmp_path / "still.gif")
    frames[0].save(tmp_path / "phone.mpo", format="MPO", save_all=True, append_images=frames[1:2])
    assert load_image(tmp_path / "still.gif").shape == (3, 30, 40)
    assert load_image(tmp_path / "phone.mpo")[0].mean() > 0.9  # the first (red) picture
