"""End to end through the real configs: fit, checkpoint, test, eval round-trip, predict."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from clipdehaze.evaluate import evaluate
from clipdehaze.models import create_generator, list_generators
from clipdehaze.predict import predict
from clipdehaze.train import objective, train

TEST_VARIANTS = [n for n in list_generators() if n.endswith("_test")]


def _needs_clip(name: str) -> bool:
    return bool(getattr(create_generator(name), "clip_inputs", ()))


def _data_overrides(root: Path) -> list[str]:
    return [f"data=paired", f"data.root={root}", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
            "data.name=tiny"]


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_fast_dev_run_every_test_variant(name, compose_cfg, tiny_paired_root):
    overrides = [f"model={name}", "debug=fast_dev_run", *_data_overrides(tiny_paired_root)]
    if _needs_clip(name):
        overrides.append("clip=tiny_random")
    cfg = compose_cfg("train", overrides)
    summary = train(cfg)
    assert torch.isfinite(torch.tensor(summary["metrics"]["train/loss"]))
    assert "test/psnr_tiny" in summary["metrics"]


@pytest.mark.slow
def test_train_then_eval_reproduces_test_metrics(trained_tiny_run, compose_cfg, tiny_paired_root, tmp_path):
    run, summary = trained_tiny_run   # dehazeformer_test, debug=quick, 2 epochs, on tiny_paired_root
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["generator"] == "dehazeformer_test"
    assert "DehazeFormer protocol" in saved["metric_protocol"]
    assert (run / "per_image.csv").read_text().count("\n") == 3  # header + 2 test images

    # The checkpoint holds only tensors and plain types.
    ckpt = torch.load(last, weights_only=True)
    assert not any(k.startswith("clip_prior") for k in ckpt["state_dict"])

    # The sweep objective is the best monitored score (the checkpoint kept and tested), not the last epoch's.
    assert summary["monitor"] == "val/psnr"
    assert objective(summary, "val/psnr") == summary["best_model_score"]
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert summary["best_model_score"] == state["best_model_score"].item()

    # Evaluating the checkpoint the training run tested reproduces its test metrics exactly.
    ev = tmp_path / "eval_run"
    ecfg = compose_cfg("eval", [f"ckpt_path={summary['best_ckpt']}", *_data_overrides(tiny_paired_root)], out=ev)
    result = evaluate(ecfg)
    assert (ev / "metrics.json").is_file() and (ev / "per_image.csv").is_file() and (ev / "grid.png").is_file()
    for key in ("test/psnr_tiny", "test/ssim_tiny"):
        assert result["metrics"][key] == summary["metrics"][key], key
    assert (ev / "per_image.csv").read_text() == (run / "per_image.csv").read_text()


def test_objective_is_best_monitored_score_not_last():
    summary = {"monitor": "val/psnr", "best_model_score": 21.5, "metrics": {"val/psnr": 19.0, "val/ssim": 0.7}}
    assert objective(summary, "val/psnr") == 21.5
    assert objective(summary, "val/ssim") == 0.7  # not monitored: as last logged
    assert objective({**summary, "best_model_score": None}, "val/psnr") == 19.0
    assert objective(summary, None) is None


def _sar_batch():
    torch.manual_seed(0)
    return {"input": torch.rand(2, 3, 32, 32), "target": torch.rand(2, 3, 32, 32), "name": ["a.png", "b.png"],
            "index": torch.tensor([0, 1])}


def _spy_aux(module) -> list:
    calls, original = [], module.generator.auxiliary_losses

    def spy(*args, **kwargs):
        calls.append(terms := original(*args, **kwargs))
        return terms

    module.generator.auxiliary_losses = spy
    return calls


def test_srd_without_loss_weight_is_off_and_warned(compose_cfg):
    """model=sar_weather_* with a loss that does not weight SRD: SRD is not silently added at weight 1."""
    from clipdehaze.build import build_module

    module = build_module(compose_cfg("train", ["model=sar_weather_test", "loss=l1", "clip=tiny_random"]))
    calls = _spy_aux(module)
    batch = _sar_batch()
    loss = module.training_step(batch, 0)
    assert calls == []
    module.eval()
    torch.testing.assert_close(loss, (module(batch["input"], batch) - batch["target"]).abs().mean())
    with pytest.warns(UserWarning, match=r"auxiliary loss term\(s\) \['srd'\].*weight \['none'\]"):
        module.on_fit_start()


def test_srd_weight_zero_needs_no_clip(compose_cfg):
    """loss.srd_weight=0 with a CWP-free model: no CLIP is built and training runs (no misleading ValueError)."""
    from clipdehaze.build import build_module

    module = build_module(compose_cfg("train", ["model=sar_weather_test", "model.cwp=false", "loss=sar_weather",
                                                "loss.srd_weight=0", "clip=tiny_random"]))
    assert module.clip_prior is None
    calls = _spy_aux(module)
    assert torch.isfinite(module.training_step(_sar_batch(), 0)) and calls == []
    with pytest.warns(UserWarning, match=r"\['srd'\].*weight \[0\.0\]"):
        module.on_fit_start()


def test_srd_added_with_its_loss_weight(compose_cfg):
    from clipdehaze.build import build_module

    module = build_module(compose_cfg("train", ["model=sar_weather_test", "loss=sar_weather", "loss.srd_weight=0.25",
                                                "clip=tiny_random"]))
    calls = _spy_aux(module)
    loss = module.training_step(_sar_batch(), 0)
    assert len(calls) == 1
    torch.testing.assert_close(loss, module.loss_fn.last_terms["recon"] + 0.25 * calls[0]["srd"])


def test_predict_refuses_inputs_sharing_a_stem(compose_cfg, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (16, 16)).save(src / "a.jpg")
    Image.new("RGB", (16, 16)).save(src / "a.png")
    Image.new("RGB", (16, 16)).save(src / "b.png")
    out = tmp_path / "out"
    cfg = compose_cfg("predict", ["model=dcp", f"input={src}", f"output={out}"])
    with pytest.raises(ValueError, match=r"a\.jpg and .*a\.png would both be written to .*out/a\.png"):
        predict(cfg)
    assert not out.exists()  # refused before anything was written


def test_eval_dcp_without_checkpoint(compose_cfg, tiny_paired_root, tmp_path):
    cfg = compose_cfg("eval", ["model=dcp", *_data_overrides(tiny_paired_root)], out=tmp_path / "dcp")
    result = evaluate(cfg)
    assert result["params"] == 0
    assert result["metrics"]["test/psnr_tiny"] > 5


def test_eval_refuses_untrained_generator(compose_cfg, tiny_paired_root):
    cfg = compose_cfg("eval", ["model=dehazeformer_test", *_data_overrides(tiny_paired_root)])
    with pytest.raises(ValueError, match="no weights were given"):
        evaluate(cfg)


def test_train_refuses_parameter_free_model(compose_cfg, tiny_paired_root):
    cfg = compose_cfg("train", ["model=dcp", "debug=fast_dev_run", *_data_overrides(tiny_paired_root)])
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(cfg)


def test_predict_odd_size_tiled(compose_cfg, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (97, 61), (120, 140, 160)).save(src / "odd.jpg")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(src / "dot.png")
    out = tmp_path / "out"
    cfg = compose_cfg("predict", ["model=dcp", f"input={src}", f"output={out}", "tile=32", "overlap=8"])
    written = predict(cfg)
    assert sorted(p.name for p in written) == ["dot.png", "odd.png"]
    assert Image.open(out / "odd.png").size == (97, 61)
    assert Image.open(out / "dot.png").size == (1, 1)


def test_predict_refuses_output_equal_to_input(compose_cfg, tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    cfg = compose_cfg("predict", ["model=dcp", f"input={tmp_path}", f"output={tmp_path}"])
    with pytest.raises(ValueError, match="is the input folder"):
        predict(cfg)
    assert (tmp_path / "a.png").is_file()


@pytest.mark.slow
def test_metrics_json_records_provenance_and_eval_scores_the_training_data(trained_tiny_run, compose_cfg,
                                                                         tiny_paired_root, tmp_path, caplog):
    """metrics.json says what was scored (image count, manifest), with which weights (file + sha256), code, software
    and config; clipdehaze-eval of a checkpoint without data= scores the data it was trained on and says so."""
    import copy
    import hashlib
    import re

    import torch as _torch

    from clipdehaze import provenance

    run, _ = trained_tiny_run   # dehazeformer_test, debug=quick, seed 5, on tiny_paired_root
    saved = json.loads((run / "metrics.json").read_text())
    test_files = sorted((tiny_paired_root / "test").rglob("*.png"))
    manifest = hashlib.sha256(json.dumps(sorted(
        [p.relative_to(tiny_paired_root).as_posix(), p.stat().st_size] for p in test_files)).encode()).hexdigest()
    train_files = sorted((tiny_paired_root / "train").rglob("*.png"))
    train_manifest = hashlib.sha256(json.dumps(sorted(
        [p.relative_to(tiny_paired_root).as_posix(), p.stat().st_size] for p in train_files)).encode()).hexdigest()
    assert saved["images"] == 2 and saved["dataset"] == {
        "name": "tiny", "images": 2, "available": 2, "subset": False, "manifest_sha256": manifest,
        "train_manifest_sha256": train_manifest, "train_images": 6}
    best = Path(saved["best_ckpt"])
    assert saved["weights"] == {"origin": "trained", "path": str(best.resolve()),
                                "sha256": hashlib.sha256(best.read_bytes()).hexdigest(), "ema": None}
    assert re.fullmatch(r"[0-9a-f]{40}", saved["code"]["git_commit"]) and isinstance(saved["code"]["git_dirty"], bool)
    assert saved["environment"]["torch"] == _torch.__version__ and saved["environment"]["device"] == "cpu"
    assert saved["config"]["model"]["name"] == "dehazeformer_test"
    # config_sha256 ignores where the run happened (another output dir, data folder, worker count: the same hash)
    # and nothing it computed (another learning rate or seed: another hash).
    moved = copy.deepcopy(saved["config"])
    moved["paths"]["output_dir"], moved["data"]["root"], moved["data"]["num_workers"] = "/elsewhere", "/data", 7
    moved["callbacks"]["model_checkpoint"]["dirpath"] = "/elsewhere/checkpoints"
    assert saved["config_sha256"] == provenance.config_sha256(moved)
    for key, value in (("optimizer", {**saved["config"]["optimizer"], "lr": 1.0}), ("seed", 6)):
        assert saved["config_sha256"] != provenance.config_sha256({**saved["config"], key: value}), key
    assert saved["clip"] is None

    ev = tmp_path / "eval_run"
    with caplog.at_level("INFO"):  # the stored data root is read where this run's own config puts its data
        result = evaluate(compose_cfg("eval", [f"ckpt_path={best}", f"paths.data_dir={tiny_paired_root.parent}"],
                                      out=ev))
    assert "scoring the checkpoint's training data 'tiny'" in caplog.text
    assert result["data"] == "tiny" and result["dataset"]["manifest_sha256"] == manifest
    assert result["metrics"]["test/psnr_tiny"] == saved["metrics"]["test/psnr_tiny"]
    assert result["seed"] == 5 and result["train_config"]["seed"] == 5  # the table averages over training seeds
    assert result["weights"]["origin"] == "checkpoint" and result["weights"]["sha256"] == saved["weights"]["sha256"]

    # Another data set is allowed, and the difference is printed.
    other = tmp_path / "other"
    from conftest import make_paired_folder

    make_paired_folder(other, {"test": [(40, 40)]}, seed=3)
    caplog.clear()
    with caplog.at_level("INFO"):
        result = evaluate(compose_cfg("eval", [f"ckpt_path={best}", "data=paired", f"data.root={other}",
                                               "data.num_workers=0"], out=tmp_path / "eval_other"))
    assert result["images"] == 1 and f"scoring data 'paired' at {other}" in caplog.text
    assert f"trained on data 'tiny' at {tiny_paired_root}" in caplog.text


def test_eval_without_data_refuses_a_checkpoint_that_records_none(compose_cfg, tmp_path):
    """An older checkpoint (no training config) or a model= without checkpoint: the error names the file/model and
    says to pass data=; a stored data config naming a foreign _target_ is never built."""
    from clipdehaze.lit_module import RUN_CONFIG_KEY, DehazeLitModule

    module = DehazeLitModule(generator={"name": "dehazeformer_test"})
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(ValueError, match=r"old\.ckpt records no training data config.*pass data=<name>"):
        evaluate(compose_cfg("eval", [f"ckpt_path={old}"]))
    with pytest.raises(ValueError, match="model=dcp has no training run; pass data=<name>"):
        evaluate(compose_cfg("eval", ["model=dcp"]))

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({**ckpt, RUN_CONFIG_KEY: {"seed": 0, "data": {"_target_": "pathlib.Path.touch", "self": str(marker)}}},
               evil)
    with pytest.raises(ValueError, match=r"evil\.ckpt: refusing to build 'pathlib.Path.touch' named at "
                                         r"clipdehaze_run_config\.data\._target_.*Pass data=<name>"):
        evaluate(compose_cfg("eval", [f"ckpt_path={evil}"]))
    assert not marker.exists()


@pytest.mark.slow
def test_eval_weights_provenance_external_published_and_random(compose_cfg, tiny_paired_root, tmp_path, monkeypatch):
    """A weights file is "published" only when its sha256 is a release a recipe table lists; any other file is
    "external" with its hash."""
    import hashlib

    from clipdehaze.models import create_generator
    from clipdehaze.reproduce import recipes

    weights = tmp_path / "dehazeformer-test.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in create_generator("dehazeformer_test").state_dict().items()}},
               weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    result = evaluate(compose_cfg("eval", ["model=dehazeformer_test", f"weights_path={weights}",
                                           *_data_overrides(tiny_paired_root)], out=tmp_path / "ext"))
    assert result["weights"] == {"origin": "external", "path": str(weights.resolve()), "sha256": sha}
    paper = recipes.papers()["dehazeformer"]
    release = {"file": "dehazeformer-test.pth", "sha256": sha, "source": "https://example.org/release"}
    monkeypatch.setitem(recipes.papers(), "dehazeformer", dataclasses.replace(paper, releases=(release,)))
    result = evaluate(compose_cfg("eval", ["model=dehazeformer_test", f"weights_path={weights}",
                                           *_data_overrides(tiny_paired_root)], out=tmp_path / "pub"))
    assert result["weights"] == {"origin": "published", "path": str(weights.resolve()), "sha256": sha,
                                 "release": {"paper": "dehazeformer", **release}}
    result = evaluate(compose_cfg("eval", ["model=dehazeformer_test", "allow_random_weights=true",
                                           *_data_overrides(tiny_paired_root)], out=tmp_path / "rand"))
    assert result["weights"] == {"origin": "random"}
    result = evaluate(compose_cfg("eval", ["model=dcp", *_data_overrides(tiny_paired_root)], out=tmp_path / "dcp"))
    assert result["weights"] == {"origin": "none"}


def test_trainer_gpu_without_a_gpu_says_which_option(compose_cfg):
    from clipdehaze.build import build_trainer

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for trainer in ("gpu", "ddp"):
        cfg = compose_cfg("train", [f"trainer={trainer}", "trainer.accelerator=gpu"])
        with pytest.raises(RuntimeError, match="trainer.accelerator=gpu .* needs a CUDA GPU.*use trainer=cpu"):
            build_trainer(cfg)
