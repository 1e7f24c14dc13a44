"""MixDehazeNet / MixCLDehazeNet: exact upstream state_dicts and outputs, the [0, 1] contract, every fusion mode."""

from __future__ import annotations

import pytest
import torch
from conftest import manifest_param_count

from clipdehaze.models import clip_inputs_of, create_generator, list_generators, upstream_graph
from clipdehaze.models.generators import mixdehazenet as M

VARIANTS = [f"{family}_{v}" for family in ("mixdehazenet", "mixcldehazenet") for v in "tsbl"]
FUSIONS = ("parametric", "calip", "none")


def _text(batch: int, dim: int = 512) -> torch.Tensor:
    t = torch.randn(batch, 1, dim)
    return t / t.norm(dim=-1, keepdim=True)


def _kwargs(model, batch: int, dim: int = 512) -> dict:
    return {"text_feature": _text(batch, dim)} if clip_inputs_of(model) else {}


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_matches_upstream_manifest(name, manifest):
    n_params, expected = manifest_param_count(name), manifest(name)
    with torch.device("meta"):
        model = create_generator(name)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize("graph", ["fused", "upstream"])
@pytest.mark.parametrize("name", ["mixdehazenet_t", "mixcldehazenet_t"])
def test_golden_output(name, graph, shared_dir):
    golden = torch.load(shared_dir / "reference" / "golden" / f"{name}.pt", weights_only=True)
    model = create_generator(name)
    model.load_state_dict(golden["state_dict"], strict=True)
    model.eval()
    kwargs = {"text_feature": golden["text_feature"]} if "text_feature" in golden else {}
    with torch.no_grad(), upstream_graph(model, enabled=graph == "upstream"):
        out = model((golden["input"] + 1) / 2, **kwargs)
    assert out.shape == golden["output"].shape
    assert (out - (golden["output"] + 1) / 2).abs().max().item() < 1e-5


def _upstream_block(blk: M.MixStructureBlock, x: torch.Tensor) -> torch.Tensor:
    """MixStructureBlock.forward exactly as upstream writes it, on the same submodules."""
    identity = x
    x = blk.conv2(blk.conv1(blk.norm1(x)))
    x = identity + blk.mlp(torch.cat([blk.conv3_19(x), blk.conv3_13(x), blk.conv3_7(x)], dim=1))
    identity = x
    x = blk.norm2(x)
    return identity + blk.mlp2(torch.cat([blk.Wv(x) * blk.Wg(x), blk.ca(x) * x, blk.pa(x) * x], dim=1))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_block_matches_upstream(training):
    """The re-arranged block (folded conv1/norm1, merged depthwise convs, shared pooling): same values and grads.

    In float64, so that the comparison checks the algebra, not float32 round-off of large gradient sums.
    """
    torch.manual_seed(0)
    blk = M.MixStructureBlock(16).train(training).double()
    for bn in (blk.norm1, blk.norm2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 16, 23, 29, dtype=torch.float64)
    grads = []
    for fn, literal in ((_upstream_block, False), (M.MixStructureBlock.forward, False),
                        (M.MixStructureBlock.forward, True)):  # the last: the block's own upstream_graph path
        blk.zero_grad()
        with upstream_graph(blk, enabled=literal):
            y = fn(blk, x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append((y.detach(), {n: p.grad.clone() for n, p in blk.named_parameters()}))
    (y_ref, g_ref), *others = grads
    for y, g in others:
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        for name in g_ref:
            torch.testing.assert_close(g[name], g_ref[name], rtol=1e-12, atol=1e-12, msg=name)


def test_registry_names():
    names = set(list_generators())
    for v in ("t", "s", "b", "l", "test"):
        assert {f"mixdehazenet_{v}", f"mixcldehazenet_{v}"} <= names


def test_factories_merge_kwargs():
    model = create_generator("mixcldehazenet_s", fusion="calip", depths=(1, 1, 1, 1, 1))
    assert model.fusion == "calip" and len(model.layer3.blocks) == 1


ODD_SIZE_CASES = [("mixdehazenet_test", {})] + [("mixcldehazenet_test", {"fusion": f}) for f in FUSIONS]


@pytest.mark.parametrize("name,kwargs", ODD_SIZE_CASES, ids=[f"{n}-{k.get('fusion', '')}" for n, k in ODD_SIZE_CASES])
def test_odd_size_forward(name, kwargs):
    torch.manual_seed(0)
    model = create_generator(name, **kwargs).eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        y = model(x, **_kwargs(model, 1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_backward_finite(fusion):
    torch.manual_seed(0)
    model = M.mixcldehazenet_test(fusion=fusion).train()
    x = torch.rand(2, 3, 40, 44)
    loss = (model(x, **_kwargs(model, 2)) - x).abs().mean()
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable), \
        [n for n, p in trainable if p.grad is None]
    if fusion == "parametric":
        # The text branch upstream computes and discards: frozen, never gets a gradient.
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        unused = {f"text_emb.{m}.{w}" for m in ("k1", "v1", "q2", "postProj_t") for w in ("weight", "bias")}
        assert frozen == unused | {"text_emb.k2.bias"}  # the softmax cancels k2's bias
        assert model.text_emb.q1.weight.grad.abs().sum() > 0


def test_mixdehazenet_backward_finite():
    model = M.mixdehazenet_test().train()
    x = torch.rand(2, 3, 40, 44)
    (model(x) - x).abs().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", VARIANTS)
def test_published_variant_odd_size_forward_backward(name):
    """Every published variant (not only the *_test ones): odd-size input, shape kept, finite gradients."""
    torch.manual_seed(0)
    model = create_generator(name).train()
    x = torch.rand(1, 3, 37, 41)
    y = model(x, **_kwargs(model, 1))
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y - x).abs().mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable), \
        [n for n, p in trainable if p.grad is None]


def test_fusion_modes_share_the_backbone():
    keys = {f: list(M.mixcldehazenet_test(fusion=f).state_dict()) for f in FUSIONS}
    plain = list(M.mixdehazenet_test().state_dict())
    assert keys["none"] == plain
    assert keys["calip"] == [k for k in keys["parametric"] if not k.startswith("text_emb.")]
    shape = {f: M.mixcldehazenet_test(fusion=f).patch_embed.proj.weight.shape[1] for f in FUSIONS}
    assert shape == {"parametric": 6, "calip": 6, "none": 3}


def test_clip_inputs_contract():
    assert clip_inputs_of(M.mixdehazenet_test()) == ()
    assert clip_inputs_of(M.mixcldehazenet_test()) == ("text_feature",)
    assert clip_inputs_of(M.mixcldehazenet_test(fusion="calip")) == ("text_feature",)
    assert clip_inputs_of(M.mixcldehazenet_test(fusion="none")) == ()
    x = torch.rand(1, 3, 40, 40)
    with pytest.raises(TypeError):
        M.mixdehazenet_test()(x, text_feature=_text(1))
    with pytest.raises(TypeError):
        M.mixcldehazenet_test()(x)
    with pytest.raises(TypeError):
        M.mixcldehazenet_test()(x, text_feature=_text(1), image_feature=_text(1))
    with pytest.raises(TypeError):
        M.mixcldehazenet_test(fusion="none")(x, text_feature=_text(1))
    with pytest.raises(ValueError, match="text_feature"):
        M.mixcldehazenet_test()(x, text_feature=_text(1, 1024))
    with pytest.raises(ValueError, match="at least 37"):
        M.mixdehazenet_test()(torch.rand(1, 3, 36, 64))
    with pytest.raises(ValueError, match="fusion"):
        M.mixcldehazenet_test(fusion="film")


@pytest.mark.parametrize("fusion", ["parametric", "calip"])
def test_text_dim_1024(fusion):
    model = M.mixcldehazenet_test(fusion=fusion, text_dim=1024).eval()
    x = torch.rand(2, 3, 40, 48)
    t = _text(2, 1024)
    with torch.no_grad():
        y = model(x, text_feature=t)
        y_flat = model(x, text_feature=t[:, 0])  # (B, D) is accepted too
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.equal(y, y_flat)


@pytest.mark.parametrize("fusion", ["parametric", "calip"])
def test_text_changes_the_output(fusion):
    torch.manual_seed(0)
    model = M.mixcldehazenet_test(fusion=fusion).eval()
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        a, b = model(x, text_feature=_text(1)), model(x, text_feature=_text(1))
    assert not torch.allclose(a, b)


def test_parametric_fusion_matches_upstream_definition():
    """ParametricAttention's reduced form against upstream's p-dimensional attention, written out."""
    torch.manual_seed(0)
    fuse = M.ParametricAttention(proj_dim=5)
    for p in fuse.parameters():
        torch.nn.init.normal_(p)
    x = torch.rand(2, 3, 7, 9) * 2 - 1
    t = _text(2, 64) * 8
    q = fuse.q1(x).flatten(2)  # B, p, HW
    k, v = fuse.k2(t), fuse.v2(t)  # B, p, D
    attn = (q.transpose(1, 2) @ k / 5 ** 0.5).softmax(-1)  # B, HW, D
    ref = fuse.postProj_s((attn @ v.transpose(1, 2)).transpose(1, 2).reshape(2, 5, 7, 9))
    torch.testing.assert_close(fuse(x, t), ref, rtol=1e-5, atol=1e-5)
    with upstream_graph(fuse):
        torch.testing.assert_close(fuse(x, t), ref, rtol=1e-5, atol=1e-5)


# Issue 4's figures, measured on the published implementations at 256x256 (torch's flop counter, FLOPs / 2).
PUBLISHED_MACS_G = {"mixdehazenet_s": 28.46, "mixcldehazenet_s": 29.18}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS_G))
def test_macs_match_published_implementation(name):
    """Counted on the upstream graph (MixCL's discarded text update included) the MACs equal the published
    implementation's; the fused graph we execute differs (merged dilated convs cost more, folded convs less)."""
    from clipdehaze.bench import generator_macs

    assert generator_macs(name) / 1e9 == pytest.approx(PUBLISHED_MACS_G[name], abs=0.005)
    assert generator_macs(name, graph="executed") / 1e9 != pytest.approx(PUBLISHED_MACS_G[name], abs=0.05)


def test_calip_fusion_matches_its_definition():
    """CALIPAttention against the formulas of its docstring, written with explicit attention maps."""
    torch.manual_seed(0)
    fuse = M.CALIPAttention(alpha_t=0.5, alpha_s=0.7, beta=(0.3, 1.1, 0.9))
    x = torch.rand(2, 3, 5, 6) * 2 - 1
    t = _text(2, 16)
    f_v = x.permute(0, 2, 3, 1).reshape(2, -1, 1)  # B, 3HW, 1
    f_t = t.transpose(1, 2) * 4  # sqrt(16)·t/|t| with |t| = 1
    A = f_v @ f_t.transpose(1, 2)  # B, 3HW, D
    f_v_a = (A / 0.5).softmax(-1) @ f_t
    f_t_a = (A.transpose(1, 2) / 0.7).softmax(-1) @ f_v
    f_v_ta = ((f_v @ f_t_a.transpose(1, 2)) / 0.5).softmax(-1) @ f_t_a
    ref = (0.3 * f_v + 1.1 * f_v_ta + 0.9 * f_v_a).view(2, 5, 6, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(fuse(x, t), ref, rtol=1e-5, atol=1e-6)
