"""Contrastive regularisation (MixDehazeNet's CR on ResNet features): random or local weights, no downloads."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from clipdehaze.losses.contrastive import ContrastiveRegularization, L1WithCR


@pytest.fixture(scope="module")
def loss_fn() -> L1WithCR:
    # ResNet-18 keeps the file fast (ResNet-152, the default, shares its 4-stage layout); built once.
    with pytest.warns(UserWarning, match="RANDOM"):
        return L1WithCR(arch="resnet18", random_weights=True)


@pytest.fixture
def cr(loss_fn) -> ContrastiveRegularization:
    return loss_fn.cr


def _images(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 48, 48, generator=g)
    hazy = (0.6 * target + 0.4).clamp(0, 1)
    output = (target + 0.1 * torch.randn(2, 3, 48, 48, generator=g)).clamp(0, 1)
    return output, target, hazy


def test_finite_and_smaller_when_output_is_target(cr):
    output, target, hazy = _images()
    loss = cr(output, target, hazy)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    assert cr(target, target, hazy) < loss
    assert cr(target, target, hazy) < 1e-3 * loss  # d(output, positive) is 0 up to round-off


def test_gradient_reaches_output_only(cr):
    output, target, hazy = _images()
    output.requires_grad_(True)
    target.requires_grad_(True)
    cr(output, target, hazy).backward()
    assert output.grad is not None and torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert target.grad is None


def test_backbone_is_frozen_and_out_of_the_module_tree(cr):
    assert list(cr.parameters()) == [] and cr.state_dict() == {}
    cr.train()
    assert not cr._backbone.training
    assert all(not p.requires_grad for p in cr._backbone.parameters())
    cr.double()
    assert next(cr._backbone.parameters()).dtype == torch.float64
    output, target, hazy = _images()
    assert cr(output, target, hazy).dtype == torch.float64
    cr.float()


def test_input_norm_upstream(cr):
    output, target, hazy = _images()
    imagenet = cr(output, target, hazy)
    cr.input_norm = "upstream"
    try:
        upstream = cr(output, target, hazy)
    finally:
        cr.input_norm = "imagenet"
    assert torch.isfinite(upstream) and upstream != imagenet
    with pytest.raises(ValueError, match="input_norm"):
        ContrastiveRegularization(arch="resnet18", random_weights=True, input_norm="none")
    with pytest.raises(ValueError, match="batchnorm"):
        ContrastiveRegularization(arch="resnet18", random_weights=True, batchnorm="train")
    with pytest.raises(ValueError, match="arch"):
        ContrastiveRegularization(arch="vgg19", random_weights=True)


def test_l1_with_cr(loss_fn, cr):
    output, target, hazy = _images()
    total = loss_fn(output, target, hazy)
    l1 = 2 * (output - target).abs().mean()  # upstream's L1 on [-1, 1] images
    torch.testing.assert_close(total, l1 + 0.1 * cr(output, target, hazy))
    assert set(loss_fn.last_terms) == {"l1", "cr"}
    torch.testing.assert_close(loss_fn.last_terms["l1"], l1)


def _random_resnet18() -> nn.Module:
    """A ResNet-18 with random weights AND random BatchNorm affine parameters / running statistics."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net


def _upstream_l1_cr(resnet: nn.Module, output, target, hazy):
    """MixDehazeNet's train.py loss written out from upstream's code, on its [-1, 1] images.

    ``L1Loss()(output, target) + 0.1·ContrastLoss_res(output, target, hazy)``; ``ContrastLoss_res``
    (utils/CR_res.py) slices ``resnet.children()`` into [:-5], [-5:-4], [-4:-3], [-3:-2], runs the three
    images through separately, and sums w·L1(a, p.detach()) / (L1(a, n.detach()) + 1e-7), w = 1/16 … 1.
    """
    children = list(resnet.children())
    slices = [nn.Sequential(*children[:-5]), nn.Sequential(*children[-5:-4]),
              nn.Sequential(*children[-4:-3]), nn.Sequential(*children[-3:-2])]

    def feats(x):
        out = []
        for s in slices:
            x = s(x)
            out.append(x)
        return out

    a, p, n = (2 * x - 1 for x in (output, target, hazy))
    l1 = nn.L1Loss()
    a_f, p_f, n_f = feats(a), feats(p), feats(n)
    cr = 0
    for w, fa, fp, fn in zip([1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0], a_f, p_f, n_f):
        cr += w * (l1(fa, fp.detach()) / (l1(fa, fn.detach()) + 1e-7))
    return l1(a, p) + 0.1 * cr


@pytest.mark.parametrize("batchnorm", ["batch", "frozen"])
def test_matches_upstream_formula(batchnorm, tmp_path):
    """input_norm=upstream reproduces upstream's loss value and gradient (batch: upstream's never-eval'd
    BatchNorm; frozen: the same network in eval mode)."""
    resnet = _random_resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    loss_fn = L1WithCR(arch="resnet18", weights_path=path, input_norm="upstream", batchnorm=batchnorm)
    resnet.train(batchnorm == "batch").requires_grad_(False)
    output, target, hazy = _images(1)
    out_ref = output.clone().requires_grad_(True)
    out_ours = output.clone().requires_grad_(True)
    ref = _upstream_l1_cr(resnet, out_ref, target, hazy)
    ours = loss_fn.train()(out_ours, target, hazy)
    torch.testing.assert_close(ours, ref)
    ref.backward()
    ours.backward()
    torch.testing.assert_close(out_ours.grad, out_ref.grad)


def test_batchnorm_modes(tmp_path):
    """batch: a sample's features depend on the rest of the batch (as upstream); frozen: they do not.
    train()/eval() never change the mode."""
    torch.save(_random_resnet18().state_dict(), tmp_path / "r.pth")
    x = _images()[0]
    for batchnorm, independent in (("batch", False), ("frozen", True)):
        cr = ContrastiveRegularization(arch="resnet18", weights_path=tmp_path / "r.pth", batchnorm=batchnorm)
        for mode in (True, False):
            cr.train(mode)
            assert all(m.training == (batchnorm == "batch") for m in cr._backbone.modules())
            alone, in_batch = cr._backbone(x[:1])[-1], cr._backbone(x)[-1][:1]
            assert torch.allclose(alone, in_batch, atol=1e-5) == independent


def test_missing_weights_raise_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty torchvision cache; nothing is downloaded
    with pytest.raises(RuntimeError, match=r"resnet152-394f9c45\.pth.*\n.*TORCH_HOME|weights_path") as err:
        ContrastiveRegularization()
    assert "weights_path=" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(RuntimeError, match="does not exist"):
        L1WithCR(weights_path=tmp_path / "missing.pth")


def test_weights_path_loads_a_local_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    cr = ContrastiveRegularization(arch="resnet18", weights_path=path)
    assert torch.equal(cr._backbone.stem[0].weight, state["conv1.weight"])
    assert torch.equal(cr._backbone.stages[3][1].conv2.weight, state["layer4.1.conv2.weight"])
