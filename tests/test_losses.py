"""Pixel losses and their weighted sum, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from clipdehaze.losses import CharbonnierLoss, L1Loss, WeightedSumLoss

OUTPUT = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
TARGET = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])  # |diff| = 0.5, 0, 1, 0.75


def test_l1_by_hand():
    assert L1Loss()(OUTPUT, TARGET).item() == pytest.approx((0.5 + 0 + 1 + 0.75) / 4)


def test_l1_on_upstreams_scale_is_nn_l1_on_minus_one_to_one_images(compose_cfg):
    """loss=l1_upstream is DehazeFormer's / MixDehazeNet's nn.L1Loss on x*2-1 images, value and gradient."""
    from hydra.utils import instantiate

    loss = instantiate(compose_cfg("train", ["loss=l1_upstream"]).loss)
    assert isinstance(loss, L1Loss) and loss.scale == 2.0
    assert loss(OUTPUT, TARGET).item() == pytest.approx(2 * (0.5 + 0 + 1 + 0.75) / 4)
    out = torch.rand(2, 3, 8, 8, requires_grad=True)
    gt = torch.rand(2, 3, 8, 8)
    ours = loss(out, gt)
    (grad_ours,) = torch.autograd.grad(ours, out)
    upstream = nn.L1Loss()(out * 2 - 1, gt * 2 - 1)
    (grad_upstream,) = torch.autograd.grad(upstream, out)
    torch.testing.assert_close(ours, upstream)
    torch.testing.assert_close(grad_ours, grad_upstream)
    with pytest.raises(ValueError, match="scale must be > 0"):
        L1Loss(scale=0)


def test_charbonnier_by_hand():
    eps = 1e-3
    expected = sum(math.sqrt(d * d + eps * eps) for d in (0.5, 0.0, 1.0, 0.75)) / 4
    assert CharbonnierLoss(eps)(OUTPUT, TARGET).item() == pytest.approx(expected, rel=1e-6)
    # A perfect reconstruction costs eps, and the gradient there is finite (unlike L1's subgradient at 0).
    x = TARGET.clone().requires_grad_(True)
    loss = CharbonnierLoss(eps)(x, TARGET)
    loss.backward()
    assert loss.item() == pytest.approx(eps)
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()
    with pytest.raises(ValueError):
        CharbonnierLoss(0.0)


def test_losses_accept_and_ignore_hazy():
    hazy = torch.rand_like(OUTPUT)
    for loss in (L1Loss(), CharbonnierLoss()):
        assert loss(OUTPUT, TARGET, hazy) == loss(OUTPUT, TARGET)
        assert loss(OUTPUT, TARGET, hazy=hazy) == loss(OUTPUT, TARGET)


class _SeesHazy(nn.Module):
    """A term that reads ``hazy``, as contrastive terms do: mean |output - hazy|."""

    def forward(self, output, target, hazy=None):
        return (output - hazy).abs().mean()


def test_weighted_sum_exact_and_records_terms():
    hazy = torch.full_like(OUTPUT, 0.5)
    loss = WeightedSumLoss({"l1": L1Loss(), "char": CharbonnierLoss(1e-3), "neg": _SeesHazy()},
                           {"l1": 1.0, "char": 0.5, "neg": 0.25})
    total = loss(OUTPUT, TARGET, hazy)
    l1 = L1Loss()(OUTPUT, TARGET)
    char = CharbonnierLoss(1e-3)(OUTPUT, TARGET)
    neg = (OUTPUT - hazy).abs().mean()
    assert total.item() == pytest.approx((1.0 * l1 + 0.5 * char + 0.25 * neg).item(), abs=1e-7)
    assert set(loss.last_terms) == {"l1", "char", "neg"}
    assert loss.last_terms["neg"].item() == pytest.approx(neg.item())
    assert not loss.last_terms["l1"].requires_grad
    assert not loss.needs_clip


def test_weighted_sum_backpropagates_through_every_term():
    x = OUTPUT.clone().requires_grad_(True)
    WeightedSumLoss({"l1": L1Loss(), "char": CharbonnierLoss()}, {"l1": 2.0, "char": 0.0})(x, TARGET).backward()
    # d(2 * mean|x - y|)/dx = 2 * sign(x - y) / 4 (the zero-weighted term adds nothing).
    assert torch.allclose(x.grad, 0.5 * torch.sign(OUTPUT - TARGET))


def test_weighted_sum_rejects_mismatched_names():
    with pytest.raises(ValueError, match="same losses"):
        WeightedSumLoss({"l1": L1Loss()}, {"L1": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        WeightedSumLoss({}, {})


def test_weighted_sum_reports_clip_need_of_its_terms():
    class NeedsClip(L1Loss):
        needs_clip = True

    assert WeightedSumLoss({"a": L1Loss(), "b": NeedsClip()}, {"a": 1.0, "b": 1.0}).needs_clip
