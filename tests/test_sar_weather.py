"""SAR weather net: variants, CWP / SRD switches, the SRD loss, training-only distillation through the LitModule,
its loss and model/experiment configs, and the weather data configs on tiny fake layouts."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from clipdehaze.losses.sar import SARWeatherLoss
from clipdehaze.models import create_generator, list_generators
from clipdehaze.models.clip import FrozenCLIP
from clipdehaze.models.generators.sar_weather import (
    CLIPWeatherPrior,
    SARWeatherNet,
    sar_weather_test,
    soft_residual_distillation,
)
from clipdehaze.build import build_module

CONF = Path(__file__).resolve().parents[1] / "conf"
VARIANTS = ["sar_weather_t", "sar_weather_s", "sar_weather_b", "sar_weather_test"]
# DehazeFormer-S / -B / -M (1.28 M / 2.51 M / 4.63 M): the sizes the -T / -S / -B variants are matched to.
PARAM_RANGES = {"sar_weather_t": (1.15e6, 1.45e6), "sar_weather_s": (2.25e6, 2.75e6),
                "sar_weather_b": (4.2e6, 5.1e6), "sar_weather_test": (1e3, 1e5)}


def _embedding(batch: int = 1, dim: int = 512) -> torch.Tensor:
    return F.normalize(torch.randn(batch, dim), dim=-1)




@pytest.fixture(scope="module")
def tiny_clip() -> FrozenCLIP:
    return FrozenCLIP("clipdehaze_tiny", warn_random=False)


# ---------------------------------------------------------------------------------------------------- the network


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_forward_backward_odd_size(name):
    torch.manual_seed(0)
    model = create_generator(name)
    assert name in list_generators() and model.clip_inputs == ("image_embedding",)
    x = torch.rand(1, 3, 37, 53, requires_grad=True)
    y = model(x, image_embedding=_embedding())
    assert y.shape == x.shape and torch.isfinite(y).all()
    # The tail starts at zero: an untrained net is the identity, and the first gradients reach the tail.
    torch.testing.assert_close(y, x)
    y.square().mean().backward()
    assert model.tail.weight.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts_match_dehazeformer_sizes(name):
    with torch.device("meta"):
        model = create_generator(name, clip_dim=512)
    lo, hi = PARAM_RANGES[name]
    assert lo <= sum(p.numel() for p in model.parameters()) <= hi


def test_trained_weights_change_output_on_tiny_and_odd_inputs():
    torch.manual_seed(0)
    model = sar_weather_test()
    for p in model.parameters():  # perturb every weight so every path (gates, attention, tail) is live
        p.data.add_(0.05 * torch.randn_like(p))
    for shape in [(2, 3, 37, 53), (1, 3, 3, 5), (1, 3, 64, 64)]:
        x = torch.rand(*shape)
        y = model(x, image_embedding=_embedding(shape[0]))
        assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(y, x)


def test_cwp_switch_changes_clip_inputs_and_uses_the_embedding():
    torch.manual_seed(0)
    with_cwp, without = sar_weather_test(cwp=True), sar_weather_test(cwp=False)
    assert with_cwp.clip_inputs == ("image_embedding",) and without.clip_inputs == ()
    assert not any(n.startswith(("prior.", "inject.")) for n, _ in without.named_parameters())
    x = torch.rand(1, 3, 32, 40)
    assert without(x).shape == x.shape
    with pytest.raises(ValueError, match="needs image_embedding"):
        with_cwp(x)
    with pytest.raises(TypeError, match="unexpected"):
        with_cwp(x, image_embedding=_embedding(), text_feature=torch.zeros(1, 1, 512))
    with pytest.raises(ValueError, match="clip_dim"):
        with_cwp(x, image_embedding=_embedding(dim=64))
    # Once the zero-initialised projections and tail are trained, the output follows the embedding.
    for p in [*with_cwp.inject.parameters(), *with_cwp.tail.parameters()]:
        p.data.add_(0.1 * torch.randn_like(p))
    e1, e2 = _embedding(), _embedding()
    assert not torch.allclose(with_cwp(x, image_embedding=e1), with_cwp(x, image_embedding=e2))


def test_weather_prior_weights_are_a_distribution_over_prototypes():
    prior = CLIPWeatherPrior(clip_dim=16, prior_dim=8, num_prototypes=5, num_tokens=3)
    e = _embedding(4, 16)
    w = prior.weights(e)
    assert w.shape == (4, 5) and torch.allclose(w.sum(-1), torch.ones(4)) and (w >= 0).all()
    # An embedding equal to a prototype key puts the most weight on that prototype.
    assert prior.weights(prior.prototype_keys[2:3].detach()).argmax().item() == 2
    assert prior(e).shape == (4, 3, 8)


# ------------------------------------------------------------------------------------------------------ CLIP-SRD


def test_soft_residual_distillation_weights_and_targets():
    torch.manual_seed(0)
    zero = torch.zeros(2, 8, 3, 4)
    # No residual (clean input): zero target, uniform weights, so the loss is the plain squared norm.
    pred = torch.randn(2, 8, 3, 4)
    torch.testing.assert_close(soft_residual_distillation(pred, zero), pred.square().sum(1).mean())
    residual = torch.randn(2, 8, 3, 4)
    target = residual / residual.norm(dim=1).square().mean().sqrt()
    assert soft_residual_distillation(target, residual).item() == pytest.approx(0.0, abs=1e-6)
    # The target has unit mean energy: predicting "nothing changed" costs about 1 (weights aside).
    assert soft_residual_distillation(zero, residual, temperature=1e6).item() == pytest.approx(1.0, rel=1e-4)
    # A mistake where the weather changed CLIP's features most costs more than the same mistake where it did not.
    residual = torch.full((1, 8, 2, 2), 0.01)
    residual[..., 0, 0] = 1.0
    target = residual / residual.norm(dim=1).square().mean().sqrt()
    err = torch.zeros_like(residual)
    err[:, 0, 0, 0] = 0.5
    big = soft_residual_distillation(target + err, residual)
    small = soft_residual_distillation(target + err.roll(1, dims=-1), residual)
    assert big > small > 0
    # A higher temperature flattens the weights towards uniform.
    assert soft_residual_distillation(target + err, residual, temperature=100.0) < big
    with pytest.raises(ValueError, match="temperature"):
        soft_residual_distillation(target, residual, temperature=0)


def test_srd_term_only_with_srd_and_only_after_a_training_forward(tiny_clip):
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 37, 53), torch.rand(2, 3, 37, 53)
    model = sar_weather_test(clip_dim=64)
    out = model(x, image_embedding=_embedding(2, 64))
    terms = model.auxiliary_losses(x, y, out, tiny_clip)
    assert set(terms) == {"srd"} and terms["srd"].ndim == 0 and torch.isfinite(terms["srd"]) and terms["srd"] > 0
    terms["srd"].backward()
    # The head's last layer starts at zero ("nothing changed"): the first gradients reach it alone.
    assert model.srd_head.body[-1].weight.grad.abs().sum() > 0
    assert model.stem.weight.grad is None or model.stem.weight.grad.abs().sum() == 0
    model.zero_grad()
    model.srd_head.body[-1].weight.data.normal_(0, 0.02)
    out = model(x, image_embedding=_embedding(2, 64))
    model.auxiliary_losses(x, y, out, tiny_clip)["srd"].backward()
    assert model.enc2[0].branch[0].weight.grad.abs().sum() > 0  # distillation reaches the SAR encoder
    assert model.stem.weight.grad.abs().sum() > 0

    model.eval()  # inference never stashes features: the clean image is never needed
    with torch.no_grad():
        out = model(x, image_embedding=_embedding(2, 64))
    with pytest.raises(RuntimeError, match="training-mode forward"):
        model.auxiliary_losses(x, y, out, tiny_clip)

    no_srd = sar_weather_test(clip_dim=64, srd=False)
    assert no_srd.srd_head is None
    out = no_srd(x, image_embedding=_embedding(2, 64))
    assert no_srd.auxiliary_losses(x, y, out, tiny_clip) == {}

    model.train()
    out = model(x, image_embedding=_embedding(2, 64))
    with pytest.raises(ValueError, match="frozen CLIP prior"):
        model.auxiliary_losses(x, y, out, None)
    wrong_width = sar_weather_test(clip_dim=512, cwp=False)
    out = wrong_width(x)
    with pytest.raises(ValueError, match="clip_dim=512"):
        wrong_width.auxiliary_losses(x, y, out, tiny_clip)


def test_srd_for_identical_images_pulls_towards_no_change(tiny_clip):
    model = sar_weather_test(clip_dim=64, cwp=False)
    model.srd_head.body[-1].weight.data.normal_(0, 0.02)  # a trained head predicts something
    x = torch.rand(1, 3, 48, 48)
    out = model(x)
    feats = model._deep_features
    assert feats.shape == (1, 32, 12, 12)
    # x == target: zero residual, so the head is pulled towards "nothing changed" with uniform weights.
    srd = model.auxiliary_losses(x, x, out, tiny_clip)["srd"]
    pred = F.adaptive_avg_pool2d(model.srd_head(feats), (8, 8))  # the tiny CLIP's dense grid at 128 px
    assert srd > 0
    torch.testing.assert_close(srd, pred.square().sum(1).mean())


# --------------------------------------------------------------------------------------------------------- loss


def test_sar_weather_loss():
    out, target = torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4)
    l1 = SARWeatherLoss(recon="l1", srd_weight=0.2)
    assert l1(out, target).item() == pytest.approx(0.5)
    assert l1.aux_weights == {"srd": 0.2} and l1.needs_clip and set(l1.last_terms) == {"recon"}
    smooth = SARWeatherLoss(recon="smooth_l1", srd_weight=0.0)
    assert smooth(out, target).item() == pytest.approx(0.5 * 0.25) and not smooth.needs_clip
    with pytest.raises(ValueError, match="recon"):
        SARWeatherLoss(recon="l2")
    with pytest.raises(ValueError, match="srd_weight"):
        SARWeatherLoss(srd_weight=-1)


# ------------------------------------------------------------------------- training-only SRD through the LitModule


@pytest.mark.parametrize("cwp", [True, False])
def test_fit_calls_auxiliary_losses_only_in_training(cwp, compose_cfg, tiny_paired_root, tmp_path):
    cfg = compose_cfg("train", ["model=sar_weather_test", f"model.cwp={str(cwp).lower()}", "loss=sar_weather",
                                "clip=tiny_random", "metrics=basicsr_y"])
    module = build_module(cfg)
    assert isinstance(module.clip_prior, FrozenCLIP)  # built for SRD even without CWP (loss.needs_clip)
    assert module.generator.clip_inputs == (("image_embedding",) if cwp else ())
    gen = module.generator
    calls: list[bool] = []
    original = gen.auxiliary_losses

    def spy(*args, **kwargs):
        calls.append(gen.training)
        return original(*args, **kwargs)

    gen.auxiliary_losses = spy
    dm = instantiate(OmegaConf.create({"_target_": "clipdehaze.data.PairedDataModule", "root": str(tiny_paired_root),
                                       "crop_size": 32, "batch_size": 2, "num_workers": 0, "name": "tiny"}))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert calls == [True, True]  # once per training batch, never in validation
    assert torch.isfinite(trainer.callback_metrics["train/loss_srd"])
    assert "train/loss_recon" in trainer.callback_metrics
    trainer.test(module, datamodule=dm)
    assert calls == [True, True] and gen._deep_features is None


# ------------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("experiment", ["sar_allweather", "sar_haze"])
def test_experiments_compose_and_instantiate(experiment, compose_cfg):
    cfg = compose_cfg("train", [f"experiment={experiment}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_cfg["clip_dim"] == 512 and model_cfg["srd"] and model_cfg["cwp"]
    assert isinstance(create_generator(model_cfg.pop("name"), **model_cfg), SARWeatherNet)
    loss = instantiate(cfg.loss)
    assert isinstance(loss, SARWeatherLoss) and loss.aux_weights["srd"] > 0
    instantiate(cfg.data)
    assert cfg.metrics.protocol == ("basicsr" if experiment == "sar_allweather" else "dehazeformer")


def test_model_configs_follow_the_clip_width(compose_cfg):
    cfg = compose_cfg("train", ["model=sar_weather_t", "clip=tiny_random"])
    assert OmegaConf.to_container(cfg.model, resolve=True) == {
        "name": "sar_weather_t", "dims": [24, 48, 96], "enc_depths": [4, 4, 10], "dec_depths": [4, 4], "clip_dim": 64,
        "cwp": True, "srd": True}


def _png(path: Path, rng: np.random.Generator, size=(24, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _fake_layouts(base: Path) -> None:
    """Tiny fakes of the real releases' layouts under ``base`` (= paths.data_dir)."""
    rng = np.random.default_rng(0)
    # TransWeather: data/train/allweather.txt, data/test/{raindroptesta,test1}.txt; 'input' -> 'gt'.
    tw = base / "allweather"
    train_lines = []
    for sub, name in [("snow", "beautiful_smile_00001.jpg"), ("outdoor-rain", "im_0001_s80_a04.png"),
                      ("raindrop", "0_rain.png")]:
        for folder in ("input", "gt"):
            _png(tw / "train" / sub / folder / name, rng)
        train_lines.append(f"/{sub}/input/{name}")
    (tw / "train" / "allweather.txt").write_text("\n".join(train_lines) + "\n")
    for lst, sub, names in [("raindroptesta.txt", "raindrop", ["1_rain.png", "2_rain.png"]),
                            ("test1.txt", "test1", ["im_0301_s80_a04.png", "im_0302_s85_a05.png"])]:
        for name in names:
            for folder in ("input", "gt"):
                _png(tw / "test" / sub / folder / name, rng)
        (tw / "test" / lst).write_text("".join(f"{sub}/input/{n}\n" for n in names))
    # Snow100K test archive: test/Snow100K-{S,L}/{synthetic,gt,mask}/ with identical names.
    for level in ("S", "L"):
        for folder in ("synthetic", "gt", "mask"):
            for name in ("beautiful_smile_00003.jpg", "winter_street_00007.jpg"):
                _png(base / "Snow100K" / "test" / f"Snow100K-{level}" / folder / name, rng)
    # RainDrop: {train,test_a}/{data,gt}/N_rain.png <-> N_clean.png
    for split, ids in [("train", [0, 1]), ("test_a", [0, 5, 12])]:
        for i in ids:
            _png(base / "RainDrop" / split / "data" / f"{i}_rain.png", rng)
            _png(base / "RainDrop" / split / "gt" / f"{i}_clean.png", rng)
    for split in ("train", "test"):
        for i in (1, 2):
            _png(base / "Rain100H" / split / "rainy" / f"{i}.png", rng)
            _png(base / "Rain100H" / split / "GT" / f"{i}.png", rng)


# data config -> (stage, expected number of test pairs, expected number of train pairs or None)
LOADERS = {"allweather": (2, 3), "snow100k_s": (2, None), "snow100k_l": (2, None), "outdoor_rain": (2, None),
           "raindrop": (3, 2), "rain100h": (2, 2)}


@pytest.mark.slow
def test_weather_loader_configs_on_fake_layouts(compose_cfg, tmp_path):
    base = tmp_path / "data"
    _fake_layouts(base)
    for name, (n_test, n_train) in LOADERS.items():
        cfg = compose_cfg("train", [f"data={name}", f"paths.data_dir={base}", "data.num_workers=0",
                                    "data.crop_size=16"])
        dm = instantiate(cfg.data)
        dm.setup("test")
        assert len(dm.test_set) == n_test, name
        sample = dm.test_set[0]
        assert sample["input"].shape == sample["target"].shape == (3, 24, 32), name
        if n_train is not None:
            dm.setup("fit")
            assert len(dm.train_set) == n_train and dm.train_set[0]["input"].shape == (3, 16, 16), name
    # RainDrop pairs N_rain with N_clean (not just any file): check the names.
    cfg = compose_cfg("train", ["data=raindrop", f"paths.data_dir={base}"])
    dm = instantiate(cfg.data)
    dm.setup("test")
    assert [(i.name, t.name) for i, t in dm.test_set.pairs] == [
        ("0_rain.png", "0_clean.png"), ("12_rain.png", "12_clean.png"), ("5_rain.png", "5_clean.png")]


def test_outdoor_rain_native_names_pair_by_name(compose_cfg, tmp_path):
    """Outdoor-Rain Test1's native naming (im_0001_s80_a04.png -> im_0001.png) loads without a list file, and the
    rule strips only the rain parameters: other ids, identical names and RESIDE names pair as before."""
    from clipdehaze.data import match_pairs

    p = Path
    pairs, unpaired = match_pairs(
        [p("in/im_0001_s80_a04.png"), p("in/im_0002_s95_a06.png"), p("in/im_0003_s80_a04.png"),
         p("in/im_0004.png"), p("in/0007_0.8_0.2.jpg")],
        [p("gt/im_0001.png"), p("gt/im_0002.png"), p("gt/im_0004.png"), p("gt/0007.png"), p("gt/im_0003_s80.png")])
    assert [(i.name, t.name) for i, t in pairs] == [
        ("im_0001_s80_a04.png", "im_0001.png"), ("im_0002_s95_a06.png", "im_0002.png"),
        ("im_0004.png", "im_0004.png"), ("0007_0.8_0.2.jpg", "0007.png")]
    assert unpaired == [p("in/im_0003_s80_a04.png")]

    rng = np.random.default_rng(0)
    names = {"im_0001_s80_a04.png": "im_0001.png", "im_0002_s95_a06.png": "im_0002.png",
             "im_0010_s100_a10.png": "im_0010.png"}
    for inp, gt in names.items():
        _png(tmp_path / "Test1" / "test" / "in" / inp, rng)
        _png(tmp_path / "Test1" / "test" / "gt" / gt, rng)
    cfg = compose_cfg("train", ["data=outdoor_rain", f"data.root={tmp_path / 'Test1'}", "data.test_list=null",
                                "data.val_list=null", "data.test_split=test", "data.input_dir=in",
                                "data.target_dir=gt", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    dm.setup("test")
    assert [(i.name, t.name) for i, t in dm.test_set.pairs] == sorted(names.items())
    assert dm.test_set[0]["input"].shape == dm.test_set[0]["target"].shape == (3, 24, 32)
