import pytest
import torch

from clipdehaze.utils.tiling import tiled_forward


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
