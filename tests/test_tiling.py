import re

import pytest
import torch

from clipdehaze.utils import tiling
from clipdehaze.utils.tiling import auto_tile, tiled_forward


def _identity(t, box):
    return t * 2.0


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 300, 211), (1, 3, 1, 1), (1, 3, 5, 700)])
def test_tiled_equals_untiled_for_pointwise_fn(shape):
    x = torch.rand(shape)
    y = tiled_forward(_identity, x, tile=64, overlap=16)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x * 2.0)


def test_tiles_are_bounded_and_cover_everything():
    seen = []

    def fn(t, box):
        seen.append(box)
        assert t.shape[-1] <= 64 and t.shape[-2] <= 64
        return t

    x = torch.rand(1, 3, 130, 200)
    tiled_forward(fn, x, tile=64, overlap=16)
    covered = torch.zeros(130, 200, dtype=torch.bool)
    for top, left, h, w in seen:
        covered[top:top + h, left:left + w] = True
    assert covered.all()


def test_tiny_image_is_padded_to_min_size():
    shapes = []

    def fn(t, box):
        shapes.append(tuple(t.shape[-2:]))
        return t

    x = torch.rand(1, 3, 1, 1)
    y = tiled_forward(fn, x, tile=64, overlap=8, min_size=16)
    assert shapes == [(16, 16)]
    assert y.shape == x.shape


# (tile, overlap, min_size) that cannot tile an image, and the option the message must name.
BAD_TILING = [
    (0, 8, 16, "tile=0"), (-64, 8, 16, "tile=-64"), (12, 0, 25, "tile=12 is below"), (64, -1, 16, "overlap=-1"),
    (64, 64, 16, "overlap=64 must be smaller than tile=64"), (64, 200, 16, "overlap=200"),
    (64.5, 8, 16, "tile=64.5"), ("big", 8, 16, "tile='big'"), (64, 2.5, 16, "overlap=2.5"), (True, 8, 1, "tile=True"),
]


@pytest.mark.parametrize("tile,overlap,min_size,message", BAD_TILING)
def test_bad_tiling_is_refused_before_any_tile_runs(tile, overlap, min_size, message):
    calls = []
    with pytest.raises(ValueError, match=re.escape(message)):
        tiled_forward(lambda t, box: calls.append(box) or t, torch.rand(1, 3, 100, 90), tile=tile, overlap=overlap,
                      min_size=min_size)
    assert not calls


@pytest.mark.parametrize("tile,overlap", [(64, 63), (33, 1), (64, 0), (17, 16)])
@pytest.mark.slow
def test_every_valid_overlap_covers_the_image_exactly(tile, overlap):
    """Overlap up to tile - 1 is honoured (no silent clamp) and the blend of an identity stays exact (up to
    float32 rounding over thousands of overlapping tiles at stride 1)."""
    x = torch.rand(1, 3, 150, 101)
    torch.testing.assert_close(tiled_forward(_identity, x, tile=tile, overlap=overlap), x * 2.0, rtol=1e-4, atol=1e-4)


def _cost_model(per_pixel: float, fixed: float):
    """A measure() standing in for peak_memory_bytes: the probe's pixel count times ``per_pixel`` plus ``fixed``."""
    seen = []

    def measure(work):
        seen.append(work().shape[-2:].numel())
        return int(fixed + per_pixel * seen[-1])
    return measure, seen


def test_auto_tile_is_the_whole_image_when_it_fits_the_budget():
    measure, seen = _cost_model(per_pixel=1000, fixed=50e6)
    x = torch.rand(1, 3, 700, 500)
    assert auto_tile(_identity, x, budget_bytes=int(1e9), overlap=32, measure=measure) == 700
    assert seen == [384 * 384]   # measured on one crop, after a warm-up on a smaller one


def test_auto_tile_fits_tiles_and_image_buffers_into_the_budget():
    measure, _ = _cost_model(per_pixel=10_000, fixed=20e6)
    x = torch.rand(1, 3, 2000, 1500)
    budget = 1_000_000_000
    tile = auto_tile(_identity, x, budget_bytes=budget, overlap=32, measure=measure)
    buffers = 4 * 2000 * 1500 * 4
    # The fixed part counted per pixel of the probe, and the allocator slack: on the safe side.
    per_pixel = (10_000 + 20e6 / 384 ** 2) * tiling._TILE_SEQUENCE_SLACK
    assert tile % 32 == 0 and 2 * 32 < tile < 2000
    assert per_pixel * tile ** 2 + buffers <= budget < per_pixel * (tile + 32) ** 2 + buffers
    assert 20e6 + 10_000 * tile ** 2 + buffers <= budget
    torch.testing.assert_close(tiled_forward(_identity, x, tile=tile, overlap=32), x * 2.0)


def test_auto_tile_refuses_a_budget_too_small_naming_the_option():
    measure, _ = _cost_model(per_pixel=50_000, fixed=0)
    with pytest.raises(ValueError, match="memory_budget_mb=100 leaves room"):
        auto_tile(_identity, torch.rand(1, 3, 1000, 1000), budget_bytes=100 * 2**20, overlap=32, measure=measure)


def test_auto_tile_small_image_is_not_probed():
    measure, seen = _cost_model(per_pixel=1, fixed=0)
    assert auto_tile(_identity, torch.rand(1, 3, 380, 120), budget_bytes=1, overlap=8, measure=measure) == 380
    assert auto_tile(_identity, torch.rand(1, 3, 30, 20), budget_bytes=1, overlap=32, measure=measure) == 33
    assert seen == []


@pytest.mark.slow
def test_auto_tile_with_measured_memory_keeps_a_real_model_within_budget():
    """End to end with the real measurement (this process's peak RSS): a convolution stack whose activations
    grow with the pixel count gets tiles whose measured peak stays within the budget."""
    from clipdehaze.utils.memory import peak_memory_bytes

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.GELU(),
                              torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Conv2d(64, 3, 3, padding=1))
    x = torch.rand(1, 3, 1024, 1024)

    def fn(t, box):
        return net(t)

    if peak_memory_bytes(lambda: None, x.device) is None:
        pytest.skip("peak memory cannot be measured on this OS")
    budget = 150 * 2**20
    tile = auto_tile(fn, x, budget_bytes=budget, overlap=16)
    assert 64 <= tile < 1024
    with torch.no_grad():
        peak = peak_memory_bytes(lambda: tiled_forward(fn, x, tile=tile, overlap=16), x.device)
    assert peak <= budget * 1.1


# clipdehaze-predict overrides that cannot tile, and the option its message must name. dehazeformer_test's smallest
# input side is 25 px.
BAD_PREDICT = [("tile=0", "tile=0"), ("tile=-32", "tile=-32"), ("tile=16", "tile=16 is below this model's smallest"),
               ("overlap=-4", "overlap=-4"), ("tile=512 overlap=512", "overlap=512 must be smaller than tile=512"),
               ("tile=64 overlap=64", "overlap=64 must be smaller than tile=64"), ("tile=huge", "tile='huge'"),
               ("tile=auto overlap=-1", "overlap=-1"), ("memory_budget_mb=0", "memory_budget_mb=0"),
               ("memory_budget_mb=lots", "memory_budget_mb='lots'")]


@pytest.mark.parametrize("overrides,message", BAD_PREDICT)
def test_predict_refuses_bad_tiling_before_reading_or_writing(compose_cfg, tmp_path, overrides, message):
    from PIL import Image

    from clipdehaze.predict import predict

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (90, 70), (120, 140, 160)).save(src / "a.png")
    out = tmp_path / "out"
    cfg = compose_cfg("predict", ["model=dehazeformer_test", "allow_random_weights=true", f"input={src}",
                                  f"output={out}", *overrides.split()])
    with pytest.raises(ValueError, match=re.escape(message)):
        predict(cfg)
    assert not out.exists()


def test_predict_tile_auto_is_the_default_and_matches_untiled(compose_cfg, tmp_path):
    """tile=auto (the default) with room for the whole image restores it in one piece: the untiled output."""
    from PIL import Image

    from clipdehaze.build import module_for_inference
    from clipdehaze.predict import predict, restore, tiling_options

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (410, 400), (120, 140, 160)).save(src / "a.png")
    cfg = compose_cfg("predict", ["model=dehazeformer_test", "allow_random_weights=true", f"input={src}",
                                  f"output={tmp_path / 'out'}", "memory_budget_mb=4096"])
    assert cfg.tile == "auto"
    assert [p.name for p in predict(cfg)] == ["a.png"]
    module = module_for_inference(cfg).eval()
    tile, overlap, budget = tiling_options(cfg, module.generator)
    assert (tile, overlap, budget) == ("auto", 32, 4096 * 2**20)
    x = torch.rand(1, 3, 400, 410)
    with torch.no_grad():
        torch.testing.assert_close(restore(module, x, tile, overlap, budget), module.generator(x).clamp(0, 1))
