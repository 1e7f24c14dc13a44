"""Dark channel prior: recovery of a synthetic hazy image with known A and t, shapes, registry."""

from __future__ import annotations

import pytest
import torch

from clipdehaze.metrics import compute_psnr
from clipdehaze.models import clip_inputs_of, create_generator, list_generators
from clipdehaze.models.generators.dcp import DarkChannelPrior

ATMOSPHERIC_LIGHT = torch.tensor([0.85, 0.9, 0.95]).view(1, 3, 1, 1)
TRANSMISSION = 0.5


def synthetic_scene(height: int = 96, width: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(hazy, clear): 16x16 saturated colour patches (one channel 0, so the dark channel is 0) and a sky
    region of the atmospheric light's own colour, hazed with I = J t + A (1 - t) at constant A and t."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.8, 0.3, 0],
                            [0, 0.5, 0.9]])
    clear = torch.empty(1, 3, height, width)
    for i in range(0, height, 16):
        for j in range(0, width, 16):
            clear[0, :, i:i + 16, j:j + 16] = colours[torch.randint(len(colours), (1,), generator=g)].view(3, 1, 1)
    # Sky is where the scene is as bright as the airlight: the brightest dark channel, where the paper finds A.
    clear[..., :32, :48] = ATMOSPHERIC_LIGHT
    hazy = clear * TRANSMISSION + ATMOSPHERIC_LIGHT * (1 - TRANSMISSION)
    return hazy, clear


def test_recovers_atmospheric_light_and_dehazes():
    hazy, clear = synthetic_scene()
    dcp = DarkChannelPrior()
    estimate = dcp.estimate(hazy)
    assert torch.allclose(estimate.atmospheric_light, ATMOSPHERIC_LIGHT, atol=1e-3)
    # In the colour patches dark(I/A) = 1 - t, so the unrefined estimate is 1 - ω(1 - t).
    patch_t = estimate.transmission[..., 48:, 64:].median().item()
    assert patch_t == pytest.approx(1 - 0.95 * (1 - TRANSMISSION), abs=0.02)
    hazy_psnr = compute_psnr(hazy, clear).item()
    dehazed_psnr = compute_psnr(estimate.dehazed, clear).item()
    assert dehazed_psnr > hazy_psnr + 15, (hazy_psnr, dehazed_psnr)
    assert torch.equal(dcp(hazy), estimate.dehazed)


def test_batched_images_are_independent():
    # float64: in float32 the guided filter's box sums differ by ~1e-5 between batch sizes (kernel choice),
    # amplified up to 1/t0 = 10x in the recovery; a leak between images would be orders of magnitude larger.
    a, _ = synthetic_scene(48, 64, seed=1)
    b, _ = synthetic_scene(48, 64, seed=2)
    a, b = a.double(), b.double() * 0.8
    dcp = DarkChannelPrior()
    batched = dcp(torch.cat([a, b]))
    assert torch.allclose(batched[:1], dcp(a), atol=1e-10)
    assert torch.allclose(batched[1:], dcp(b), atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 8, 8), (1, 3, 1, 5)])
def test_any_size(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    out = DarkChannelPrior()(x)
    assert out.shape == shape and torch.isfinite(out).all()


def test_black_image_stays_finite():
    assert torch.isfinite(DarkChannelPrior()(torch.zeros(1, 3, 16, 16))).all()


def test_registered_parameter_free_and_clip_free():
    assert "dcp" in list_generators()
    model = create_generator("dcp", patch_size=7)
    assert isinstance(model, DarkChannelPrior) and model.patch_size == 7
    assert sum(p.numel() for p in model.parameters()) == 0 and not list(model.buffers())
    assert clip_inputs_of(model) == ()
    assert model.state_dict() == {}


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="odd"):
        DarkChannelPrior(patch_size=14)
    with pytest.raises(ValueError, match="omega"):
        DarkChannelPrior(omega=0)
    with pytest.raises(ValueError, match="RGB"):
        DarkChannelPrior()(torch.rand(1, 1, 16, 16))
