"""Evaluation builds only what it uses (the generator and the CLIP prior it takes, as BasicSR's test path builds
``net_g`` only), and says what it is doing outside a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from clipdehaze.build import build_module
from clipdehaze.evaluate import evaluate
from clipdehaze.lit_module import DehazeLitModule
from clipdehaze.predict import predict
from clipdehaze.utils.progress import ProgressLog
from conftest import make_paired_folder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
BOGUS_WEIGHTS = "/nonexistent/resnet152-f82ba261.pth"


def _data(root: Path) -> list[str]:
    return ["data=paired", f"data.root={root}", "data.num_workers=0", "data.name=tiny"]


class _Built(RuntimeError):
    """Raised by the patched constructors: the test failed if anything raises it."""


@pytest.fixture
def cr_checkpoint(compose_cfg, tmp_path) -> Path:
    """A MixCLDehazeNet checkpoint whose hparams hold the CR loss (ResNet-152) with ``download: true`` and a weights
    path that does not exist: building that loss here would fail offline (or download ~230 MB online)."""
    cfg = compose_cfg("train", ["model=mixcldehazenet_test", "clip=tiny_random", "loss=l1"], out=tmp_path / "made")
    torch.manual_seed(0)
    module = build_module(cfg)
    hp = dict(module.hparams)
    loss = OmegaConf.to_container(compose_cfg("train", ["loss=l1_cr"], out=tmp_path / "made").loss, resolve=True)
    hp["loss"] = {**loss, "download": True, "weights_path": BOGUS_WEIGHTS}
    assert hp["loss"]["_target_"] == "clipdehaze.losses.L1WithCR"
    path = tmp_path / "cr.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hp, "global_step": 3}, path)
    return path


@pytest.fixture
def nothing_but_the_network(monkeypatch):
    """Every way to build the loss, its backbone, the optimizer or fetch weights raises :class:`_Built`."""
    import torchvision

    from clipdehaze import losses
    from clipdehaze.losses import contrastive

    def refuse(what):
        def fail(*args, **kwargs):
            raise _Built(f"evaluation built {what}")
        return fail

    monkeypatch.setattr(losses.L1WithCR, "__init__", refuse("the CR loss"))
    monkeypatch.setattr(contrastive.ContrastiveRegularization, "__init__", refuse("the CR backbone"))
    monkeypatch.setattr(losses.L1Loss, "__init__", refuse("the L1 loss"))
    monkeypatch.setattr(torchvision.models, "get_model", refuse("a torchvision model"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse("a download"))
    monkeypatch.setattr(DehazeLitModule, "configure_optimizers", refuse("the optimizer"))


@pytest.mark.slow
def test_eval_of_a_cr_checkpoint_builds_no_loss(cr_checkpoint, nothing_but_the_network, compose_cfg,
                                                tiny_paired_root, tmp_path):
    cfg = compose_cfg("eval", [f"ckpt_path={cr_checkpoint}", "clip=tiny_random", *_data(tiny_paired_root)],
                      out=tmp_path / "eval")
    summary = evaluate(cfg)
    assert summary["images"] == 2 and summary["generator"] == "mixcldehazenet_test"
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # The stored hparams are kept as they were, for the record.
    assert metrics["weights"]["origin"] == "checkpoint"
    module = DehazeLitModule.load_checkpoint(str(cr_checkpoint), clip=cfg_clip(compose_cfg, tmp_path))
    assert module.loss_fn is None and module.hparams["loss"]["weights_path"] == BOGUS_WEIGHTS


def cfg_clip(compose_cfg, tmp_path) -> dict:
    return OmegaConf.to_container(compose_cfg("eval", ["clip=tiny_random"], out=tmp_path / "c").clip, resolve=True)


def test_predict_of_a_cr_checkpoint_builds_no_loss(cr_checkpoint, nothing_but_the_network, compose_cfg, tmp_path):
    make_paired_folder(tmp_path / "src", {"test": [(40, 56)]})
    (tmp_path / "in").mkdir()
    next((tmp_path / "src" / "test" / "hazy").iterdir()).rename(tmp_path / "in" / "a.png")
    cfg = compose_cfg("predict", [f"ckpt_path={cr_checkpoint}", "clip=tiny_random", f"input={tmp_path / 'in'}",
                                  f"output={tmp_path / 'out'}"], out=tmp_path / "pred")
    assert [p.name for p in predict(cfg)] == ["a.png"]


@pytest.mark.slow
def test_training_still_builds_the_loss(cr_checkpoint, compose_cfg, tiny_paired_root, tmp_path):
    """The negative: the same loss config, built for training (fresh or resumed), is constructed and fails offline
    on the missing weights file, so the eval tests above would fail if eval built it."""
    overrides = ["model=mixcldehazenet_test", "clip=tiny_random", "loss=l1_cr", "loss.download=true",
                 f"loss.weights_path={BOGUS_WEIGHTS}", *_data(tiny_paired_root), "data.crop_size=32"]
    with pytest.raises(Exception, match="weights_path=.*does not exist"):
        build_module(compose_cfg("train", overrides, out=tmp_path / "fresh"))
    from clipdehaze.train import train

    cfg = compose_cfg("train", [*overrides, "debug=fast_dev_run", f"ckpt_path={cr_checkpoint}"], out=tmp_path / "res")
    with pytest.raises(Exception, match="weights_path=.*does not exist"):
        train(cfg)


def test_an_inference_module_refuses_to_fit(cr_checkpoint, compose_cfg, tmp_path):
    module = DehazeLitModule.load_checkpoint(str(cr_checkpoint), clip=cfg_clip(compose_cfg, tmp_path))
    with pytest.raises(RuntimeError, match="built for inference"):
        module.on_fit_start()


# ------------------------------------------------------------------------------------------------------------
# Progress lines


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _logged(total: int, seconds_per_item: float, **kw) -> list[int]:
    import logging

    clock, lines = _Clock(), []
    progress = ProgressLog(total, logging.getLogger("t"), clock=clock, **kw)
    for i in range(total):
        clock.t += seconds_per_item
        if progress.advance():
            lines.append(i + 1)
    return lines


def test_progress_rate_every_tenth_or_every_30_s():
    # Fast items: the first, each tenth of the total, the last.
    assert _logged(1000, 0.01) == [1, *range(100, 1001, 100)]
    # Slow items, tenths off: the first, then whenever 30 s passed since the last line (every 5th at 7 s), the last.
    assert _logged(50, 7.0, every_fraction=0) == [1, *range(6, 50, 5), 50]
    # every_s=0: every item (predict's per-image lines).
    assert _logged(7, 100.0, every_s=0) == list(range(1, 8))


def test_progress_line_has_count_elapsed_and_eta(caplog):
    import logging

    clock = _Clock()
    progress = ProgressLog(500, logging.getLogger("t"), prefix="test: ", clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        clock.t = 120.0
        progress.advance(40, "0040.png")
    # 40 images in 120 s: 3 s each, 460 left -> 1380 s = 23 min 00 s.
    assert caplog.messages == ["test: [40/500] 0040.png (120.0 s elapsed, ETA 23 min 00 s)"]


@pytest.mark.slow
def test_eval_logs_progress_outside_a_terminal(tmp_path):
    """clipdehaze-eval under nohup-like conditions (stdout a file, no TTY): progress lines with count and ETA."""
    make_paired_folder(tmp_path / "set", {"test": [(24, 32)] * 25})
    exe = Path(sys.executable).parent / "clipdehaze-eval"
    with open(tmp_path / "nohup.out", "w") as out:
        proc = subprocess.run([str(exe), "model=dcp", "data=paired", f"data.root={tmp_path / 'set'}",
                               "data.num_workers=0"], cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=300)
    text = (tmp_path / "nohup.out").read_text()
    assert proc.returncode == 0, text[-3000:]
    counts = [int(m) for m in re.findall(r"test: \[(\d+)/25\] \d{4}\.png \([\d.]+ s elapsed, ETA \d+ (?:s|min)", text)]
    # 25 images: the first, every tenth (round(2.5) = 2 images) and the last; never one line per image.
    assert counts == [1, *range(2, 25, 2), 25], text[-3000:]


def test_no_progress_lines_in_a_terminal(monkeypatch, compose_cfg, tiny_paired_root, tmp_path, caplog):
    import logging

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    cfg = compose_cfg("eval", ["model=dcp", *_data(tiny_paired_root)], out=tmp_path / "eval")
    with caplog.at_level(logging.INFO):
        evaluate(cfg)
    assert not [m for m in caplog.messages if m.startswith("test: [")]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    caplog.clear()
    cfg = compose_cfg("eval", ["model=dcp", *_data(tiny_paired_root)], out=tmp_path / "eval2")
    with caplog.at_level(logging.INFO):
        evaluate(cfg)
    assert [m.split(" (")[0] for m in caplog.messages if m.startswith("test: [")] == ["test: [1/2] 0000.png",
                                                                                      "test: [2/2] 0001.png"]
