"""Contrastive regularisation (MixDehazeNet's CR on ResNet features): random or local weights, no downloads."""

from __future__ import annotations

import pytest
import torch
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
    with pytest.raises(ValueError, match="arch"):
        ContrastiveRegularization(arch="vgg19", random_weights=True)


def test_l1_with_cr(loss_fn, cr):
    output, target, hazy = _images()
    total = loss_fn(output, target, hazy)
    l1 = (output - target).abs().mean()
    torch.testing.assert_close(total, l1 + 0.1 * cr(output, target, hazy))
    assert set(loss_fn.last_terms) == {"l1", "cr"}


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
