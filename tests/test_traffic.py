"""The layout-copy counter (clipdehaze.utils.traffic): byte counts against values computed by hand."""

import torch

from clipdehaze.utils.traffic import layout_traffic


def test_copies_and_concatenations_are_counted_read_plus_written():
    a = torch.rand(64, 32)
    b, c = torch.rand(10), torch.rand(6)

    def fn():
        a.t().contiguous()      # a transposed copy: 2048 floats read and written
        torch.cat([b, c])       # 16 floats read, 16 written
        a.view(32, 64)          # a view moves nothing
        return a * 2            # computes: an activation, not a layout copy

    t = layout_traffic(fn)
    assert t["by_op"] == {"clone": 2 * 2048 * 4, "cat": 2 * 16 * 4}
    assert t["calls"] == {"clone": 1, "cat": 1}
    assert t["layout_bytes"] == (2 * 2048 + 2 * 16) * 4
    # Activations: every storage the function allocates once (the copy, the concatenation, the product).
    assert t["activation_bytes"] == (2048 + 16 + 2048) * 4
    assert t["share"] == t["layout_bytes"] / t["activation_bytes"]
    assert [r[0] for r in t["records"]] == ["clone", "cat"] and t["records"][0][1] == (32, 64)


def test_views_and_in_place_results_are_neither_copies_nor_new_activations():
    x = torch.rand(8, 16)

    def fn():
        y = x.permute(1, 0).reshape(-1)       # not viewable: reshape copies (a clone)
        y.add_(1)                              # in place: no new storage
        return x.transpose(0, 1).flatten(0)    # also a copy
    t = layout_traffic(fn)
    assert t["calls"] == {"clone": 2} and t["layout_bytes"] == 2 * (2 * 128 * 4)
    assert t["activation_bytes"] == 2 * 128 * 4
    assert layout_traffic(lambda: x.view(16, 8).t())["layout_bytes"] == 0
