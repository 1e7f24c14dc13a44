"""CLIPHaze: variants, odd sizes, gradients through both paths and the CAM, the CAM's CLIP cues and switches."""

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from clipdehaze.models import create_generator
from clipdehaze.models.generators.cliphaze import CLIPAggregation, ConcatAggregation, SumAggregation

CLIP_DIM = 512


def clip_kwargs(model, x, seed=0):
    """Random CLIP inputs of the right shapes, exactly those the model names in ``clip_inputs``."""
    g = torch.Generator().manual_seed(seed)
    B, _, H, W = x.shape
    made = {"density_map": torch.rand(B, 1, H, W, generator=g),
            "image_embedding": F.normalize(torch.randn(B, model.clip_dim, generator=g), dim=-1)}
    return {name: made[name] for name in model.clip_inputs}


@pytest.fixture(scope="module")
def test_model():
    torch.manual_seed(0)
    return create_generator("cliphaze_test").eval()


@pytest.mark.parametrize("name,low,high", [("cliphaze_t", 1.1e6, 1.5e6), ("cliphaze_s", 2.2e6, 2.8e6),
                                           ("cliphaze_b", 4.2e6, 5.0e6), ("cliphaze_test", 1e4, 1e5)])
def test_variant_size_and_odd_input(name, low, high):
    torch.manual_seed(0)
    model = create_generator(name, clip_dim=CLIP_DIM).eval()
    n = sum(p.numel() for p in model.parameters())
    assert low <= n <= high, f"{name}: {n} params"
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        y = model(x, **clip_kwargs(model, x))
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["cliphaze_t", "cliphaze_s", "cliphaze_b"])
def test_variant_backward_finite(name):
    """The published-size variants train: finite gradients for every parameter on a small odd input."""
    torch.manual_seed(0)
    model = create_generator(name, clip_dim=CLIP_DIM).train()
    x = torch.rand(1, 3, 19, 23)
    (model(x, **clip_kwargs(model, x)) - x).abs().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_output_and_gradients_equal_the_pre_kernel_path(monkeypatch):
    """Same weights, same input: the compiled channel-last SS2D scan gives CLIPHaze the outputs and gradients of
    the path it replaced (four reordered copies through the chunked PyTorch scan)."""
    from clipdehaze.models.ssm import cpu_kernel

    if cpu_kernel.unavailable_reason() is not None:
        from conftest import require_or_skip

        require_or_skip("cxx", cpu_kernel.unavailable_reason())
    torch.manual_seed(0)
    model = create_generator("cliphaze_test").train()
    x = torch.rand(2, 3, 37, 29)
    kw = clip_kwargs(model, x)

    def run():
        y = model(x, **kw)
        return y.detach(), torch.autograd.grad((y - x).abs().mean(), list(model.parameters()))

    y, g = run()
    monkeypatch.setattr(cpu_kernel, "available", lambda *tensors: False)
    y_ref, g_ref = run()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for (name, _), a, e in zip(model.named_parameters(), g, g_ref):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3 * e.abs().max().item() + 1e-7, msg=name)


@pytest.mark.parametrize("hw", [(3, 5), (1, 9), (40, 17)])
def test_tiny_and_odd_sizes_are_padded_and_cropped(test_model, hw):
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        y = test_model(x, **clip_kwargs(test_model, x))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_backward_reaches_both_paths_the_cam_and_the_clip_inputs():
    torch.manual_seed(0)
    model = create_generator("cliphaze_test")
    x = torch.rand(2, 3, 21, 19)
    inputs = {k: v.requires_grad_(True) for k, v in clip_kwargs(model, x).items()}
    model(x, **inputs).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    blk = model.layer3.blocks[0]
    for param in (blk.attn.qkv.weight, blk.ssm.in_proj.weight, blk.ssm.A_logs, blk.aggregate.reduce.weight,
                  blk.aggregate.film.weight, blk.aggregate.logits.weight, model.embed_adapter[1].weight):
        assert param.grad.abs().sum() > 0
    for name, value in inputs.items():
        assert value.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("kwargs,expected,aggregator", [
    ({}, ("density_map", "image_embedding"), CLIPAggregation),
    ({"cam_density": False}, ("image_embedding",), CLIPAggregation),
    ({"cam_embedding": False}, ("density_map",), CLIPAggregation),
    ({"cam_density": False, "cam_embedding": False}, (), CLIPAggregation),
    ({"aggregation": "sum"}, (), SumAggregation),
    ({"aggregation": "concat"}, (), ConcatAggregation),
])
def test_switches_set_clip_inputs_and_run(kwargs, expected, aggregator):
    torch.manual_seed(0)
    model = create_generator("cliphaze_test", **kwargs)
    assert model.clip_inputs == expected
    assert all(isinstance(b.aggregate, aggregator) for b in model.layer1.blocks)
    assert (model.embed_adapter is not None) == ("image_embedding" in expected)
    x = torch.rand(1, 3, 24, 30)
    model(x, **clip_kwargs(model, x)).mean().backward()


def test_clip_inputs_are_checked(test_model):
    x = torch.rand(1, 3, 16, 16)
    inputs = clip_kwargs(test_model, x)
    with pytest.raises(ValueError, match="needs density_map"):
        test_model(x, image_embedding=inputs["image_embedding"])
    with pytest.raises(ValueError, match="clip_dim"):
        test_model(x, density_map=inputs["density_map"], image_embedding=torch.zeros(1, 64))
    plain = create_generator("cliphaze_test", aggregation="sum")
    with pytest.raises(TypeError, match="does not use density_map"):
        plain(x, density_map=inputs["density_map"])
    with pytest.raises(ValueError, match="aggregation"):
        create_generator("cliphaze_test", aggregation="max")


def test_cam_weights_are_a_per_pixel_softmax():
    cam = CLIPAggregation(dim=8, hidden=4, use_density=True, cond_dim=6)
    a, s = torch.randn(2, 5, 7, 8), torch.randn(2, 5, 7, 8)
    w = cam.path_weights(a, s, torch.rand(2, 5, 7, 1), torch.randn(2, 6))
    assert w.shape == (2, 5, 7, 2)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5, 7))
    out = cam.reference(a, s, torch.rand(2, 5, 7, 1), torch.randn(2, 6))
    assert out.shape == a.shape


def test_cam_uses_the_density_map_and_the_embedding(test_model):
    x = torch.rand(1, 3, 32, 32)
    base = clip_kwargs(test_model, x, seed=0)
    with torch.no_grad():
        y = test_model(x, **base)
        other_density = test_model(x, **{**base, "density_map": 1 - base["density_map"]})
        other_embedding = test_model(x, **{**base, "image_embedding": clip_kwargs(test_model, x, seed=1)[
            "image_embedding"]})
        # A density map served at another resolution (a cached grid) is resized, not rejected.
        low_res = test_model(x, **{**base, "density_map": F.avg_pool2d(base["density_map"], 4)})
    assert (y - other_density).abs().max() > 1e-6
    assert (y - other_embedding).abs().max() > 1e-6
    assert low_res.shape == x.shape


def test_tiny_random_clip_end_to_end(compose_cfg):
    cfg = compose_cfg("train", ["model=cliphaze_test", "clip=tiny_random", "clip.warn_random=false"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    clip = instantiate(cfg.clip)
    assert model_cfg["clip_dim"] == clip.embed_dim  # the ${clip_dim:...} resolver follows the chosen CLIP
    model = create_generator(model_cfg.pop("name"), **model_cfg)
    x = torch.rand(2, 3, 45, 61)
    inputs = clip.generator_inputs(model.clip_inputs, x)
    assert set(inputs) == {"density_map", "image_embedding"}
    y = model(x, **inputs)
    assert y.shape == x.shape and torch.isfinite(y).all()


# Module names before CLIPHaze moved onto the shared skeleton (clipdehaze.models.unet); the weights are the same.
_PRE_SKELETON_NAMES = {"patch_embed.proj.": "shallow.proj.", "patch_merge1.": "down1.", "patch_merge2.": "down2.",
                       "patch_split1.": "up1.", "patch_split2.": "up2.", "patch_unembed.proj.0.": "reconstruct.proj."}


def test_outputs_equal_the_pre_skeleton_network():
    """Same weights (each parameter drawn from a seed of its pre-skeleton name), same inputs: the outputs stored from
    CLIPHaze's own U-Net wiring before it moved onto the skeleton DehazeFormer and MixDehazeNet share."""
    import zlib
    from pathlib import Path

    model = create_generator("cliphaze_test").eval()
    for name, p in model.named_parameters():
        old = next((name.replace(new, was, 1) for new, was in _PRE_SKELETON_NAMES.items() if name.startswith(new)),
                   name)
        g = torch.Generator().manual_seed(zlib.crc32(old.encode()))
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if old.endswith(("norm1.weight", "norm2.weight"))
                                                               else 0.0))
    g = torch.Generator().manual_seed(15)
    x = torch.rand(2, 3, 21, 27, generator=g)
    density = torch.rand(2, 1, 21, 27, generator=g)
    embedding = F.normalize(torch.randn(2, 512, generator=g), dim=-1)
    expected = torch.load(Path(__file__).parent / "data" / "cliphaze_test_pre_skeleton.pt", weights_only=True)
    with torch.no_grad():
        out = model(x, density_map=density, image_embedding=embedding)
    torch.testing.assert_close(out, expected["output"], rtol=0, atol=1e-5)


def _colour_encoder(dim: int = CLIP_DIM):
    """A stand-in for CLIP's image encoder that responds to content: the unit projection of the mean colour."""
    proj = torch.randn(3, dim, generator=torch.Generator().manual_seed(3))
    calls = []

    def encode(images):
        calls.append(images.requires_grad)
        return F.normalize(images.mean(dim=(2, 3)) @ proj, dim=-1)

    return encode, calls


def test_first_pass_embeds_the_networks_own_output():
    """embedding_of=first_pass: the returned pass is instructed by the embedding of the first pass's (clamped)
    output, the first pass by the input's; both passes share the weights of the one-pass network."""
    torch.manual_seed(0)
    two_pass = create_generator("cliphaze_test", embedding_of="first_pass").eval()
    for name, p in two_pass.named_parameters():  # a trained-looking embedding path (its init is near zero)
        if name.startswith("embed_adapter.1.") or ".aggregate.film." in name:
            p.data.normal_(0, 0.5)
    one_pass = create_generator("cliphaze_test").eval()
    one_pass.load_state_dict(two_pass.state_dict())
    assert two_pass.clip_inputs == ("density_map", "image_encoder")
    x, density = torch.rand(2, 3, 24, 30), torch.rand(2, 1, 24, 30)
    encode, calls = _colour_encoder()
    with torch.no_grad():
        first = one_pass(x, density_map=density, image_embedding=encode(x))
        expected = one_pass(x, density_map=density, image_embedding=encode(first.clamp(0, 1)))
    calls.clear()
    out = two_pass(x, density_map=density, image_encoder=encode)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out - first).abs().max() > 1e-2  # the restored content's embedding changed the result
    assert calls == [False, False]  # input and first-pass output: embedded without a graph


def test_first_pass_trains_and_is_checked():
    torch.manual_seed(0)
    model = create_generator("cliphaze_test", embedding_of="first_pass").train()
    x = torch.rand(2, 3, 21, 19)
    encode, _ = _colour_encoder()
    (model(x, density_map=torch.rand(2, 1, 21, 19), image_encoder=encode) - x).abs().mean().backward()
    assert model.embed_adapter[1].weight.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(TypeError, match="image_encoder must be a function"):
        model(x, density_map=torch.rand(2, 1, 21, 19), image_encoder=torch.zeros(2, CLIP_DIM))
    with pytest.raises(TypeError, match="does not use image_embedding"):
        model(x, density_map=torch.rand(2, 1, 21, 19), image_encoder=encode, image_embedding=torch.zeros(2, 512))
    with pytest.raises(ValueError, match="embedding_of"):
        create_generator("cliphaze_test", embedding_of="daclip")
    # Without the embedding cue there is nothing to embed: one pass.
    plain = create_generator("cliphaze_test", embedding_of="first_pass", cam_embedding=False)
    assert plain.clip_inputs == ("density_map",) and plain.embedding_of == "input"


def test_first_pass_runs_with_the_clip_prior(compose_cfg):
    """Through the LightningModule and the frozen (tiny) CLIP, whose image_encoder is computed live."""
    from clipdehaze.build import build_module

    module = build_module(compose_cfg("train", ["model=cliphaze_test", "model.embedding_of=first_pass",
                                                "clip=tiny_random"]))
    x = torch.rand(2, 3, 32, 32)
    inputs = module.clip_inputs(x)
    assert set(inputs) == {"density_map", "image_encoder"}
    torch.testing.assert_close(inputs["image_encoder"](x), module.clip_prior.image_embedding(x))
    loss = module.training_step({"input": x, "target": torch.rand_like(x), "name": ["a", "b"],
                                 "index": torch.tensor([0, 1])}, 0)
    assert torch.isfinite(loss)
    from clipdehaze.predict import restore

    image = torch.rand(1, 3, 48, 40)
    tiled = restore(module.eval(), image, tile=32, overlap=8)  # the encoder passes to every tile uncropped
    assert tiled.shape == image.shape and torch.isfinite(tiled).all()


@pytest.mark.parametrize("aggregation", ["cam", "sum", "concat"])
def test_fused_aggregation_equals_the_reference_formulation(aggregation):
    """The block's aggregation (each path's output projection carrying the aggregation's share, the attention
    output read window-major as a view of the map, sigmoid and lerp for the two-way softmax) against the
    aggregation written out plainly on the two paths' (B, H, W, C) outputs, float64."""
    from clipdehaze.models.generators.cliphaze import DualPathBlock, fused_linear

    torch.manual_seed(0)
    block = DualPathBlock(8, num_heads=1, window_size=4, mlp_ratio=2.0, d_state=1, ssm_expand=1.0,
                          aggregation=aggregation, cam_density=True, cond_dim=6, cam_ratio=0.5).double()
    agg, B, H, W, ws, C = block.aggregate, 2, 8, 12, 4, 8
    attn_feats = torch.randn(B, H // ws, W // ws, ws, ws, C, dtype=torch.float64)  # window-major
    ssm_feats = torch.randn(B, H, W, C, dtype=torch.float64)                       # row-major
    density, cond = torch.rand(B, H, W, 1, dtype=torch.float64), torch.randn(B, 6, dtype=torch.float64)
    kw = {"density": density, "cond": cond} if aggregation == "cam" else {}
    fused = agg(fused_linear(attn_feats, block.attn.proj, *agg.extra("attn")),
                fused_linear(ssm_feats, block.ssm.out_proj, *agg.extra("ssm")), **kw)
    attn_map = block.attn.proj(attn_feats).transpose(2, 3).reshape(B, H, W, C)  # window-major -> map, by hand
    expected = agg.reference(attn_map, block.ssm.out_proj(ssm_feats), **kw)
    torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-12)
    # The check can fail: the attention output read in window order as if it were row-major is another result.
    wrong = agg.reference(block.attn.proj(attn_feats).reshape(B, H, W, C), block.ssm.out_proj(ssm_feats), **kw)
    assert (fused - wrong).abs().max() > 1e-3


def test_layout_copies_are_the_input_and_one_window_copy_per_block():
    """Counted layout traffic of one forward (clipdehaze.utils.traffic): apart from parameter-sized reorders, the
    input's channels_last copy and, per block, one copy of its normalised map into window order; nothing else
    (no concatenation of the paths, no transposed grids for the scan, no copy of the attention output)."""
    from clipdehaze.utils.traffic import layout_traffic

    model = create_generator("cliphaze_test").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        records = layout_traffic(lambda: model(x, **clip_kwargs(model, x)))["records"]
    # Feature maps (the smallest: 2 x 8 x 8 x 32 values), not weights (fused projections: at most 48 x 32).
    maps = sorted(shape for _, shape, _ in records if torch.Size(shape).numel() >= 4096)
    # Blocks per stage 1, 1, 2, 1, 1 at 32², 16², 8², 16², 32² with 8, 16, 32, 16, 8 channels, windows of 4.
    expected = sorted([(2, 3, 32, 32)] + [(2, 8, 8, 4, 4, 8)] * 2 + [(2, 4, 4, 4, 4, 16)] * 2
                      + [(2, 2, 2, 4, 4, 32)] * 2)
    assert maps == expected
    moved = sum(b for _, shape, b in records if torch.Size(shape).numel() >= 4096)
    assert moved == 2 * 4 * sum(torch.Size(s).numel() for s in expected)  # read + written, float32
