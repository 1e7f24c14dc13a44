"""DehazeFormer: checkpoint-compatible structure for every published variant, and upstream's numbers."""

from __future__ import annotations

import pytest
import torch
from conftest import manifest_param_count

from clipdehaze.models import create_generator, list_generators, upstream_graph
from clipdehaze.models.generators.dehazeformer import DehazeFormer, WindowAttention, dehazeformer_t, dehazeformer_test

VARIANTS = ["t", "s", "b", "m", "l", "w", "d"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_matches_manifest(variant, manifest):
    name = f"dehazeformer_{variant}"
    with torch.device("meta"):  # shapes only: no allocation for the 25 M-parameter L
        model = create_generator(name)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == manifest(name)
    assert sum(p.numel() for p in model.parameters()) == manifest_param_count(name)


@pytest.mark.parametrize("graph", ["fused", "upstream"])
def test_golden_output_matches_upstream(graph, shared_dir):
    golden = torch.load(shared_dir / "reference" / "golden" / "dehazeformer_t.pt", weights_only=True)
    model = dehazeformer_t().eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    with torch.no_grad(), upstream_graph(model, enabled=graph == "upstream"):
        out = model((golden["input"] + 1) / 2)
    expected = (golden["output"] + 1) / 2
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("window_size", [4, 8])
def test_relative_position_bias_equals_mlp_on_every_pair(window_size):
    attn = WindowAttention(dim=12, window_size=window_size, num_heads=3)
    dense = attn.meta(attn.relative_positions).permute(2, 0, 1)  # upstream: the MLP on all N x N pairs
    torch.testing.assert_close(attn.relative_position_bias(), dense, rtol=0, atol=1e-6)
    with upstream_graph(attn):
        torch.testing.assert_close(attn.relative_position_bias(), dense, rtol=0, atol=0)



def test_odd_size_keeps_shape():
    model = dehazeformer_t().eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_backward_is_finite():
    torch.manual_seed(0)
    model = dehazeformer_test()
    assert sum(p.numel() for p in model.parameters()) < 10_000
    x = torch.rand(2, 3, 30, 41)
    model(x).abs().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_conv_branch_forward_backward():
    model = dehazeformer_test(conv_type=("Conv",) * 5)
    y = model(torch.rand(1, 3, 32, 32))
    y.sum().backward()
    assert y.shape == (1, 3, 32, 32)


def test_rejects_clip_inputs_and_tiny_images():
    model = dehazeformer_test()
    assert model.clip_inputs == ()
    with pytest.raises(TypeError, match="text_feature"):
        model(torch.rand(1, 3, 32, 32), text_feature=torch.zeros(1, 1, 512))
    with pytest.raises(ValueError, match="at least 25 px"):
        model(torch.rand(1, 3, 24, 64))


def test_factory_kwargs_override_defaults():
    model = dehazeformer_test(depths=(1, 1, 1, 1, 1))
    assert all(len(getattr(model, f"layer{i}").blocks) == 1 for i in range(1, 6))
    with pytest.raises(ValueError, match="skip fusion"):
        DehazeFormer(embed_dims=(8, 16, 16, 8, 8))


def test_registry():
    names = {f"dehazeformer_{v}" for v in VARIANTS + ["test"]}
    assert names <= set(list_generators())
    model = create_generator("dehazeformer_t")
    assert isinstance(model, DehazeFormer) and model.generator_name == "dehazeformer_t"


def test_window_attention_fused_kernel_equals_the_explicit_form():
    """Without a gradient for the position bias, window attention runs PyTorch's fused attention (no N x N scores
    in memory); with one on CPU, the explicit softmax(q kᵀ s + bias) v whose bias gradient it needs. Both agree, per
    head, with a plain computation."""
    from clipdehaze.models.layers import WindowAttention

    torch.manual_seed(0)
    attn = WindowAttention(dim=12, window_size=4, num_heads=3)
    q, k, v = (torch.randn(5, 3, 16, 4) for _ in range(3))
    bias = attn.relative_position_bias().detach()
    plain = torch.softmax(q @ k.transpose(-2, -1) * 4 ** -0.5 + bias, -1) @ v  # head_dim 12 / 3 heads
    with torch.no_grad():
        fused = attn(q, k, v)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    explicit = attn(q, k, v)  # grad enabled, the bias MLP trains: the explicit form
    torch.testing.assert_close(explicit, plain, rtol=1e-5, atol=1e-5)
    explicit.sum().backward()
    assert attn.meta[0].weight.grad.abs().sum() > 0
