"""Prior controls (clip_control / test_clip_control): the derangement, what each control serves, cached and live
serving identical, the settings a run and an evaluation resolve, the study arms, and the record in metrics.json."""

import json
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from clipdehaze.data import PairedDataModule
from clipdehaze.data.io import load_image
from clipdehaze.models.clip import ClipCache, FrozenCLIP
from clipdehaze.models.clip.control import (
    ControlledClipInputs,
    MemoryClipStore,
    PriorControl,
    derangement,
)
from clipdehaze.models.clip.density import crop_density

NAMES = ("text_feature", "image_embedding", "density_map")


@pytest.mark.parametrize("n", [2, 3, 5, 17, 100])
def test_derangement_is_a_permutation_without_fixed_points_reproducible_per_seed(n):
    for seed in range(20):
        perm = derangement(n, seed)
        assert sorted(perm) == list(range(n))
        assert all(p != i for i, p in enumerate(perm))
        assert derangement(n, seed) == perm
    if n > 3:
        assert len({tuple(derangement(n, s)) for s in range(20)}) > 1  # the seed matters


def test_derangement_of_fewer_than_two_images_is_refused():
    with pytest.raises(ValueError, match="at least 2 images"):
        derangement(1, 0)


@pytest.fixture(scope="module")
def prior():
    return FrozenCLIP(model_name="clipdehaze_tiny", warn_random=False)


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    from conftest import make_paired_folder

    root = tmp_path_factory.mktemp("controls")
    # Different sizes, so a donor's density map must be stretched to the receiver's size.
    return make_paired_folder(root, {"train": [(72, 88), (64, 64), (80, 72), (72, 96)], "test": [(45, 61), (50, 37),
                                                                                                  (40, 40)]})


def _samples(root, store, control: PriorControl, mode_stage: str = "fit") -> list[dict]:
    dm = PairedDataModule(str(root), crop_size=32, batch_size=2, num_workers=0, augment=["hflip", "vflip", "rot90"],
                          seed=3)
    dm.attach_clip_cache(store, NAMES, control=control)
    dm.setup(mode_stage)
    ds = dm.train_set if mode_stage == "fit" else dm.test_set
    if mode_stage == "fit":
        ds.set_rng_epoch(3, 0)  # crops and flips keyed to (seed, epoch, index): the same in both runs
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("control", ["shuffled", "constant", "zero"])
@pytest.mark.parametrize("stage", ["fit", "test"])
def test_cached_and_live_controls_give_identical_inputs(control, stage, prior, split_root, tmp_path):
    """clip_cache=true (disk) and clip_cache=false (memory) serve the same tensors to every crop, flip and rotation."""
    ctl = PriorControl(control, control, seed=7)
    disk = _samples(split_root, ClipCache(tmp_path / "clip", prior, NAMES, loader_fn=load_image), ctl, stage)
    memory = _samples(split_root, MemoryClipStore(prior, NAMES, loader_fn=load_image), ctl, stage)
    assert len(disk) == len(memory) > 1
    for a, b in zip(disk, memory):
        torch.testing.assert_close(a["input"], b["input"], rtol=0, atol=0)
        assert set(a["clip"]) == set(NAMES)
        for name in NAMES:
            torch.testing.assert_close(a["clip"][name], b["clip"][name], rtol=0, atol=0)
        assert a["clip"]["density_map"].shape[-2:] == a["input"].shape[-2:]


def test_real_prior_without_the_cache_stays_live_on_the_crop(prior, split_root):
    samples = _samples(split_root, MemoryClipStore(prior, NAMES, loader_fn=load_image), PriorControl("real", "shuffled"))
    assert all("clip" not in s for s in samples)  # the module computes them on each crop, as before


def test_each_control_serves_what_it_says(prior, split_root, tmp_path):
    store = ClipCache(tmp_path / "clip", prior, NAMES, loader_fn=load_image)
    paths = sorted((split_root / "test" / "hazy").glob("*.png"))
    store.build(paths)
    shuffled = ControlledClipInputs(store, paths, "shuffled", seed=1)
    constant = ControlledClipInputs(store, paths, "constant", seed=1)
    zero = ControlledClipInputs(store, paths, "zero", seed=1)
    entries = [store.entry_for(p) for p in paths]
    for i, p in enumerate(paths):
        own_hw = tuple(load_image(p).shape[-2:])
        donor = paths[derangement(len(paths), 1)[i]]
        assert shuffled.donor_of(p) == str(donor) and donor != p
        got = shuffled.sample_inputs(p, NAMES)
        d = store.entry_for(donor)
        torch.testing.assert_close(got["text_feature"], d["text_feature"])
        torch.testing.assert_close(got["image_embedding"], d["image_embedding"])
        d_hw = tuple(int(v) for v in d["image_hw"])
        torch.testing.assert_close(got["density_map"], crop_density(d["density_grid"], d_hw, (0, 0, *d_hw), own_hw))
        assert got["density_map"].shape[-2:] == own_hw

        c = constant.sample_inputs(p, NAMES)
        mean_emb = torch.stack([e["image_embedding"] for e in entries]).mean(0)
        torch.testing.assert_close(c["image_embedding"], mean_emb / mean_emb.norm())
        assert c["text_feature"].norm().item() == pytest.approx(1.0, abs=1e-5)
        assert c["density_map"].shape[-2:] == own_hw
        z = zero.sample_inputs(p, NAMES)
        assert all(float(v.abs().max()) == 0.0 for v in z.values())
    # constant: one value for every image (the density map up to its size)
    first, second = (constant.sample_inputs(p, NAMES) for p in paths[:2])
    torch.testing.assert_close(first["image_embedding"], second["image_embedding"])
    with pytest.raises(KeyError, match="not an image of the split"):
        shuffled.donor_of(split_root / "train" / "hazy" / "0000.png")


def test_controls_a_run_and_an_evaluation_resolve():
    assert PriorControl.from_config({"clip_control": "shuffled", "seed": 4}) == PriorControl("shuffled", "shuffled", 4)
    assert PriorControl.from_config({"clip_control": "real", "test_clip_control": "zero", "seed": 1}).record() == {
        "train": "real", "test": "zero"}
    trained = {"clip_control": "constant", "test_clip_control": None, "seed": 2}
    # An evaluation: the checkpoint's training control and seed; its own test control, else the training run's.
    assert PriorControl.from_config({"test_clip_control": None, "seed": 42}, trained) == PriorControl(
        "constant", "constant", 2)
    assert PriorControl.from_config({"test_clip_control": "shuffled", "seed": 42}, trained) == PriorControl(
        "constant", "shuffled", 2)
    # Weights trained elsewhere (no training config): they were trained with their real prior.
    assert PriorControl.from_config({"test_clip_control": "zero", "seed": 42}).record() == {"train": "real",
                                                                                              "test": "zero"}
    with pytest.raises(ValueError, match="test_clip_control='random' is not a prior control; choose one of real"):
        PriorControl.from_config({"clip_control": "real", "test_clip_control": "random"})
    with pytest.raises(ValueError, match="clip_control='noise' in the training config of /runs/x.ckpt is not a prior control"):
        PriorControl.from_config({"test_clip_control": None}, {"clip_control": "noise"}, "/runs/x.ckpt")


@pytest.mark.slow
def test_pipeline_serves_controlled_inputs_alike_with_and_without_the_cache(compose_cfg, split_root, tmp_path):
    """The composed run (clip_control=shuffled, model=cliphaze_test): the first training batch's CLIP inputs are the
    same with clip_cache=true and false, and differ from the real prior's."""
    from clipdehaze.build import attach_clip_cache, build_module

    def first_batch(*overrides):
        cfg = compose_cfg("train", ["model=cliphaze_test", "clip=tiny_random", "data=paired", f"data.root={split_root}",
                                    "data.crop_size=32", "data.batch_size=4", "data.num_workers=0", "seed=5",
                                    f"paths.cache_dir={tmp_path / 'cache'}", *overrides])
        dm = instantiate(cfg.data)
        module = build_module(cfg)
        attach_clip_cache(cfg, dm, module)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    cached = first_batch("clip_control=shuffled")
    live = first_batch("clip_control=shuffled", "clip_cache=false")
    real = first_batch("clip_control=real")
    assert set(cached["clip"]) == {"density_map", "image_embedding"}
    for name in cached["clip"]:
        torch.testing.assert_close(cached["clip"][name], live["clip"][name], rtol=0, atol=0)
    assert not torch.equal(cached["clip"]["image_embedding"], real["clip"]["image_embedding"])


def test_mixdehazenet_arm_is_mixdehazenet(compose_cfg):
    """arm=mixdehazenet (MixCLDehazeNet with fusion=none) builds MixDehazeNet: the same parameters, initial values
    and outputs, and no CLIP."""
    from clipdehaze.models import create_generator
    from clipdehaze.build import build_module

    cfg = compose_cfg("train", ["model=mixcldehazenet_test", "clip=tiny_random", "arm=mixdehazenet"])
    torch.manual_seed(0)
    module = build_module(cfg)
    torch.manual_seed(0)
    reference = create_generator("mixdehazenet_test")
    assert module.clip_prior is None
    ours, theirs = module.generator.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)
    x = torch.rand(1, 3, 40, 48)
    torch.testing.assert_close(module.generator.eval()(x), reference.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("arm,clip_inputs", [("real", True), ("shuffled", True), ("constant", True),
                                             ("zero", True), ("cliphaze_sum", False)])
def test_study_arms_compose(arm, clip_inputs, compose_cfg):
    from clipdehaze.models import create_generator
    from clipdehaze.models import clip_inputs_of

    cfg = compose_cfg("train", ["experiment=study_cliphaze", "model=cliphaze_test", "clip=tiny_random", f"arm={arm}"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert bool(clip_inputs_of(create_generator(model.pop("name"), **model))) == clip_inputs
    assert cfg.clip_control == (arm if clip_inputs else "real") and cfg.save_test_outputs


def test_sar_weather_arm_builds_no_clip(compose_cfg):
    from clipdehaze.build import build_module

    cfg = compose_cfg("train", ["experiment=study_sar_weather", "model=sar_weather_test", "clip=tiny_random",
                                "arm=sar_weather_without_clip"])
    module = build_module(cfg)
    assert module.clip_prior is None and not module.aux_weights


@pytest.mark.slow
def test_a_run_records_its_controls_and_eval_tests_another(cli, tiny_paired_root, tmp_path):
    """Train with the real prior, then evaluate the checkpoint with a shuffled one: both metrics.json record their
    controls, and the shuffled prior changes what the model outputs."""
    from docs_harness import SHORTENING

    data = ["data=paired", f"data.root={tiny_paired_root}", "data.name=tiny"]
    args = ["model=cliphaze_test", *SHORTENING["train"], *data, "trainer.limit_test_batches=null",
            "save_test_outputs=true"]
    out = cli("train", args, tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["clip_control"] == {"train": "real", "test": "real"}
    saved = sorted(p.name for p in (run / "test_outputs").iterdir())
    assert saved == ["0000.png", "0001.png"]
    from clipdehaze.callbacks import SOURCE_KEYS
    from clipdehaze.data.io import png_text

    text = png_text(run / "test_outputs" / "0000.png")
    assert text[SOURCE_KEYS[0]] == str((tiny_paired_root / "test" / "hazy" / "0000.png").resolve())
    assert text[SOURCE_KEYS[1]] == str((tiny_paired_root / "test" / "GT" / "0000.png").resolve())

    # the checkpoint's own data.root is a location a stored config may not choose (hostile input): name the data
    ev = cli("eval", [f"ckpt_path={trained['best_ckpt']}", "test_clip_control=shuffled", "clip=tiny_random", *data],
             tmp_path)
    assert ev.returncode == 0, ev.stderr[-4000:]
    (ev_run,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    evaluated = json.loads((ev_run / "metrics.json").read_text())
    assert evaluated["clip_control"] == {"train": "real", "test": "shuffled"}
    a, b = trained["metrics"]["test/psnr_tiny"], evaluated["metrics"]["test/psnr_tiny"]
    assert math.isfinite(a) and math.isfinite(b) and a != b
