"""Faults survived: kill/resume, SIGTERM, NaN losses, bad checkpoints, determinism, DDP metrics."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipdehaze.lit_module import DehazeLitModule, NonFiniteLossError
from clipdehaze.train import train
from clipdehaze.utils.checkpoint import CheckpointError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
       "OMP_NUM_THREADS": "1"}


def _data(root: Path) -> list[str]:
    return ["data=paired", f"data.root={root}", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
            "data.name=tiny"]


def _cli(module: str, overrides: list[str], run_dir: Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["metrics"]


TRAIN = ["model=dehazeformer_test", "trainer=cpu", "trainer.max_epochs=5", "trainer.deterministic=true",
         "logger=csv", "seed=3", "callbacks.rich_progress_bar=null"]


@pytest.mark.slow
def test_same_seed_bit_identical_metrics(compose_cfg, tiny_paired_root, tmp_path):
    results = []
    for i in range(2):
        cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=quick", "trainer.deterministic=true",
                                    "seed=7", *_data(tiny_paired_root)], out=tmp_path / f"r{i}")
        results.append(train(cfg)["metrics"])
    keys = [k for k in results[0] if k.startswith(("test/", "val/", "train/loss"))]
    assert keys and all(results[0][k] == results[1][k] for k in keys), (results[0], results[1])


@pytest.mark.slow
@pytest.mark.parametrize("ema", [[], ["ema.enabled=true", "ema.decay=0.9", "ema.start_step=2"]], ids=["plain", "ema"])
def test_sigkill_then_resume_equals_uninterrupted(tiny_paired_root, tmp_path, ema):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = _cli("clipdehaze.train", [*TRAIN, *ema, *_data(tiny_paired_root)], ref_dir)
    proc = _cli("clipdehaze.train", [*TRAIN, *ema, *_data(tiny_paired_root)], run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed: " + proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    torch.load(last, weights_only=True)  # atomic writes: whatever was on disk at the kill is a whole checkpoint
    _finish(_cli("clipdehaze.train", [*TRAIN, *ema, *_data(tiny_paired_root), "resume=auto"], run_dir))
    _finish(ref)
    a, b = _metrics(ref_dir), _metrics(run_dir)
    for key in ("test/psnr_tiny", "test/ssim_tiny", "val/psnr", "val/ssim"):
        assert a[key] == b[key], (key, a[key], b[key])
    # The weights (EMA average and raw) and the averaging counters end exactly as without the kill.
    ref_ckpt, run_ckpt = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (ref_dir, run_dir))
    for key in ("state_dict", *(["current_model_state"] if ema else [])):
        assert ref_ckpt[key].keys() == run_ckpt[key].keys()
        assert all(torch.equal(ref_ckpt[key][k], run_ckpt[key][k]) for k in ref_ckpt[key]), key
    if ema:
        (state,) = [v for k, v in run_ckpt["callbacks"].items() if "GeneratorEMA" in k]
        assert state == next(v for k, v in ref_ckpt["callbacks"].items() if "GeneratorEMA" in k)
        assert state["updates"] == run_ckpt["global_step"] - 2


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_exits_cleanly(tiny_paired_root, tmp_path):
    run_dir = tmp_path / "term"
    overrides = [*TRAIN, "trainer.max_epochs=200", *_data(tiny_paired_root)]
    proc = _cli("clipdehaze.train", overrides, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    step_before = torch.load(last, weights_only=True)["global_step"]
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM received" in out
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] > step_before


class Evil:
    """An arbitrary object: a checkpoint holding one must not be unpickled."""


def _module() -> DehazeLitModule:
    return DehazeLitModule(generator={"name": "dehazeformer_test"})


def test_nonfinite_loss_names_step_and_files():
    m = _module()
    x = torch.rand(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    batch = {"input": x, "target": torch.rand(2, 3, 32, 32), "name": ["a.png", "b.png"], "index": torch.tensor([0, 1])}
    with pytest.raises(NonFiniteLossError, match=r"global step 0.*a\.png.*b\.png"):
        m.training_step(batch, 0)
    skip = DehazeLitModule(generator={"name": "dehazeformer_test"}, nonfinite_loss="skip")
    assert skip.training_step(batch, 0) is None


def test_nan_weights_never_checkpointed():
    m = _module()
    with torch.no_grad():
        next(m.generator.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="refusing to save"):
        m.on_save_checkpoint({})


def test_bad_checkpoints_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        DehazeLitModule.load_checkpoint(str(empty))
    torn = tmp_path / "torn.ckpt"
    good = tmp_path / "good.ckpt"
    m = _module()
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, good)
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{torn.name}.*corrupt or truncated"):
        DehazeLitModule.load_checkpoint(str(torn))
    with pytest.raises(ValueError, match="holds generator 'dehazeformer_test', but model='mixdehazenet_t'"):
        DehazeLitModule.load_checkpoint(str(good), expect_generator="mixdehazenet_t")

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        DehazeLitModule.load_checkpoint(str(evil))


def test_train_checks_resume_checkpoint_before_fitting(compose_cfg, tiny_paired_root, tmp_path):
    """ckpt_path= is read with the suite's loader before anything is built: a torn file or another generator's
    checkpoint is a clear error naming the file (and both generators), not Lightning's zip error or key list."""
    other = DehazeLitModule(generator={"name": "sar_weather_test", "clip_dim": 64, "cwp": False, "srd": False})
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}, foreign)
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(foreign.read_bytes()[: foreign.stat().st_size // 2])

    def run(ckpt: Path):
        cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=fast_dev_run", f"ckpt_path={ckpt}",
                                    *_data(tiny_paired_root)], out=tmp_path / "run")
        train(cfg)

    with pytest.raises(CheckpointError, match=r"torn\.ckpt: corrupt or truncated"):
        run(torn)
    with pytest.raises(ValueError, match=r"foreign\.ckpt: checkpoint holds generator 'sar_weather_test', "
                                         r"but model='dehazeformer_test'"):
        run(foreign)
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before the trainer started


def test_slurm_run_dir_named_from_job_id(monkeypatch):
    """A requeued SLURM job keeps its job id, so its run dir (and last.ckpt) is the same; elsewhere names are unique."""
    from clipdehaze.utils.hydra_utils import run_stamp

    for var in ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_STEP_ID",
                "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert run_stamp() != run_stamp()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert run_stamp() == run_stamp() == "slurm-4242"
    monkeypatch.setenv("SLURM_STEP_ID", "1")
    assert run_stamp() == "slurm-4242.1"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert run_stamp() == "slurm-4240_2.1"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # an salloc shell: not requeued, many runs per job
    assert run_stamp() != run_stamp()


def test_slurm_trainer_resumes_automatically(compose_cfg):
    cfg = compose_cfg("train", ["trainer=slurm"])
    assert cfg.resume == "auto" and cfg.trainer.strategy == "ddp"
    assert any(p.get("auto_requeue") for p in cfg.trainer.plugins)
    assert compose_cfg("train", ["trainer=cpu"]).resume is None


@pytest.mark.slow
def test_ddp_two_processes_metrics_equal_single_process(tmp_path):
    # 3 test images over 2 ranks: the DistributedSampler pads one duplicate, which de-duplication must drop.
    from conftest import make_paired_folder

    root = make_paired_folder(tmp_path / "data", {"train": [(64, 64)] * 4, "test": [(40, 52), (44, 36), (48, 48)]})
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false"]
    common = ["model=dehazeformer_test", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "~logger",
              "callbacks.rich_progress_bar=null", "seed=1", *_data(root)]
    train_dir = tmp_path / "ddp_train"
    _finish(_cli("clipdehaze.train", [*common, *ddp], train_dir), timeout=600)
    ddp_metrics = _metrics(train_dir)
    best = json.loads((train_dir / "metrics.json").read_text())["best_ckpt"]
    single_dir = tmp_path / "single_eval"
    _finish(_cli("clipdehaze.evaluate", [f"ckpt_path={best}", "trainer=cpu", *_data(root)], single_dir))
    single = _metrics(single_dir)
    for key in ("test/psnr_tiny", "test/ssim_tiny"):
        assert ddp_metrics[key] == pytest.approx(single[key], abs=1e-9), key
    # The DDP run's own per-image file: rank 0 writes rows scored on both ranks, each named, none duplicated.
    import csv

    with open(train_dir / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == ["0000.png", "0001.png", "0002.png"]
    with open(single_dir / "per_image.csv", newline="") as f:
        single_rows = {r["name"]: r for r in csv.DictReader(f)}
    for r in rows:
        assert float(r["psnr"]) == pytest.approx(float(single_rows[r["name"]]["psnr"]), abs=1e-9), r["name"]


def test_interrupted_checkpoint_save_keeps_the_previous_file(tmp_path, monkeypatch):
    from clipdehaze.utils.checkpoint import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    before = path.read_bytes()

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the partial temp file is gone
    assert torch.load(path, weights_only=True)["step"] == 1


def test_official_weights_wrapper_loads_strict_and_a_foreign_file_is_named(tmp_path):
    """Upstream repos save ``{"state_dict": DataParallel(model).state_dict()}``: it loads strict=True; weights of
    another architecture are refused naming the file and the generator."""
    from clipdehaze.models import create_generator
    from clipdehaze.utils.checkpoint import load_generator_weights

    torch.manual_seed(0)
    official = create_generator("dehazeformer_test")
    path = tmp_path / "dehazeformer-test.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.state_dict().items()}}, path)
    torch.manual_seed(1)
    model = create_generator("dehazeformer_test")
    load_generator_weights(model, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), official.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"dehazeformer-test\.pth: weights do not match generator"):
        load_generator_weights(create_generator("mixdehazenet_test"), path)


def _ema_module(decay=0.5, start_step=1):
    from clipdehaze.callbacks import GeneratorEMA

    return GeneratorEMA(decay=decay, start_step=start_step), DehazeLitModule(generator={"name": "dehazeformer_test"})


class _Trainer:
    global_step = 0


def test_ema_update_rule_start_step_and_swap():
    ema, module = _ema_module(decay=0.5, start_step=1)
    ema.setup(None, module, "fit")
    params = dict(module.generator.named_parameters())
    name = next(iter(params))
    trainer, history = _Trainer(), []
    with torch.no_grad():
        for step, value in enumerate((1.0, 2.0, 4.0, 8.0), start=1):
            params[name].fill_(value)
            trainer.global_step = step
            ema.on_train_batch_end(trainer, module, None, None, 0)
            history.append(ema.ema[name].flatten()[0].item())
        ema.on_train_batch_end(trainer, module, None, None, 0)   # no new optimiser step: no update
    # step 1 <= start_step: a copy; then ema = 0.5 ema + 0.5 w at steps 2, 3, 4
    assert history == [1.0, 1.5, 2.75, 5.375] and ema.updates == 3
    ema.on_validation_epoch_start(trainer, module)
    assert params[name].flatten()[0].item() == 5.375 and ema.ema[name].flatten()[0].item() == 8.0
    ema.on_validation_epoch_end(trainer, module)
    assert params[name].flatten()[0].item() == 8.0
    with pytest.raises(ValueError, match="ema.decay"):
        _ema_module(decay=1.0)


def test_ema_checkpoint_keeps_both_and_eval_picks_the_average(compose_cfg, tiny_paired_root, tmp_path):
    from clipdehaze.callbacks import RAW_STATE_KEY

    cfg = compose_cfg("train", ["model=dehazeformer_test", "debug=quick", "trainer.max_epochs=1", "ema.enabled=true",
                                "ema.decay=0.9", *_data(tiny_paired_root)], out=tmp_path / "run")
    summary = train(cfg)
    assert summary["weights"]["ema"] is True and summary["config"]["ema"]["decay"] == 0.9
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    key = "generator.patch_embed.proj.weight"
    assert not torch.equal(ckpt["state_dict"][key], ckpt[RAW_STATE_KEY][key])
    assert set(ckpt["state_dict"]) == set(ckpt[RAW_STATE_KEY])
    averaged = DehazeLitModule.load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    raw = DehazeLitModule.load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"), use_ema=False)
    assert averaged.ema_weights is True and raw.ema_weights is False
    assert torch.equal(averaged.state_dict()[key], ckpt["state_dict"][key])
    assert torch.equal(raw.state_dict()[key], ckpt[RAW_STATE_KEY][key])
