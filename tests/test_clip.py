"""clipdehaze.models.clip: the frozen open_clip prior, prompts, density maps, embedding cache (CPU, offline)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue
from PIL import Image
from safetensors.torch import save_file

from clipdehaze.models.clip import (
    CLIP_INPUTS,
    ClipCache,
    FrozenCLIP,
    MissingWeightsError,
    PromptSet,
    crop_density,
    load_prompt_set,
    read_image,
    resolve_prompt_sets,
    upsample_density,
)
from clipdehaze.models.clip.bench import run_clip_benchmark
from clipdehaze.models.clip.density import resolve_method, vit_dense

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY_RN = {  # a ModifiedResNet tower small enough for CI (width 8 -> 256-channel layer4)
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}




@pytest.fixture(scope="module")
def tiny() -> FrozenCLIP:
    return FrozenCLIP("clipdehaze_tiny", warn_random=False)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 3, 72, 88, generator=torch.Generator().manual_seed(0))


def _save_png(path: Path, seed: int, hw=(48, 80)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)
    return path


def _unit(t: torch.Tensor, dim: int) -> bool:
    return torch.allclose(t.norm(dim=dim), torch.ones(()), atol=1e-4)


# ----------------------------------------------------------------------------------------------- outputs


def test_output_shapes_and_ranges(tiny, images):
    d = tiny.embed_dim
    emb = tiny.image_embedding(images)
    assert emb.shape == (2, d) and _unit(emb, -1) and not emb.requires_grad

    for name, ps in tiny.prompt_sets.items():
        probs = tiny.zero_shot(images, name)
        assert probs.shape == (2, len(ps.classes))
        assert probs.min() >= 0 and torch.allclose(probs.sum(1), torch.ones(2))

    text = tiny.text_feature(images)
    classes = tiny.class_embeddings("domain")
    assert text.shape == (2, 1, d) and _unit(text, -1)
    picked = tiny.zero_shot(images, "domain").argmax(1)
    assert torch.equal(text[:, 0], classes[picked])  # MixCLDehazeNet: the argmax class's text embedding

    soft = tiny.text_feature(images, soft=True)
    assert soft.shape == (2, 1, d) and _unit(soft, -1)
    # the soft option: the probability-weighted mixture of the class text embeddings, renormalised
    probs = tiny.zero_shot(images, "domain")
    torch.testing.assert_close(soft[:, 0], F.normalize(probs @ classes, dim=-1), atol=1e-6, rtol=1e-5)

    dens = tiny.density_map(images)
    assert dens.shape == (2, 1, 72, 88) and dens.min() >= 0 and dens.max() <= 1

    feats = tiny.dense_features(images)
    # 72x88 -> short side 128 (2 x 64), sides rounded to the 16 px patch: 128 x 160 -> 8 x 10 patches
    assert feats.shape == (2, d, 8, 10) and _unit(feats, 1)


def test_generator_inputs_match_the_single_calls(tiny, images):
    out = tiny.generator_inputs(list(CLIP_INPUTS), images)
    assert list(out) == list(CLIP_INPUTS)
    assert torch.allclose(out["image_embedding"], tiny.image_embedding(images), atol=1e-6)
    assert torch.allclose(out["text_feature"], tiny.text_feature(images), atol=1e-6)
    assert torch.allclose(out["density_map"], tiny.density_map(images), atol=1e-6)
    assert torch.allclose(out["dense_features"], tiny.dense_features(images), atol=1e-6)
    assert torch.equal(out["image_encoder"](images.flip(-1)), tiny.image_embedding(images.flip(-1)))
    assert tiny.generator_inputs([], images) == {}
    with pytest.raises(ValueError, match="unknown CLIP inputs"):
        tiny.generator_inputs(["text"], images)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny.image_embedding(images[:, :1])


def test_text_embeddings_computed_once(tiny):
    first = tiny.class_embeddings("weather")
    assert first.shape == (5, tiny.embed_dim) and _unit(first, -1)
    assert tiny.class_embeddings("weather") is first
    with pytest.raises(KeyError, match="not configured"):
        tiny.class_embeddings("nope")


def test_vit_value_path_matches_open_clip_blocks(tiny):
    """The dense ViT path re-runs open_clip's embedding + first L-1 blocks; check it against open_clip itself."""
    visual = tiny.open_clip_model.visual
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before_last = visual.forward_intermediates(pixels, indices=[len(visual.transformer.resblocks) - 2],
                                                   output_fmt="NLC", output_extra_tokens=True)
        x = torch.cat([before_last["image_intermediates_prefix"][0], before_last["image_intermediates"][0]], 1)
        last = visual.transformer.resblocks[-1]
        c = x.shape[-1]
        v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * c:], last.attn.in_proj_bias[2 * c:])
        expected = (visual.ln_post(last.attn.out_proj(v))[:, 1:] @ visual.proj).transpose(1, 2).reshape(1, -1, 4, 4)
        assert torch.allclose(vit_dense(visual, pixels, "value"), expected, atol=1e-5)
        # Other resolutions interpolate the positional embedding instead of failing.
        assert vit_dense(visual, torch.randn(1, 3, 96, 128), "vv").shape == (1, tiny.embed_dim, 6, 8)


def test_density_on_a_resnet_tower(tmp_path, images):
    cfg = tmp_path / "clipdehaze_test_rn.json"
    cfg.write_text(json.dumps(TINY_RN))
    open_clip.add_model_config(cfg)
    rn = FrozenCLIP("clipdehaze_test_rn", warn_random=False)
    assert rn.density_method == "value"  # MaskCLIP: attnpool v_proj + c_proj as 1x1 convs
    out = rn.generator_inputs(["density_map", "dense_features", "text_feature"], images[:1])
    assert out["density_map"].shape == (1, 1, 72, 88)
    assert 0 <= out["density_map"].min() and out["density_map"].max() <= 1
    assert out["dense_features"].shape == (1, 64, 4, 5) and _unit(out["dense_features"], 1)  # stride 32
    assert out["text_feature"].shape == (1, 1, 64)
    with pytest.raises(ValueError, match="'vv' needs a plain CLIP ViT"):
        FrozenCLIP("clipdehaze_test_rn", density={"method": "vv"}, warn_random=False)


def test_sliding_window_fallback(images):
    # Backbones without a dense path (timm towers, attentional poolers...) resolve to windows.
    assert resolve_method("auto", None) == "windows"
    with pytest.raises(ValueError, match="'value' needs"):
        resolve_method("value", None)
    win = FrozenCLIP("clipdehaze_tiny", density={"method": "windows", "window_stride": 32}, warn_random=False)
    feats = win.dense_features(images)
    # 72x88 -> 128x156; 64 px windows at stride 32, the last one flush with the border: 3 x 4 windows
    assert feats.shape == (2, 64, 3, 4) and _unit(feats, 1)
    dens = win.density_map(images)
    assert dens.shape == (2, 1, 72, 88) and 0 <= dens.min() and dens.max() <= 1


def test_crop_density_equals_cropping_the_upsampled_map():
    grid = torch.rand(2, 1, 5, 7)
    full = upsample_density(grid, 37, 53)
    box = (3, 5, 20, 30)
    crop = crop_density(grid, (37, 53), box)
    assert crop.shape == (2, 1, 20, 30)
    assert torch.allclose(crop, full[..., 3:23, 5:35], atol=1e-5)
    assert torch.allclose(crop_density(grid, (37, 53), (0, 0, 37, 53)), full, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        crop_density(grid, (37, 53), (30, 0, 10, 10))


# ----------------------------------------------------------------------------------------------- frozen


class _Parent(nn.Module):
    def __init__(self, prior: FrozenCLIP):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.prior = prior


def test_frozen_and_never_checkpointed():
    prior = FrozenCLIP("clipdehaze_tiny", warn_random=False)
    parent = _Parent(prior)
    assert set(parent.state_dict()) == {"conv.weight", "conv.bias"}
    assert [p.shape for p in parent.parameters()] == [p.shape for p in parent.conv.parameters()]
    parent.load_state_dict(_Parent(FrozenCLIP("clipdehaze_tiny", seed=1, warn_random=False)).state_dict(),
                           strict=True)
    clip = prior.open_clip_model
    assert all(not p.requires_grad for p in clip.parameters())
    parent.train()
    assert prior.training and not clip.training  # train() never switches CLIP out of eval


def test_lit_module_holds_no_clip_weights(compose_cfg):
    """A MixCLDehazeNet LitModule builds the prior, yet neither its state_dict nor its optimizer's parameters
    contain a CLIP tensor: checkpoints hold the generator only."""
    from clipdehaze.build import build_module

    module = build_module(compose_cfg("train", ["model=mixcldehazenet_test", "clip=tiny_random"]))
    clip = module.clip_prior.open_clip_model
    clip_tensors = {t.data_ptr() for t in clip.state_dict().values()}
    assert clip_tensors
    state = module.state_dict()
    assert set(state) == {f"generator.{k}" for k in module.generator.state_dict()}
    assert not clip_tensors & {t.data_ptr() for t in state.values()}
    assert [id(p) for p in module.parameters()] == [id(p) for p in module.generator.parameters()]
    assert not clip_tensors & {p.data_ptr() for p in module.parameters()}


def test_dtype_and_device_moves_reach_the_hidden_model(images):
    prior = FrozenCLIP("clipdehaze_tiny", warn_random=False)
    parent = _Parent(prior).to(torch.float64)
    assert prior.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in prior.open_clip_model.parameters())
    x = images.double()
    assert prior.image_embedding(x).dtype == torch.float64
    assert prior.density_map(x).dtype == torch.float64
    parent.float()
    assert all(p.dtype == torch.float32 for p in prior.open_clip_model.parameters())
    assert prior.text_feature(images).dtype == torch.float32


def test_gradients_flow_to_the_input_only(tiny, images):
    x = images.clone().requires_grad_(True)
    tiny.encode_image(x, grad=True).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.open_clip_model.parameters())
    x.grad = None
    tiny.density_map(x, grad=True).mean().backward()
    assert x.grad.abs().sum() > 0
    assert not tiny.encode_image(x).requires_grad


# ----------------------------------------------------------------------------------------------- weights


def test_random_weights_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="clipdehaze.models.clip.frozen"):
        prior = FrozenCLIP("clipdehaze_tiny", seed=5)
    ours = [r for r in caplog.records if r.name == "clipdehaze.models.clip.frozen"]
    assert len(ours) == 1 and "RANDOM" in ours[0].getMessage() and "\n" not in ours[0].getMessage()
    assert prior.model_id.endswith("random(seed=5)")


def _offline_env(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.mark.exclusive   # wall-clock bound
def test_missing_pretrained_weights_fail_fast_offline(monkeypatch, tmp_path):
    _offline_env(monkeypatch, tmp_path)
    t = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        FrozenCLIP("ViT-B-32", pretrained="openai")
    assert time.perf_counter() - t < 5
    msg = str(err.value)
    assert "'ViT-B-32'" in msg and "'openai'" in msg
    assert str(tmp_path / "hf" / "hub") in msg and os.path.join(".cache", "clip") in msg  # where to fill the cache
    assert "clip=local" in msg and "clip.checkpoint=" in msg and "clip.quick_gelu=true" in msg


def test_cached_tag_weights_load_without_network(monkeypatch, tmp_path):
    _offline_env(monkeypatch, tmp_path)
    source = FrozenCLIP("clipdehaze_tiny", seed=7, warn_random=False).open_clip_model
    snapshot = tmp_path / "hf" / "hub" / "models--clipdehaze--tiny-test" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, snapshot / "open_clip_model.safetensors")
    real_cfg = open_clip.get_pretrained_cfg

    def fake_cfg(model, tag):
        if (model, tag) == ("clipdehaze_tiny", "testtag"):
            return {"hf_hub": "clipdehaze/tiny-test/", "quick_gelu": False}
        return real_cfg(model, tag)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", fake_cfg)
    prior = FrozenCLIP("clipdehaze_tiny", pretrained="testtag")
    assert prior.model_id.endswith(":testtag")
    for (k, a), b in zip(prior.open_clip_model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_reloads_identical_weights(tmp_path, suffix, caplog):
    source = FrozenCLIP("clipdehaze_tiny", seed=3, warn_random=False).open_clip_model
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    torch.save(state, path) if suffix == ".pt" else save_file(state, path)
    with caplog.at_level(logging.WARNING, logger="clipdehaze.models.clip.frozen"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=None, overrides=[
                "+clip=local", "clip.model_name=clipdehaze_tiny", "clip.quick_gelu=false", "clip.density.size=128",
                f"clip.checkpoint={path}"])
        prior = instantiate(cfg.clip)
    assert not [r for r in caplog.records if r.name == "clipdehaze.models.clip.frozen"]  # not random: no warning
    assert "sha256=" in prior.model_id and str(path) in prior.model_id
    for (k, a), b in zip(prior.open_clip_model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), k


# ----------------------------------------------------------------------------------------------- configs


def test_clip_configs_compose():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, model, tag in [("vit_b32_openai", "ViT-B-32", "openai"), ("rn50_openai", "RN50", "openai"),
                                 ("vit_b16_openai", "ViT-B-16", "openai"), ("local", "ViT-B-32", None),
                                 ("tiny_random", "clipdehaze_tiny", None)]:
            cfg = compose(config_name=None, overrides=[f"+clip={name}"]).clip
            assert cfg._target_ == "clipdehaze.models.clip.FrozenCLIP"
            assert (cfg.model_name, cfg.pretrained) == (model, tag)
            assert set(cfg.prompts) == {"domain", "weather", "haze_level"}
        with pytest.raises(MissingMandatoryValue):
            instantiate(compose(config_name=None, overrides=["+clip=local"]).clip)
        prior = instantiate(compose(config_name=None, overrides=["+clip=tiny_random", "clip.warn_random=false"]).clip)
    assert prior.density_size == 128 and prior.image_size == 64 and prior.embed_dim == 64
    assert prior.prompt_sets == resolve_prompt_sets(None)  # composed YAML == the files Python reads


def test_prompt_sets():
    domain = load_prompt_set("domain")
    assert domain.classes == ("indoor", "outdoor")
    assert domain.flat_prompts == ["a photo of a indoor", "a photo of a outdoor"]  # MixCLDehazeNet, verbatim
    assert load_prompt_set("weather").classes == ("clear", "haze", "rain", "snow", "raindrop")
    haze = load_prompt_set("haze_level")
    assert haze.classes == ("hazy", "clear") and len(haze.prompts[0]) == len(haze.prompts[1])
    ens = PromptSet.from_spec("x", {"template": ["a {} photo.", "a photo, {}."], "classes": ["dark", "bright"]})
    assert ens.prompts[1] == ("a bright photo.", "a photo, bright.") and ens.class_slices()[1] == slice(2, 4)
    alias = resolve_prompt_sets({"scene": "domain", "haze_level": None})
    assert alias["scene"].prompts == domain.prompts and alias["scene"].name == "scene"
    with pytest.raises(ValueError, match="exactly one"):
        PromptSet.from_spec("x", {"template": "a photo", "classes": ["a", "b"]})
    with pytest.raises(ValueError, match="not both"):
        PromptSet.from_spec("x", {"template": "a {}", "classes": {"a": ["x"], "b": ["y"]}})
    with pytest.raises(KeyError, match="no prompt set"):
        load_prompt_set("missing_set")
    with pytest.raises(ValueError, match="unknown density options"):
        FrozenCLIP("clipdehaze_tiny", density={"sise": 3}, warn_random=False)


# ----------------------------------------------------------------------------------------------- cache


def test_cache_round_trip_and_invalidation(tmp_path, tiny):
    a = _save_png(tmp_path / "a.png", 0)
    b = _save_png(tmp_path / "b.png", 1, hw=(64, 40))
    names = ("text_feature", "image_embedding", "density_map", "zero_shot")
    cache = ClipCache(tmp_path / "cache", tiny, names=names)
    assert cache.lookup(a) is None and cache.check(a).startswith("missing")
    assert cache.build([a, b]) == {"reused": 0, "built": 2, "replaced": 0}
    assert cache.build([a, b]) == {"reused": 2, "built": 0, "replaced": 0}

    entry = cache.lookup(a)
    x = read_image(a)[None]
    assert torch.allclose(entry["text_feature"], tiny.text_feature(x)[0], atol=1e-6)
    assert torch.allclose(entry["image_embedding"], tiny.image_embedding(x)[0], atol=1e-6)
    assert torch.allclose(entry["zero_shot.weather"], tiny.zero_shot(x, "weather")[0], atol=1e-6)
    assert torch.allclose(entry["density_grid"], tiny.density_grid(x)[0], atol=1e-6)
    assert entry["image_hw"].tolist() == [48, 80]

    served = cache.sample_inputs(a, ["text_feature", "density_map"], box=(8, 16, 32, 40))
    assert served["text_feature"].shape == (1, tiny.embed_dim)
    assert torch.allclose(served["density_map"], tiny.density_map(x)[0, :, 8:40, 16:56], atol=1e-5)
    with pytest.raises(KeyError, match="not in this cache"):
        cache.sample_inputs(a, ["dense_features"])

    # image bytes change -> no entry for the new content; rebuilt, the other image reused
    _save_png(a, 2)
    assert cache.lookup(a) is None
    assert cache.build([a, b]) == {"reused": 1, "built": 1, "replaced": 0}
    assert not torch.equal(cache.lookup(a)["image_embedding"], entry["image_embedding"])

    # model id changes (other seed) -> other signature, nothing reused
    other_model = ClipCache(tmp_path / "cache", FrozenCLIP("clipdehaze_tiny", seed=1, warn_random=False), names)
    assert other_model.signature_hash != cache.signature_hash and other_model.lookup(b) is None

    # prompts change -> nothing reused
    prompts = {"domain": {"template": "a photo of the {}", "classes": ["indoor", "outdoor"]},
               "weather": None, "haze_level": None}
    other_prompts = ClipCache(tmp_path / "cache", FrozenCLIP("clipdehaze_tiny", prompts=prompts,
                                                             warn_random=False), names)
    assert other_prompts.lookup(b) is None

    # an entry of another prior placed under this key is detected by its header, not used
    wrong = other_model.entry_for(b)
    assert wrong["text_feature"].shape == (1, 64)
    shutil.copy(other_model.entry_path(b), cache.entry_path(b))
    assert cache.check(b).startswith("stale") and cache.lookup(b) is None

    # a corrupt entry is reported and replaced
    cache.entry_path(a).write_bytes(b"not a safetensors file")
    assert cache.check(a).startswith("corrupt")
    assert cache.build([a, b]) == {"reused": 0, "built": 0, "replaced": 2}
    assert cache.check(a) is None and cache.check(b) is None
    with pytest.raises(ValueError, match="cannot cache"):
        ClipCache(tmp_path / "c2", tiny, names=("dense_features",))


def test_bench_smoke():
    result = run_clip_benchmark(models=("clipdehaze_tiny",), n_images=2, size=64)
    (model_id, r), = result["models"].items()
    assert model_id.startswith("clipdehaze_tiny")
    assert set(r["live_ms"]) == set(r["cached_ms"]) == {"density_map", "image_embedding", "text_feature"}
    assert all(v > 0 for v in [*r["live_ms"].values(), *r["cached_ms"].values(), r["build_ms"], r["hash_ms"]])
