"""Layout copies of a forward pass, counted in bytes: the share of a network's memory traffic that only rearranges data.

Counted with a :class:`torch.utils._python_dispatch.TorchDispatchMode`, which sees every ATen operation a forward
runs after PyTorch's composite operations are decomposed (``contiguous`` and non-viewable ``reshape`` arrive as
``clone``, ``stack`` as ``cat``), on any device. A time profile does not carry over from one device to another; these
byte counts do.

Definitions (what :func:`layout_traffic` returns):

* **layout bytes**: bytes read plus bytes written by the operations whose only job is to move data into another
  order or buffer: ``copy_`` (whatever calls it: ``new_empty`` + ``copy_``, ``.to``), ``clone`` (``contiguous``,
  ``reshape`` of a non-viewable stride pattern), ``_to_copy`` and ``cat`` (``stack``, ``torch.cat``), ``flip``. The
  architecture's own data-movement operators (``pixel_shuffle``, padding) are not counted: every implementation of
  the network has to run them.
* **activation bytes**: bytes of every tensor the forward allocates (each new storage once, views and in-place
  results not again), the size of everything the network writes. A kernel behind an opaque call (the compiled
  selective scan) counts with the output PyTorch allocates for it.
* **share** = layout bytes / activation bytes. 0 means no operation only rearranges data; 0.1 means layout
  copies move a tenth as many bytes as the network produces.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LAYOUT_OPS", "layout_traffic"]

aten = torch.ops.aten
#: Operations counted as layout copies (their overload packets).
LAYOUT_OPS = (aten.copy_, aten.clone, aten._to_copy, aten.cat, aten.flip)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.layout: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.records: list[tuple[str, tuple[int, ...], int]] = []
        self.activation = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in LAYOUT_OPS:
            name = packet.__name__
            written = _tensors(out)
            read = _tensors(args[1:2] if packet is aten.copy_ else args)
            moved = sum(map(_nbytes, read)) + sum(map(_nbytes, written))
            self.layout[name] += moved
            self.calls[name] += 1
            self.records.append((name, tuple(written[0].shape), moved))
        # New storages only: a view or an in-place result shares an input's storage, counted when it was made.
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            storage = t.untyped_storage()
            if storage.data_ptr() not in inputs:
                inputs.add(storage.data_ptr())
                self.activation += storage.nbytes()
        return out


def layout_traffic(fn: Callable[[], Any]) -> dict[str, Any]:
    """Layout bytes, activation bytes and their ratio (see the module docstring) of running ``fn`` once, with the
    layout bytes and call counts per operation (``by_op``, ``calls``) and every layout call as (operation, output
    shape, bytes) in order (``records``)."""
    counter = _Counter()
    with counter:
        fn()
    layout = sum(counter.layout.values())
    return {"layout_bytes": layout, "activation_bytes": counter.activation,
            "share": layout / counter.activation if counter.activation else 0.0,
            "by_op": dict(counter.layout), "calls": dict(counter.calls), "records": counter.records}
