"""SS2D: the 2-D selective-scan layer of VMamba, in the form used by MambaIR.

Papers: Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024 (arXiv:2401.10166) — the 2-D
selective scan (SS2D) with four scan orders; Guo et al., "MambaIR: A Simple Baseline for Image
Restoration with State-Space Model", ECCV 2024 (arXiv:2402.15648) — its restoration variant
(upstream: csguoh/MambaIR, ``basicsr/archs/mambair_arch.py``, class ``SS2D``, Apache-2.0). The scan
itself is Mamba's S6 (Gu & Dao 2023), run by :func:`clipdehaze.models.ssm.selective_scan`.

The parameter names and shapes are MambaIR's, so its SS2D weights load with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipdehaze.models.layers import UpstreamGraph, fused_linear
from clipdehaze.models.ssm import cpu_kernel
from clipdehaze.models.ssm.cpu_kernel import ORDERS
from clipdehaze.models.ssm.selective_scan import BACKENDS, selective_scan

__all__ = ["SS2D", "scan_map"]

_DIRECTIONS = 4  # row-major, column-major, and both reversed


class SS2D(UpstreamGraph, nn.Module):
    """2-D selective scan over a channel-last feature map: (B, H, W, C) -> (B, H, W, C).

    in_proj splits into a branch x and a gate z; x goes through a depthwise conv + SiLU, is scanned in
    four orders by one batched selective scan (4 · d_inner channels, each direction with its own
    x_proj, dt_proj, A and D), the four outputs are mapped back to row-major and summed, then
    LayerNorm, gated by SiLU(z), and projected back to d_model.

    On CPU the compiled kernel reads the map in place in all four orders and forms Δ from its low-rank factor
    inside (:func:`scan_map`); elsewhere, or with ``upstream_graph`` (:class:`clipdehaze.models.layers.UpstreamGraph`:
    MAC counts of the published graph), the four reordered copies of MambaIR's ``forward_core`` run.

    Args:
        d_model: input/output channels.
        d_state: SSM state size n.
        d_conv: depthwise conv kernel size (odd).
        expand: d_inner = int(expand * d_model).
        dt_rank: rank of the Δ projection; "auto" = ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor, dt_scale: Δ initialisation (Mamba's: softplus(bias) log-uniform
            in [dt_min, dt_max]).
        dropout: dropout on the output (MambaIR's ``attn_drop_rate``).
        conv_bias, bias: biases of the conv and of in_proj / out_proj.
        scan_backend: "auto", "cuda" (mamba-ssm), "triton" or "torch", passed to :func:`selective_scan`.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_scale: float = 1.0, dropout: float = 0.0,
                 conv_bias: bool = True, bias: bool = False, scan_backend: str = "auto"):
        super().__init__()
        if scan_backend not in BACKENDS:
            raise ValueError(f"scan_backend must be one of {BACKENDS}, got {scan_backend!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        k, d = _DIRECTIONS, self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d, bias=bias)
        self.conv2d = nn.Conv2d(d, d, d_conv, padding=(d_conv - 1) // 2, groups=d, bias=conv_bias)
        # Per direction: x -> (Δ low-rank, B, C), stacked so one einsum serves all four directions.
        x_proj_bound = d ** -0.5  # nn.Linear's default init, as the upstream's stacked Linears have
        self.x_proj_weight = nn.Parameter(
            torch.empty(k, self.dt_rank + 2 * d_state, d).uniform_(-x_proj_bound, x_proj_bound))
        dt_std = self.dt_rank ** -0.5 * dt_scale  # keeps the variance of Δ's pre-activation at init
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, self.dt_rank).uniform_(-dt_std, dt_std))
        # softplus(bias) log-uniform in [dt_min, dt_max], so the initial time steps span the range of
        # time scales (Gu & Dao 2023, Sec. 3.6); the bias is the inverse softplus of the sampled dt.
        dt = torch.exp(torch.rand(k, d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real initialisation A_n = -(n + 1), stored as log so A stays negative (a decaying state).
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d, 1)
        self.A_logs = nn.Parameter(torch.log(a))
        self.Ds = nn.Parameter(torch.ones(k * d))
        for p in (self.A_logs, self.Ds):
            p._no_weight_decay = True  # read by optimiser-group builders that honour the upstream flag

        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward_core(self, x: Tensor) -> Tensor:
        """Four-direction selective scan of (B, d_inner, H, W); returns the merged (B, d_inner, H·W)."""
        b, d, h, w = x.shape
        length = h * w
        k = _DIRECTIONS
        rows = x.flatten(2)
        cols = x.transpose(2, 3).flatten(2)
        xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # (B, K, d, L)

        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        y = selective_scan(
            xs.float().reshape(b, k * d, length), dts.float().reshape(b, k * d, length),
            -torch.exp(self.A_logs.float()), Bs.float(), Cs.float(), self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().view(-1), delta_softplus=True, backend=self.scan_backend,
        ).view(b, k, d, length)

        # Undo each direction's ordering so all four index the same pixel at the same position.
        y_rows = y[:, 0] + y[:, 2].flip(-1)
        y_cols = y[:, 1] + y[:, 3].flip(-1)
        return y_rows + y_cols.view(b, d, w, h).transpose(2, 3).reshape(b, d, length)

    def forward_core_channels_last(self, x: Tensor) -> Tensor:
        """:meth:`forward_core` on a channel-last (B, H, W, d_inner) map, returning the same layout, with the
        compiled CPU scan (:func:`scan_map`)."""
        b, h, w, d = x.shape
        n, r = self.d_state, self.dt_rank
        # Per pixel, the four directions' (Δ low-rank, B, C): one matmul in pixel order, (B, L, 4, r + 2n).
        x_dbl = torch.matmul(x.reshape(b, h * w, d), self.x_proj_weight.flatten(0, 1).t()).unflatten(2, (4, -1))
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=3)
        return scan_map(x, dts, Bs, Cs, -torch.exp(self.A_logs.float()).view(_DIRECTIONS, d, n),
                        self.Ds.float().view(_DIRECTIONS, d), self.dt_projs_weight.float(), self.dt_projs_bias.float())

    def _in_proj(self, x: Tensor, part: int) -> Tensor:
        """The branch (0) or the gate (1) half of in_proj: computed apart, so that at inference the gate does not
        occupy memory during the scan."""
        bias = self.in_proj.bias.chunk(2)[part] if self.in_proj.bias is not None else None
        return F.linear(x, self.in_proj.weight.chunk(2)[part], bias)

    def _branch(self, x: Tensor) -> Tensor:
        """in_proj's branch half, depthwise conv, SiLU: (B, H, W, C) -> (B, d_inner, H, W) in channels_last."""
        return F.silu(self.conv2d(self._in_proj(x, 0).permute(0, 3, 1, 2)), inplace=not torch.is_grad_enabled())

    def forward(self, x: Tensor, extra: Callable[[], tuple[Tensor | None, Tensor | None, bool]] | None = None) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C). ``extra`` (a function, called here) gives ``(weight, bias, keep)``:
        ``weight @ out + bias`` is appended as more channels in ``out_proj``'s matmul (with ``keep=False`` only those;
        :func:`clipdehaze.models.layers.fused_linear`): a caller that needs a linear map of the output gets it
        without another pass (no dropout then)."""
        b, h, w, _ = x.shape
        if (self.scan_backend != "cuda" and not self.upstream_graph and self.d_state <= cpu_kernel.MAX_STATE
                and cpu_kernel.available(x)):
            y = self.forward_core_channels_last(self._branch(x).permute(0, 2, 3, 1))
        else:
            y = self.forward_core(self._branch(x)).transpose(1, 2).reshape(b, h, w, self.d_inner)
        if torch.is_grad_enabled():
            y = self.out_norm(y) * F.silu(self._in_proj(x, 1))
        else:  # in place: at inference the gate and its product need no buffers of their own
            y = self.out_norm(y).mul_(F.silu(self._in_proj(x, 1), inplace=True))
        if extra is None:
            return self.dropout(self.out_proj(y))
        if self.training and not isinstance(self.dropout, nn.Identity):
            raise ValueError("SS2D with dropout cannot append a linear map of its output to out_proj's matmul")
        return fused_linear(y, self.out_proj, *extra())


def scan_map(u: Tensor, dts: Tensor, Bs: Tensor, Cs: Tensor, A: Tensor, D: Tensor, dt_proj: Tensor,
             delta_bias: Tensor) -> Tensor:
    """SS2D's four scans of a channel-last map with the compiled CPU kernel, reading the map in place.

    Directions 0 and 2 walk the (B, H, W, d) map ``u`` row by row forwards and backwards (row-major order and its
    reverse), 1 and 3 column by column; the kernel visits each direction's positions in its order, so no reordered
    copy of the map, of Δ or of the outputs is made. Δ stays low-rank: per pixel and direction the ``dt_rank``
    values of ``dts`` and the direction's ``dt_proj`` (d, dt_rank) give the d values of δ inside the kernel, then
    the Δ bias, softplus and the D skip. The row walks form one group of directions and the column walks another;
    they sum into one output, or, when the threads would otherwise share cache lines or idle, into one each.

    ``dts`` (B, L, 4, r), ``Bs`` and ``Cs`` (B, L, 4, n): per pixel and SS2D direction; A (4, d, n), D and
    ``delta_bias`` (4, d), ``dt_proj`` (4, d, r). Returns the merged (B, H, W, d).
    """
    b, h, w, d = u.shape
    length = h * w

    def per_walk(t):  # (B, L, 4, c) -> (B, 2 walks, L, 2, c), direction k = walk + 2 j
        return t.unflatten(2, (2, 2)).permute(0, 3, 1, 2, 4)

    def params(t):  # (4, ...) -> kernel order 2 walk + j
        return t.unflatten(0, (2, 2)).transpose(0, 1).flatten(0, 1)

    # One output for all four directions (the groups one after another) where the channel blocks give every thread
    # work of its own; else the two groups run side by side into two outputs, added here: items that split a map's
    # rows between threads off cache-line boundaries (channels not a multiple of 16) would write the same lines.
    threads = torch.get_num_threads()
    blocks = -(-d // 16)
    shared = threads == 1 or (d % 16 == 0 and b * blocks >= threads)
    u = u.reshape(b, 1, length, d)
    y, _ = cpu_kernel.scan(u if shared else u.expand(b, 2, length, d), per_walk(dts), params(A), per_walk(Bs),
                           per_walk(Cs), params(D), delta_bias=params(delta_bias), delta_softplus=True,
                           orders=(ORDERS["rows"], ORDERS["rows_reversed"], ORDERS["cols"], ORDERS["cols_reversed"]),
                           height=h, width=w, dt_proj=params(dt_proj))
    return (y[:, 0] if shared else y[:, 0] + y[:, 1]).view(b, h, w, d)
